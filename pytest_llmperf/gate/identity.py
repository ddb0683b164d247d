"""A baseline is compared only with the same work: the match key beside the hardware key.

What must be equal (else the test fails, or with ``--llmperf-on-other-hardware=skip`` is skipped,
showing both values and the command that re-records):

* the workload definition: every field of the workload except its id, markers and time limits
  (``timeout_s``, ``stall_timeout_s``, ``server_stall_timeout_s``); a field the baseline does not
  record is compared with its default;
* the prompt file of a ShareGPT workload: its name and its content's SHA-256 (a baseline that
  records only the name, like the study's published ones, is compared by name);
* the engine configuration: the launch command and environment as rendered for the config (the
  listen address and port left out, and the simulated engine's noise ``--seed``, which stands for
  which night it is, not for the work), secrets masked;
* the simulated slowdown (the config's ``sim.slowdown`` times ``--llmperf-sim-slowdown``), where the
  engine is simulated.

What may differ, shown in the test's notes and report, never silently:

* the engine version the server reports: comparing a new version with the old baseline is what an
  upgrade gate is for;
* a simulated slowdown against a baseline recorded without one: that is how one proves the gate
  bites. A baseline recorded *under* a slowdown is only compared at the same slowdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.config import EngineConfig, Workload
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.gate.baseline import Baseline

__all__ = ["WorkIdentity", "dataset_identity", "differences", "engine_command", "workload_key"]

NOT_COMPARED = frozenset({"id", "markers", "timeout_s", "stall_timeout_s", "server_stall_timeout_s", "dataset_path"})
_LISTEN_FLAGS = frozenset({"--host", "--port"})
_HASHES: dict[tuple[str, int, int], str] = {}


def dataset_identity(path: str | None) -> dict[str, str] | None:
    """``{"name": file name, "sha256": content hash}`` of a prompt file (hashed once per file version)."""
    if not path:
        return None
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    digest = _HASHES.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _HASHES[key] = h.hexdigest()
    return {"name": Path(path).name, "sha256": digest}


def _as_written(workload: Workload) -> dict[str, Any]:
    """The workload as a baseline file holds it (JSON: an infinite request rate is null)."""
    data: dict[str, Any] = json.loads(workload.model_dump_json())
    return data


def workload_key(workload: Workload) -> dict[str, Any]:
    return {k: v for k, v in _as_written(workload).items() if k not in NOT_COMPARED}


def engine_command(cfg: EngineConfig, sim_slowdown: float = 1.0) -> str:
    """The config's command as recorded in a baseline: as a user types it, at this simulated slowdown."""
    return canonical_command(cfg, sim_slowdown=sim_slowdown)


def _identity_words(command: str, engine: str) -> str:
    """The command without the flags that do not change the work: the listen address, the simulator's seed."""
    dropped = _LISTEN_FLAGS | ({"--seed", "--slowdown"} if engine == "sim" else set())
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in dropped:
            skip = True
            continue
        if word.split("=", 1)[0] in dropped:
            continue
        out.append(word)
    return shlex.join(out)


@dataclass(frozen=True)
class WorkIdentity:
    """What tonight's run measured, beyond the hardware."""

    config: EngineConfig
    workload: Workload
    dataset: dict[str, str] | None
    session_slowdown: float = 1.0  # --llmperf-sim-slowdown
    simulated: bool = False  # --llmperf-simulate: a real engine's config on the simulated engine
    version: str | None = None

    @property
    def sim_slowdown(self) -> float:
        """The simulated engine's step-time factor: the config's own ``sim.slowdown`` times the session's;
        1.0 for a real engine."""
        if self.config.engine == "sim":
            return self.config.sim.slowdown * self.session_slowdown
        return self.session_slowdown if self.simulated else 1.0

    def engine_record(self) -> dict[str, Any]:
        """The baseline's ``engine`` section; the study's ``knob``/``derives_from`` go with it, so that a
        report of baseline files needs no matrix (not part of the match key)."""
        record: dict[str, Any] = {
            "id": self.config.id,
            "engine": self.config.engine,
            "version": self.version,
            "model": self.config.model,
            "command": engine_command(self.config, self.session_slowdown),  # as it ran
            "sim_slowdown": self.sim_slowdown,
        }
        if self.config.knob is not None:
            record["knob"] = self.config.knob
        if self.config.derives_from is not None:
            record["derives_from"] = self.config.derives_from
        return record


def _short(identity: dict[str, str] | None) -> str:
    if identity is None:
        return "random prompts"
    sha = identity.get("sha256")
    return identity.get("name", "?") + (f" (sha256 {sha[:12]})" if sha else "")


def differences(baseline: Baseline, now: WorkIdentity) -> tuple[list[str], list[str]]:
    """(mismatches that forbid the comparison, allowed differences to show), each 'what: baseline X, now Y'."""
    mismatches: list[str] = []
    notes: list[str] = []
    defaults = _as_written(Workload(id="defaults"))
    for key, value in workload_key(now.workload).items():
        recorded = baseline.workload.get(key, defaults.get(key))
        if recorded != value:
            mismatches.append(f"workload {key}: baseline {recorded!r}, now {value!r}")
    if now.workload.dataset == "sharegpt" or baseline.dataset is not None:
        if baseline.dataset is None:
            notes.append("the baseline does not record its prompt file (schema 1): the dataset is not compared")
        else:
            shared = set(baseline.dataset) & set(now.dataset or {})
            if now.dataset is None or any(baseline.dataset[k] != now.dataset[k] for k in shared):
                mismatches.append(f"dataset: baseline {_short(baseline.dataset)}, now {_short(now.dataset)}")
    recorded_slowdown = float(baseline.engine.get("sim_slowdown", 1.0))
    recorded_command = str(baseline.engine.get("command", ""))
    expected = engine_command(now.config)
    engine = now.config.engine
    if recorded_command and _identity_words(recorded_command, engine) != _identity_words(expected, engine):
        mismatches.append(f"engine command: baseline `{recorded_command}`, now `{expected}`")
    if recorded_slowdown != now.sim_slowdown:
        if recorded_slowdown == 1.0:
            notes.append(
                f"simulated slowdown x{now.sim_slowdown:g} injected (--llmperf-sim-slowdown or sim.slowdown) against "
                "a baseline recorded without one"
            )
        else:
            mismatches.append(f"simulated slowdown: baseline x{recorded_slowdown:g}, now x{now.sim_slowdown:g}")
    recorded_version = baseline.engine.get("version")
    if recorded_version and now.version and str(recorded_version) != now.version:
        notes.append(f"engine version: baseline {recorded_version}, now {now.version}")
    return mismatches, notes
