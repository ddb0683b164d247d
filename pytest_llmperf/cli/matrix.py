"""``llmperf matrix PATH``: what every engine config of a matrix file (or a folder of them) will launch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_llmperf.config import expand_cases, find_matrices
from pytest_llmperf.engines.container import RUNTIMES
from pytest_llmperf.engines.launch import container_command, render_launch
from pytest_llmperf.errors import ConfigError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="llmperf matrix",
        description="Print, for every engine config, its id, engine, the exact command and environment it "
        "launches (the launcher adds --port N when the config fixes no port), with an image its container "
        "command for Podman and Docker (SESSION and OWNER are the session's), its markers, its workloads "
        "and any declared unsupported reason.",
    )
    ap.add_argument("path", type=Path, help="a matrix file or a folder of them")
    ap.add_argument("--commands-only", action="store_true", help="print only the commands, one per line")
    args = ap.parse_args(argv)
    try:
        matrices = find_matrices(args.path)
    except ConfigError as exc:
        print(f"llmperf matrix: {exc}", file=sys.stderr)
        return 2
    for file, matrix in matrices:
        if not args.commands_only:
            print(f"# {file}")
        cases = expand_cases(matrix, file)
        for cfg in matrix.engines:
            spec = render_launch(cfg, python="python")
            if args.commands_only:
                print(spec.shell())
                continue
            markers = list(dict.fromkeys(matrix.defaults.markers + cfg.markers))
            workloads = [c.workload.id for c in cases if c.engine.id == cfg.id]
            print(f"\n[{cfg.id}] engine={cfg.engine}" + (f" {cfg.version}" if cfg.version else ""))
            print(f"  command:   {spec.shell()}")
            if spec.env:
                print("  env:       " + " ".join(f"{k}={v}" for k, v in sorted(spec.env.items())))
            print(f"  markers:   {', '.join(markers) or '-'}")
            print(f"  workloads: {', '.join(workloads)}")
            if cfg.image:
                print(f"  image:     {cfg.image}")
                for kind in RUNTIMES:
                    print(f"  {kind + ':':<10} {container_command(cfg, kind)}")
            if cfg.python:
                print(f"  python:    {cfg.python}")
            if cfg.knob:
                print(f"  varies:    {cfg.knob} (from {cfg.derives_from or '-'})")
            if cfg.unsupported is not None:
                u = cfg.unsupported
                print(f"  unsupported: {u.reason}" + (f" ({u.issue})" if u.issue else ""))
                print(f"    expected failure matching: {u.match}")
        if not args.commands_only:
            print()
    return 0
