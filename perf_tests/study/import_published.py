"""Write the study's published results as the suite's first baselines (``source = "published"``).

    python perf_tests/study/import_published.py [../shared/reference/deepseek-v3.2-h200-study.md]

Every result block of the study becomes the baseline of the (configuration, workload) it measured,
with the numbers as printed (n = 1) and a wider tolerance that says why. Blocks are matched to
configurations by the study's headings; the script stops if a block cannot be placed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pytest_llmperf import __version__
from pytest_llmperf.config import load_matrix
from pytest_llmperf.engines.launch import canonical_command
from pytest_llmperf.gate.baseline import Baseline, Provenance, baseline_path, write_baseline
from pytest_llmperf.loadgen.parse_block import parse_result_block

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MATRIX = HERE / "deepseek_v32_h200.toml"
TEST_MODULE = "perf_tests/study/test_deepseek_v32_h200.py"
DEFAULT_STUDY = ROOT.parent / "shared" / "reference" / "deepseek-v3.2-h200-study.md"
TOLERANCE = 0.15
TOLERANCE_REASON = (
    "published single run (n = 1) on another team's 8xH200 node: +/-15% until re-measured here with "
    "--llmperf-update-baselines; the study's own summary table differs from its detailed blocks by up to 8%"
)
GATED = ("total_token_throughput", "output_throughput", "mean_tpot_ms")

SECTION_ENGINE = {
    "2. Optimizing vLLM": "vllm",
    "3. Optimizing SGLang": "sglang",
    "4. Optimizing TensorRT-LLM": "trtllm",
}
BASELINES = {"vLLM": "vllm-baseline", "SGLang": "sglang-baseline", "TensorRT-LLM": "trtllm-baseline"}
HEADINGS = {
    ("vllm", "Parallelism: DP+EP"): "vllm-dp-ep",
    ("vllm", "MTP"): "vllm-mtp",
    ("vllm", "Turn off DeepGEMM in vLLM"): "vllm-deepgemm-off",
    ("vllm", "Enable Tool Call Configuration"): "vllm-tool-call",
    ("vllm", "Context Length Adjustment"): "vllm-ctx-32k",
    ("sglang", "Parallelism: TP+DP Attention"): "sglang-tp-dp-attn",
    ("sglang", "Parallelism: TP+DP+DP Attention"): "sglang-tp-dp-dp-attn",
    ("sglang", "Parallelism: TP+DP+DP Attention+EP"): "sglang-tp-dp-dp-attn-ep",
    ("sglang", "MTP"): "sglang-mtp",
    ("sglang", "Enable Tool Call Configuration"): "sglang-tool-call",
    ("sglang", "Context Length Adjustment"): "sglang-ctx-32k",
    ("sglang", "KV Cache DType"): "sglang-kv-fp8",
    ("sglang", "Attention Backend: fa3 + fa3"): "sglang-attn-fa3",
    ("sglang", "Attention Backend: flashmla_sparse + flashmla_kv"): "sglang-attn-flashmla",
    ("trtllm", "Parallelism: TP+EP"): "trtllm-tp-ep",
    ("trtllm", "Turn off DeepGEMM"): "trtllm-deepgemm-off",
}
RANDOM = {
    "random 128 input": "random-128x4",
    "random 2K input": "random-2000x100",
    "random 4K input": "random-4000x200",
    "random 32k input": "random-32000x100",
    "1k random input + 2k generation": "random-1000x2000",
}


def placed_blocks(text: str) -> list[tuple[str, str, str, dict[str, float]]]:
    """(config id, workload id, where in the study, metrics) for every result block."""
    out = []
    section = heading = label = variant = comment = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("### "):
            section, heading = line[4:], ""
        elif line.startswith("#### "):
            heading = line[5:]
        elif line in BASELINES:
            label = line
        elif "Baseline benchmark results" in line:
            variant = "vllm-baseline"
        elif "Optimized benchmark results" in line:
            variant = "sglang-attn-fa3"
        elif line.lstrip("# ").strip() in RANDOM:
            comment = line.lstrip("# ").strip()
        if line.startswith("Successful requests:"):
            j = i
            while j < len(lines) and not re.fullmatch(r"=+", lines[j].strip()):
                j += 1
            metrics = parse_result_block("\n".join(lines[i:j]))
            if section.startswith("1."):
                config, workload, where = BASELINES[label], "sharegpt", f"{section} / {label}"
            elif section == "Other Benchmark Cases":
                config, workload, where = variant, RANDOM[comment], f"{section} / {variant} / {comment}"
            else:
                config, workload = HEADINGS[(SECTION_ENGINE[section], heading)], "sharegpt"
                where = f"{section} / {heading}"
            out.append((config, workload, where, metrics))
            i = j
        i += 1
    return out


SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"


def with_failures(metrics: dict[str, float], num_prompts: int) -> dict[str, float]:
    """The study's blocks print no "Failed requests" line: the requests sent less those that succeeded
    (984 of 1000 completed = 16 failed), so that a night with the same failures is not a regression."""
    if "failed" not in metrics and "completed" in metrics:
        return {**metrics, "failed": float(num_prompts - metrics["completed"])}
    return metrics


def main(study_path: str) -> int:
    text = Path(study_path).read_text(encoding="utf-8")
    matrix = load_matrix(MATRIX)
    engines = {e.id: e for e in matrix.engines}
    workloads = {w.id: w for w in matrix.workloads}
    found = placed_blocks(text)
    pairs = [(c, w) for c, w, _, _ in found]
    if len(set(pairs)) != len(pairs):
        raise SystemExit(f"two blocks placed on one (config, workload): {pairs}")
    for config_id, workload_id, where, metrics in found:
        cfg = engines[config_id]
        case = f"{config_id}-{workload_id}"
        baseline = Baseline(
            test=f"{TEST_MODULE}::test_serving[{case}]",
            case=case,
            engine={
                "id": cfg.id,
                "engine": cfg.engine,
                "version": cfg.version,
                "model": cfg.model,
                "command": canonical_command(cfg),
                # the study's place of the config, so that `llmperf report` of these files needs no matrix
                **({"knob": cfg.knob} if cfg.knob else {}),
                **({"derives_from": cfg.derives_from} if cfg.derives_from else {}),
            },
            workload=json.loads(workloads[workload_id].model_dump_json(exclude={"markers"})),
            # the study names the file it used, not its content's hash: compared by name
            dataset={"name": SHAREGPT_FILE} if workloads[workload_id].dataset == "sharegpt" else None,
            hardware={"kind": "host", "gpus": "8x NVIDIA H200"},
            provenance=Provenance(
                date="not stated in the study",
                plugin_version=__version__,
                source="published",
                git_commit=None,
                study="deepseek-v3.2-h200-study.md",
                section=where,
                tolerance_reason=TOLERANCE_REASON,
            ),
            tolerance={m: TOLERANCE for m in GATED},
            metrics={k: [v] for k, v in sorted(with_failures(metrics, workloads[workload_id].num_prompts).items())},
        )
        path = baseline_path(ROOT / "baselines", TEST_MODULE, "test_serving", case)
        write_baseline(path, baseline)
        print(f"{path.relative_to(ROOT)}  <- {where}")
    print(f"{len(found)} published baselines written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else str(DEFAULT_STUDY)))
