"""``python -m pytest_llmperf.sim [serve] --port N``: run the simulated engine."""

from __future__ import annotations

import sys

from pytest_llmperf.sim.process import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        args = args[1:]
    sys.exit(main(args))
