"""The ``llmperf`` command: ``llmperf sim serve ...`` and the tools around a perf suite."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["main"]

USAGE = """usage: llmperf COMMAND ...

commands:
  sim serve [OPTIONS]     run the simulated engine (OpenAI API as vLLM serves it); see `llmperf sim serve --help`
"""


def _sim(args: list[str]) -> int:
    from pytest_llmperf.sim.server import main as sim_main

    if args[:1] == ["serve"]:
        return sim_main(args[1:])
    print("usage: llmperf sim serve [OPTIONS]", file=sys.stderr)
    return 2


COMMANDS: dict[str, Callable[[list[str]], int]] = {"sim": _sim}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"llmperf: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
