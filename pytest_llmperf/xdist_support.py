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

__all__ = ["groups_file_for", "make_scheduler", "write_groups"]


def groups_file_for(testrunuid: str) -> Path:
    return Path(tempfile.gettempdir()) / f"llmperf-xdist-groups-{testrunuid}.json"


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
