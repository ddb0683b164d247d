"""``llmperf bench serve``: a drop-in for ``vllm bench serve`` (vLLM 0.32 flags, result block and JSON).

The study's benchmark commands run unchanged with ``vllm bench serve`` replaced by
``llmperf bench serve``. Additions of ours: ``--client-workers N`` (spread the load over N
processes), ``--prewarm-connections`` (open the connection pool before the clock starts) and
``--stall-timeout S``; the defaults keep vLLM's single-process, cold-pool semantics.
One difference: vLLM's client honours HTTP(S)_PROXY / NO_PROXY and ~/.netrc (aiohttp's
``trust_env``, looked up in a thread pool on every request, inside its TTFT); this one connects
to the server directly and sends ``OPENAI_API_KEY`` as the bearer token when it is set.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from pytest_llmperf.config import Workload
from pytest_llmperf.errors import DatasetError
from pytest_llmperf.loadgen.datasets import requests_for
from pytest_llmperf.loadgen.results import default_result_filename, result_json
from pytest_llmperf.loadgen.run import run_benchmark_sync
from pytest_llmperf.loadgen.runner import BenchSettings
from pytest_llmperf.loadgen.tokenizers import load_tokenizer
from pytest_llmperf.metrics import METRIC_LABELS, parse_goodput, result_block

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmperf bench serve",
        description=(__doc__ or "").replace("``", ""),  # a docstring's RST quotes read as noise in a terminal
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", default="openai", choices=["openai", "openai-chat", "vllm"])
    p.add_argument("--endpoint", default=None, help="default: /v1/completions, or /v1/chat/completions for openai-chat")
    p.add_argument("--base-url", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="default: the first model of /v1/models")
    p.add_argument("--served-model-name", default=None)
    p.add_argument(
        "--tokenizer", default=None, help="a local tokenizer.json or model directory; default: the server's /tokenize"
    )
    p.add_argument("--dataset-name", default="random", choices=["random", "sharegpt"])
    p.add_argument("--dataset-path", default=None)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", "--input-len", dest="random_input_len", type=int, default=1024)
    p.add_argument("--random-output-len", "--output-len", dest="random_output_len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--random-prefix-len", type=int, default=0)
    p.add_argument("--sharegpt-output-len", type=int, default=None)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--num-warmups", type=int, default=0)
    p.add_argument("--percentile-metrics", default="ttft,tpot,itl")
    p.add_argument("--metric-percentiles", default="99")
    p.add_argument("--goodput", nargs="+", default=None, metavar="KEY:VALUE")
    p.add_argument("--save-result", action="store_true")
    p.add_argument("--save-detailed", action="store_true")
    p.add_argument("--result-dir", default=None)
    p.add_argument("--result-filename", default=None)
    p.add_argument("--label", default=None)
    p.add_argument("--metadata", nargs="*", default=None, metavar="KEY=VALUE")
    p.add_argument("--trust-remote-code", action="store_true", help="accepted for compatibility; no effect")
    p.add_argument("--disable-tqdm", action="store_true", help="accepted for compatibility")
    ours = p.add_argument_group("pytest-llmperf additions")
    ours.add_argument("--client-workers", type=int, default=1, help="spread the load over N client processes")
    ours.add_argument(
        "--prewarm-connections",
        action="store_true",
        help="open the connection pool before the clock starts (TTFT then excludes TCP set-up)",
    )
    ours.add_argument(
        "--stall-timeout",
        type=float,
        default=None,
        metavar="S",
        help="fail a request whose stream sends nothing for S seconds",
    )
    ours.add_argument(
        "--server-stall-timeout",
        type=float,
        default=None,
        metavar="S",
        help="stop the run when the server sends nothing on any open stream for S seconds (its requests fail)",
    )
    return p


def _first_model(base_url: str) -> str:
    try:
        data = httpx.get(base_url + "/v1/models", timeout=30, trust_env=False).json()
        return str(data["data"][0]["id"])
    except httpx.ConnectError as exc:
        raise SystemExit(
            f"llmperf bench serve: cannot reach a server at {base_url} ({exc}); start it, or check --base-url "
            "(or --host and --port)"
        ) from None
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise SystemExit(
            f"llmperf bench serve: no --model given and {base_url}/v1/models did not name one ({exc}); pass --model"
        ) from None


def bench_workload(args: argparse.Namespace) -> Workload:
    """The command line as a workload: one set of names from the flags to the settings and the requests."""
    if args.dataset_name == "sharegpt" and not args.dataset_path:
        raise DatasetError(
            "--dataset-name sharegpt needs --dataset-path PATH (ShareGPT_V3_unfiltered_cleaned_split.json)"
        )
    try:
        return Workload(
            id="bench",
            dataset=args.dataset_name,
            dataset_path=args.dataset_path,
            backend="openai" if args.backend == "vllm" else args.backend,
            endpoint=args.endpoint,
            num_prompts=args.num_prompts,
            random_input_len=args.random_input_len,
            random_output_len=args.random_output_len,
            random_range_ratio=args.random_range_ratio,
            random_prefix_len=args.random_prefix_len,
            sharegpt_output_len=args.sharegpt_output_len,
            request_rate=args.request_rate,
            burstiness=args.burstiness,
            max_concurrency=args.max_concurrency,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
            num_warmups=args.num_warmups,
        )
    except ValidationError as exc:
        fields = "; ".join(f"--{'-'.join(str(e['loc'][0]).split('_'))}: {e['msg']}" for e in exc.errors())
        raise DatasetError(fields) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(
            f"llmperf bench serve: --base-url {base_url!r} is not a server URL; "
            "give it as http://HOST:PORT (or https://HOST:PORT), or use --host and --port"
        )
    model_id = args.model or _first_model(base_url)
    request_model = args.served_model_name or model_id
    selected = tuple(m.strip() for m in args.percentile_metrics.split(",") if m.strip())
    unknown = [m for m in selected if m not in METRIC_LABELS]
    if unknown:
        raise SystemExit(
            f"llmperf bench serve: unknown --percentile-metrics {unknown}; choose from {list(METRIC_LABELS)}"
        )
    try:
        percentiles = tuple(float(p) for p in args.metric_percentiles.split(","))
        goodput = parse_goodput(args.goodput) if args.goodput else None
    except ValueError as exc:
        raise SystemExit(f"llmperf bench serve: {exc}") from None
    metadata = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"llmperf bench serve: --metadata takes KEY=VALUE, got {item!r}")
        metadata[key] = value
    spec = args.tokenizer
    if spec is None and Path(model_id).is_dir():
        spec = model_id
    try:
        workload = bench_workload(args)
        tokenizer = load_tokenizer(spec, base_url=base_url, model=request_model)
        requests = requests_for(tokenizer, workload)
    except DatasetError as exc:
        hint = " (check --dataset-path)" if args.dataset_path and "ShareGPT file" in str(exc) else ""
        raise SystemExit(f"llmperf bench serve: {exc}{hint}") from None
    settings = BenchSettings.for_workload(
        workload,
        base_url=base_url,
        model=request_model,
        timeout_s=BenchSettings.timeout_s,  # vLLM's 6 h per request, not a suite's hour
        stall_timeout_s=args.stall_timeout,
        server_stall_timeout_s=args.server_stall_timeout,
        percentiles=percentiles,
        selected=selected,
        goodput=goodput,
        client_workers=args.client_workers,
        prewarm_connections=args.prewarm_connections,
    )
    print(f"Traffic request rate: {args.request_rate}")
    burst = " (Poisson process)" if args.burstiness == 1.0 else ""
    print(f"Burstiness factor: {args.burstiness}{burst}")
    print(f"Maximum request concurrency: {args.max_concurrency}")
    result = run_benchmark_sync(settings, requests, count_tokens=lambda t: len(tokenizer.encode(t)))
    errors = [e for e in result.errors if e]
    if errors:
        print(f"{len(errors)} request(s) failed; first errors:")
        for e in list(dict.fromkeys(errors))[:10]:
            print(f"  {e}")
    print(result_block(result.metrics, max_concurrency=args.max_concurrency, request_rate=args.request_rate))
    for warning in result.client_warnings:
        print(f"WARNING: {warning}")
    if args.save_result or args.save_detailed:
        data = result_json(
            result,
            model_id=model_id,
            tokenizer_id=getattr(tokenizer, "name", str(spec)),
            label=args.label,
            metadata=metadata,
            detailed=args.save_detailed,
        )
        name = args.result_filename or default_result_filename(
            backend=workload.backend,
            label=args.label,
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            model_id=model_id,
        )
        path = Path(args.result_dir or ".") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        print(f"Saved the result to {path}")
    if result.metrics.completed == 0:
        print(
            f"llmperf bench serve: no request succeeded ({len(result.records)} failed); the numbers above measure "
            "nothing. The errors above say why.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
