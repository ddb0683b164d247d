"""Golden tests: the study's 24 configurations render to its serving scripts, flag for flag."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pytest_llmperf.config import load_matrix
from pytest_llmperf.engines.launch import render_launch

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "perf_tests" / "study" / "deepseek_v32_h200.toml"
GOLDEN = Path(__file__).parent / "golden" / "study_serving_scripts.txt"
STUDY = ROOT.parent / "shared" / "reference" / "deepseek-v3.2-h200-study.md"
# spellings the engines' argument parsers treat as the same flag
ALIASES = {"--dp": "--dp-size"}


def golden() -> dict[str, tuple[str, dict[str, str]]]:
    scripts: dict[str, tuple[str, dict[str, str]]] = {}
    for block in GOLDEN.read_text().split("=== ")[1:]:
        ident, _, body = block.partition("\n")
        env: dict[str, str] = {}
        command_lines = []
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = value.strip('"')
            else:
                command_lines.append(line)
        scripts[ident.strip()] = (" ".join(command_lines), env)
    return scripts


def normalize(tokens: list[str]) -> tuple[tuple[str, ...], Counter[tuple[str, ...]]]:
    """(leading words, multiset of (flag, values...)) with --flag=value split and aliases resolved."""
    split: list[str] = []
    for tok in tokens:
        if tok.startswith("--") and "=" in tok:
            flag, _, value = tok.partition("=")
            split += [flag, value]
        else:
            split.append(tok)
    lead: list[str] = []
    groups: list[list[str]] = []
    for tok in split:
        if tok.startswith("-") and not tok.lstrip("-").replace(".", "").isdigit():
            groups.append([ALIASES.get(tok, tok)])
        elif groups:
            groups[-1].append(tok)
        else:
            lead.append(tok)
    return tuple(lead), Counter(tuple(g) for g in groups)


def test_the_matrix_has_the_studys_24_configurations() -> None:
    matrix = load_matrix(MATRIX)
    assert [e.id for e in matrix.engines] == [
        "vllm-baseline",
        "vllm-dp-ep",
        "vllm-dcp",
        "vllm-mtp",
        "vllm-deepgemm-off",
        "vllm-tool-call",
        "vllm-ctx-32k",
        "vllm-attn-cutlass-mla",
        "vllm-attn-flashmla",
        "vllm-attn-triton-mla",
        "sglang-baseline",
        "sglang-tp-dp-attn",
        "sglang-tp-dp-dp-attn",
        "sglang-tp-dp-dp-attn-ep",
        "sglang-mtp",
        "sglang-deepgemm-off",
        "sglang-tool-call",
        "sglang-ctx-32k",
        "sglang-kv-fp8",
        "sglang-attn-fa3",
        "sglang-attn-flashmla",
        "trtllm-baseline",
        "trtllm-tp-ep",
        "trtllm-deepgemm-off",
    ]
    unsupported = sorted(e.id for e in matrix.engines if e.unsupported is not None)
    assert unsupported == [
        "sglang-deepgemm-off",
        "vllm-attn-cutlass-mla",
        "vllm-attn-flashmla",
        "vllm-attn-triton-mla",
        "vllm-dcp",
    ]


@pytest.mark.parametrize("config_id", list(golden()))
def test_rendered_command_and_environment_equal_the_study_script(config_id: str) -> None:
    scripts = golden()
    command, env = scripts[config_id]
    if not command:  # FLASHMLA: the study gives the environment only; the baseline command is used
        assert config_id == "vllm-attn-flashmla"
        command = scripts["vllm-baseline"][0]
    cfg = next(e for e in load_matrix(MATRIX).engines if e.id == config_id)
    spec = render_launch(cfg)
    assert spec.env == env
    assert normalize(list(spec.argv)) == normalize(command.split())


def test_normalization_is_not_blind() -> None:
    # a changed value, a missing flag or a different program all break the equality
    base = ["vllm", "serve", "m", "-tp", "8", "--max-model-len", "32768"]
    assert normalize(base) == normalize(["vllm", "serve", "m", "--max-model-len=32768", "-tp", "8"])
    assert normalize(base) != normalize(["vllm", "serve", "m", "-tp", "4", "--max-model-len", "32768"])
    assert normalize(base) != normalize(["vllm", "serve", "m", "-tp", "8"])
    assert normalize(base) != normalize(["sglang", "serve", "m", "-tp", "8", "--max-model-len", "32768"])


def test_golden_scripts_are_the_studys_own_text() -> None:
    if not STUDY.exists():
        pytest.skip(f"the study is not beside the checkout ({STUDY})")
    study = " ".join(STUDY.read_text().replace("\\\n", " ").split())
    for command, env in golden().values():
        if command:
            assert " ".join(command.split()) in study
        for key, value in env.items():
            assert f'export {key}="{value}"' in study or f"export {key}={value}" in study


def test_llmperf_matrix_prints_every_study_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest_llmperf.cli", "matrix", str(MATRIX), "--commands-only"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 24
    assert (
        out[0]
        == "vllm serve deepseek-ai/DeepSeek-V3.2 -tp 8 --tokenizer-mode deepseek_v32 --reasoning-parser deepseek_v3"
    )
    assert out[-1] == "TRTLLM_DG_ENABLED=0 trtllm-serve /workspace/DeepSeek-v3.2 --tp_size 8 --ep_size 8 --pp_size 1"


def test_vllm_attention_backend_flag_follows_the_engine_version() -> None:
    cfg = next(e for e in load_matrix(MATRIX).engines if e.id == "vllm-attn-triton-mla")
    assert render_launch(cfg).env == {"VLLM_ATTENTION_BACKEND": "TRITON_MLA"}  # 0.13.0: the environment
    newer = cfg.model_copy(update={"version": "0.14.0"})
    spec = render_launch(newer)
    assert spec.env == {} and spec.argv[-2:] == ("--attention-backend", "TRITON_MLA")
