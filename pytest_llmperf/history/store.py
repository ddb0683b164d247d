"""The history store: every run of every test, kept in a real database (SQLite by default, PostgreSQL by URL).

One row per measured run of a test: its run-level metric values, the test, configuration, workload,
engine and version, hardware key, the verdict of its night and whether that night was accepted, and
the reference's means it was compared with. A session (one pytest run, or one shard of it) is keyed
by the ``run_uid`` of its ``summary.json``, so that ingesting the same report twice adds nothing, and
shards of one night writing at once lose nothing (each insert is its own transaction; SQLite runs in
WAL mode with a busy timeout).

SQLAlchemy Core writes the SQL for both dialects; the schema is versioned in ``llmperf_meta``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.errors import LlmperfError

try:
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - the extra is missing
    sa = None  # type: ignore[assignment]

__all__ = ["SCHEMA_VERSION", "HistoryError", "HistoryStore", "RunRow", "database_url"]

SCHEMA_VERSION = 2  # 2: llmperf_runs.tolerance (the gate's per-metric tolerance of the night)
INSTALL_HINT = "pip install 'pytest-llmperf[history]'"


class HistoryError(LlmperfError):
    """The history store cannot be opened, is of a newer schema, or is missing its extra."""


def database_url(target: str) -> str:
    """A SQLAlchemy URL: a URL as given, a plain path as a SQLite file."""
    return target if "://" in target else f"sqlite:///{target}"


@dataclass(frozen=True)
class RunRow:
    session_uid: str
    started: str
    nodeid: str
    case_id: str
    config: str
    workload: str
    engine: str
    engine_version: str
    hardware: str  # the hardware key as sorted JSON
    verdict: str
    accepted: bool  # the night's result stands (PASS, or accepted by a baseline refresh)
    run_index: int
    metrics: Mapping[str, float]
    reference: Mapping[str, float]  # the reference's means this night was compared with
    tolerance: Mapping[str, float] = field(default_factory=dict)  # the per-metric tolerance it was gated with


# the statements that take a store from the schema before to this one (plain DDL both dialects accept)
MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE llmperf_runs ADD COLUMN tolerance JSON"],
}


def _tables(metadata: Any) -> tuple[Any, Any, Any]:
    meta = sa.Table(
        "llmperf_meta",
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    sessions = sa.Table(
        "llmperf_sessions",
        metadata,
        sa.Column("uid", sa.String(64), primary_key=True),
        sa.Column("started", sa.String(32), nullable=False),
        sa.Column("shard", sa.String(16)),
        sa.Column("suite_commit", sa.String(64)),
        sa.Column("plugin_version", sa.String(32)),
    )
    runs = sa.Table(
        "llmperf_runs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_uid", sa.String(64), sa.ForeignKey("llmperf_sessions.uid"), nullable=False),
        sa.Column("started", sa.String(32), nullable=False),
        sa.Column("nodeid", sa.Text, nullable=False),
        sa.Column("case_id", sa.String(255), nullable=False),
        sa.Column("config", sa.String(255), nullable=False),
        sa.Column("workload", sa.String(255), nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("engine_version", sa.String(64), nullable=False),
        sa.Column("hardware", sa.Text, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("run_index", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("reference", sa.JSON, nullable=False),
        sa.Column("tolerance", sa.JSON),  # schema 2
        sa.UniqueConstraint("session_uid", "nodeid", "run_index", name="uq_llmperf_run"),
        sa.Index("ix_llmperf_runs_case_started", "case_id", "started"),
    )
    return meta, sessions, runs


class HistoryStore:
    """A connection to the history database; the tables are created (or checked) on open."""

    def __init__(self, target: str) -> None:
        if sa is None:
            raise HistoryError(f"the history store needs SQLAlchemy: {INSTALL_HINT}")
        url = database_url(target)
        try:
            if url.startswith("sqlite"):
                self.engine = sa.create_engine(url, connect_args={"timeout": 60})
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            self.metadata = sa.MetaData()
            self.meta, self.sessions, self.runs = _tables(self.metadata)
            self.metadata.create_all(self.engine)
            self._check_version()
        except sa.exc.SQLAlchemyError as exc:
            raise HistoryError(f"history store {_shown(url)}: {exc.__class__.__name__}: {exc}") from None
        self.url = url

    def _check_version(self) -> None:
        """A new store is stamped with this schema; an older one is migrated in place, one step at a time, in
        one transaction; a newer one is refused."""
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == "schema_version")).scalar()
            if found is None:
                values = [{"key": "schema_version", "value": str(SCHEMA_VERSION)}]
                conn.execute(_insert_ignore(self.engine, self.meta, values))
                return
            version = int(found)
            if version > SCHEMA_VERSION:
                raise HistoryError(
                    f"history store schema {found} is newer than this pytest-llmperf's ({SCHEMA_VERSION}): upgrade it"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    conn.execute(sa.text(statement))
            if version < SCHEMA_VERSION:
                conn.execute(
                    self.meta.update().where(self.meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
                )

    def add(self, session: Mapping[str, Any], rows: Iterable[RunRow]) -> int:
        """Insert a session and its runs; rows already there (same session, test and run) are skipped.
        Returns the number of runs added."""
        values = [
            {
                "session_uid": r.session_uid,
                "started": r.started,
                "nodeid": r.nodeid,
                "case_id": r.case_id,
                "config": r.config,
                "workload": r.workload,
                "engine": r.engine,
                "engine_version": r.engine_version,
                "hardware": r.hardware,
                "verdict": r.verdict,
                "accepted": r.accepted,
                "run_index": r.run_index,
                "metrics": dict(r.metrics),
                "reference": dict(r.reference),
                "tolerance": dict(r.tolerance),
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(_insert_ignore(self.engine, self.sessions, [dict(session)]))
            if not values:
                return 0
            # RETURNING counts what was inserted on both dialects (a multi-row rowcount is -1 on psycopg)
            result = conn.execute(_insert_ignore(self.engine, self.runs, values).returning(self.runs.c.id))
            return len(result.fetchall())

    def runs_of(
        self, *, case_like: str | None = None, case_id: str | None = None, since: str | None = None
    ) -> list[dict[str, Any]]:
        """Run rows with their session's suite commit, oldest first: of the cases whose id contains ``case_like``
        (or is ``case_id``), started at or after ``since``."""
        query = (
            sa.select(self.runs, self.sessions.c.suite_commit)
            .join(self.sessions, self.sessions.c.uid == self.runs.c.session_uid)
            .order_by(self.runs.c.case_id, self.runs.c.started, self.runs.c.run_index)
        )
        if case_like:
            query = query.where(self.runs.c.case_id.contains(case_like))
        if case_id is not None:  # one test's trend: the (case_id, started) index answers it
            query = query.where(self.runs.c.case_id == case_id)
        if since:
            query = query.where(self.runs.c.started >= since)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def accepted_nights(
        self, *, case_id: str | None = None, engine_version: str | None = None, hardware: str | None = None, k: int
    ) -> dict[tuple[str, str, str], list[list[dict[str, Any]]]]:
        """The last ``k`` accepted nights of each (case, engine version, hardware key), oldest first, each night
        its run rows; narrowed to one series by the keyword arguments given."""
        r = self.runs
        query = sa.select(
            r.c.session_uid, r.c.started, r.c.case_id, r.c.engine_version, r.c.hardware, r.c.run_index, r.c.metrics
        ).where(r.c.accepted.is_(True))
        for column, value in ((r.c.case_id, case_id), (r.c.engine_version, engine_version), (r.c.hardware, hardware)):
            if value is not None:
                query = query.where(column == value)
        series: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query.order_by(r.c.started, r.c.session_uid, r.c.run_index)):
                key = (row.case_id, row.engine_version, row.hardware)
                series.setdefault(key, {}).setdefault(row.session_uid, []).append(dict(row._mapping))
        return {key: list(nights.values())[-k:] for key, nights in series.items()}

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.runs)).scalar() or 0)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, shards write in turn
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _insert_ignore(engine: Any, table: Any, values: list[dict[str, Any]]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the engine's dialect: ingesting twice adds nothing."""
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).values(values).on_conflict_do_nothing()
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    raise HistoryError(f"history store: dialect {name!r} is not supported (SQLite or PostgreSQL)")


def _shown(url: str) -> str:
    """The URL without its password."""
    try:
        return str(sa.engine.make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<url>"


def hardware_text(hardware: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(hardware or {}), sort_keys=True)
