"""The ``llmperf`` command: ``llmperf sim serve ...`` and the tools around a perf suite."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["main"]

USAGE = """usage: llmperf COMMAND ...

commands:
  sim serve [OPTIONS]     run the simulated engine (OpenAI API as vLLM serves it); see `llmperf sim serve --help`
  sim tokenizer DIR       write the simulated engine's tokenizer as a Hugging Face tokenizer directory
  sim build-image         build the simulated engine's container image locally (no registry needed)
  sim calibrate RESULTS... -o PROFILE.toml
                          fit the simulated engine's profiles to measured results (baselines, report folders)
  bench serve [OPTIONS]   benchmark a server: a drop-in for `vllm bench serve`; see `llmperf bench serve --help`
  matrix PATH             print every engine config's launch command, environment, markers and workloads
  baselines list|show|prune   inspect baseline files; remove those no test matches
  report DIR [DIR ...]    one summary, the study view and one exit code over report (or baseline) folders
  tiny-model DIR          write a tiny Llama config + locally trained tokenizer (a real vLLM on CPU, no hub)
  compare OLD NEW         compare two result or baseline sets with the gate's verdicts (exit 1 on regression)
  history ingest|show|changes|plot|html   the nightly history store: add report folders, show each test's
                          recent nights, find change points (exit 1 on a new one in the bad direction),
                          draw them, write a static dashboard
"""


def _sim(args: list[str]) -> int:
    from pytest_llmperf.sim.process import main as sim_main

    if args[:1] == ["serve"]:
        return sim_main(args[1:])
    if args[:1] == ["tokenizer"] and len(args) == 2:
        from pytest_llmperf.tokenizer import SimTokenizer

        path = SimTokenizer().save_hf(args[1])
        print(f"wrote the simulated engine's tokenizer to {path} (tokenizer.json, tokenizer_config.json)")
        return 0
    if args[:1] == ["build-image"]:
        from pytest_llmperf.sim.image import main as image_main

        return image_main(args[1:])
    if args[:1] == ["calibrate"]:
        from pytest_llmperf.cli.calibrate import main as calibrate_main

        return calibrate_main(args[1:])
    usage = (
        "usage: llmperf sim serve [OPTIONS]    run the simulated engine (see llmperf sim serve --help)\n"
        "       llmperf sim tokenizer DIR      write its tokenizer as a Hugging Face tokenizer directory\n"
        "       llmperf sim build-image        a container image of it, built locally (podman or docker)\n"
        "       llmperf sim calibrate RESULTS... -o PROFILE.toml   fit its profiles to measured results"
    )
    if args[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    print(usage, file=sys.stderr)
    return 2


def _bench(args: list[str]) -> int:
    from pytest_llmperf.cli.bench import main as bench_main

    if args[:1] == ["serve"]:
        return bench_main(args[1:])
    usage = "usage: llmperf bench serve [OPTIONS]    a drop-in for vllm bench serve (see llmperf bench serve --help)"
    if args[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    print(usage, file=sys.stderr)
    return 2


def _matrix(args: list[str]) -> int:
    from pytest_llmperf.cli.matrix import main as matrix_main

    return matrix_main(args)


def _baselines(args: list[str]) -> int:
    from pytest_llmperf.cli.baselines import baselines_main

    return baselines_main(args)


def _compare(args: list[str]) -> int:
    from pytest_llmperf.cli.baselines import compare_main

    return compare_main(args)


def _history(args: list[str]) -> int:
    from pytest_llmperf.cli.history import main as history_main

    return history_main(args)


def _report(args: list[str]) -> int:
    from pytest_llmperf.cli.report import main as report_main

    return report_main(args)


def _tiny_model(args: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="llmperf tiny-model",
        description="write a small Llama config and a locally trained tokenizer (a real vLLM on CPU, no hub)",
    )
    ap.add_argument("dir")
    ap.add_argument("--heads", type=int, default=2, help="attention heads (hidden size = heads x head size)")
    ap.add_argument("--head-dim", type=int, default=64, help="head size (vLLM's CPU attention rejects 16)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers")
    ns = ap.parse_args(args)
    for flag, value in (("--heads", ns.heads), ("--head-dim", ns.head_dim), ("--layers", ns.layers)):
        if value < 1:
            ap.error(f"{flag} must be a positive integer, got {value}")
    from pytest_llmperf.tiny_model import write_tiny_model

    path = write_tiny_model(ns.dir, num_heads=ns.heads, head_dim=ns.head_dim, num_layers=ns.layers)
    print(f"wrote a tiny Llama config and a locally trained tokenizer to {path}")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "tiny-model": _tiny_model,
    "report": _report,
    "sim": _sim,
    "bench": _bench,
    "matrix": _matrix,
    "baselines": _baselines,
    "compare": _compare,
    "history": _history,
}


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
