"""pytest-xdist: all tests of one engine config run on one worker, so each server starts once.

xdist's own ``--dist loadgroup`` tags node ids on the workers, which pytest 9 no longer allows
(node ids became structured), so the plugin brings its scheduler: xdist's scope scheduling with
the engine config as the scope. Workers write the node-id -> config map at collection; the
controller reads it when it first schedules (after every worker has reported its collection).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pytest_llmperf.pids import pid_alive

__all__ = ["groups_file_for", "make_scheduler", "remove_stale_groups_files", "write_groups"]

_PREFIX = "llmperf-xdist-groups-"


def groups_file_for(testrunuid: str) -> Path:
    """The map's file; ``testrunuid`` starts with the controller's pid (see ``LlmperfSession.run_id``)."""
    return Path(tempfile.gettempdir()) / f"{_PREFIX}{testrunuid}.json"


def remove_stale_groups_files() -> list[Path]:
    """Remove the maps of controllers that died without their session's end (SIGKILL)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*.json"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_groups(path: Path, groups: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(groups, f)
    os.replace(tmp, path)


def make_scheduler(config: Any, log: Any, path: Path) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class EngineConfigScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Scope = the test's engine config; tests of no config are scopes of their own."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                try:
                    self._groups = json.loads(path.read_text())
                except (OSError, ValueError):
                    self._groups = {}
            return self._groups.get(nodeid, nodeid)

    return EngineConfigScheduling(config, log)
