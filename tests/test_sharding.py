"""Sharding by engine configuration: coverage, one launch per config, merging, stability."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter

import pytest
from suite_files import PERF_TEST

from pytest_llmperf.sharding import parse_shard, shard_of


def matrix(n_configs: int) -> str:
    engines = "".join(
        f'[[engines]]\nid = "cfg{i}"\nengine = "sim"\nmodel = "llmperf-sim"\n'
        'sim = { profile = "deterministic", ttft_ms = 20, itl_ms = 20 }\n\n'
        for i in range(n_configs)
    )
    workloads = "".join(
        f'[[workloads]]\nid = "w{j}"\nrandom_input_len = 8\nrandom_output_len = 10\nnum_prompts = 6\n\n'
        for j in range(2)
    )
    # the subject is coverage and merging: a host pause moving one tiny run's TPOT must not flip a verdict
    # between the sharded and the unsharded night, nor buy confirmation runs
    gate = "[gate.tolerance]\noutput_throughput = 0.9\ntotal_token_throughput = 0.9\nmean_tpot_ms = 0.9\n\n"
    return gate + engines + workloads


def test_parse_shard() -> None:
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(ValueError, match="--llmperf-shard"):
            parse_shard(bad)


def test_adding_a_configuration_moves_no_other_one() -> None:
    ids = [f"config-{i}" for i in range(40)]
    before = {c: shard_of(c, 4) for c in ids}
    after = {c: shard_of(c, 4) for c in [*ids, "config-new"]}
    assert {c: after[c] for c in ids} == before
    assert set(before.values()) == {1, 2, 3, 4}  # every shard gets work
    assert max(Counter(before.values()).values()) <= 20


def test_three_shards_cover_every_test_once_and_merge_to_the_unsharded_verdicts(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", matrix=matrix(5))
    pytester.makepyfile(test_perf=PERF_TEST)
    pytester.runpytest("--llmperf-update-baselines", "--llmperf-repeats", "2").assert_outcomes(passed=10)
    whole = pytester.runpytest("--llmperf-repeats", "2", "--llmperf-report-dir", "whole")
    whole.assert_outcomes(passed=10)
    ran: Counter[str] = Counter()
    for k in (1, 2, 3):
        r = pytester.runpytest(
            "--llmperf-repeats",
            "2",
            "--llmperf-shard",
            f"{k}/3",
            "--llmperf-report-dir",
            f"shard{k}",
            "--llmperf-log-dir",
            f"logs{k}",
        )
        assert r.ret in (0, 5)
        for t in json.loads((pytester.path / f"shard{k}" / "summary.json").read_text())["tests"] if r.ret == 0 else []:
            ran[t["nodeid"]] += 1
    assert len(ran) == 10 and set(ran.values()) == {1}
    launched: Counter[str] = Counter()
    for k in (1, 2, 3):
        for log in (pytester.path / f"logs{k}").glob("*.log") if (pytester.path / f"logs{k}").exists() else []:
            launched[log.stem] += log.read_text().count("### llmperf: launching")
    assert launched == Counter({f"cfg{i}": 1 for i in range(5)})
    cmd = [sys.executable, "-m", "pytest_llmperf.cli", "report"]
    merged = subprocess.run(
        [*cmd, "shard1", "shard2", "shard3", "--out", "merged.md"], cwd=pytester.path, capture_output=True, text=True
    )
    single = subprocess.run([*cmd, "whole", "--out", "whole.md"], cwd=pytester.path, capture_output=True, text=True)
    assert merged.returncode == single.returncode == 0, merged.stderr

    def verdicts(text: str) -> list[str]:
        return sorted(
            line.split("|")[1] + line.split("|")[2] + line.split("|")[-2]
            for line in text.splitlines()
            if line.startswith("| `")
        )

    assert verdicts((pytester.path / "merged.md").read_text()) == verdicts((pytester.path / "whole.md").read_text())
    if importlib.util.find_spec("sqlalchemy") is not None:  # the merged night into the history store, once
        shards = [*cmd, "shard1", "shard2", "shard3", "--llmperf-history", "nightly.sqlite"]
        first = subprocess.run(shards, cwd=pytester.path, capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        # 10 tests x 2 repeats, plus any confirmation runs a noisy first verdict bought on this shared host
        runs = sum(
            max(len(v) for v in t["samples"].values())
            for k in (1, 2, 3)
            for t in json.loads((pytester.path / f"shard{k}" / "summary.json").read_text())["tests"]
        )
        assert runs >= 20
        assert f"history: {runs} run(s) of 3 report folder(s) recorded in nightly.sqlite" in first.stdout
        again = subprocess.run(shards, cwd=pytester.path, capture_output=True, text=True)
        assert "history: 0 run(s) of 3 report folder(s)" in again.stdout
    missing = subprocess.run(
        [*cmd, "shard1", "shard3", "--out", "m.md"], cwd=pytester.path, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "shard 2/3 did not report" in missing.stderr
    gone = subprocess.run(
        [*cmd, "shard1", "shard2", "shard-9", "--out", "m.md"], cwd=pytester.path, capture_output=True, text=True
    )
    assert gone.returncode == 2 and "shard-9: missing" in gone.stderr


def test_bad_shard_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", matrix=matrix(1))
    pytester.makepyfile(test_perf=PERF_TEST)
    result = pytester.runpytest("--llmperf-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "K must be between 1 and N" in result.stderr.str()
