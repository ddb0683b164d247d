"""Baseline files: deterministic layout, atomic writes, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.errors import BaselineError
from pytest_llmperf.gate.baseline import Baseline, Provenance, baseline_path, dumps, load_baseline, write_baseline


def sample() -> Baseline:
    return Baseline(
        test="t.py::test[x]",
        case="x",
        engine={"id": "e", "engine": "sim"},
        workload={"id": "w"},
        hardware={"kind": "simulated"},
        provenance=Provenance(date="2026-01-01", plugin_version="0"),
        metrics={"output_throughput": [1.234567891, 2.0], "failed": [0.0, 0.0]},
    )


def test_round_trip_and_deterministic_layout(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    write_baseline(path, sample())
    text = path.read_text()
    assert text.endswith("}\n")
    assert '"output_throughput": [1.2346, 2.0]' in text
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    loaded = load_baseline(path)
    assert loaded is not None and loaded.metrics["output_throughput"] == [1.2346, 2.0]
    assert dumps(loaded) == text
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary file left


def test_strings_inside_lists_survive_the_layout_byte_for_byte(tmp_path: Path) -> None:
    """The samples are laid out one list a line; a string in a list that looks like a list keeps its spaces."""
    b = sample()
    b.workload["markers"] = ["[  a,  b  ]", "x ,y"]
    b.engine["command"] = "vllm serve m --speculative-config '[ 1,  2 ]'"
    text = dumps(b)
    assert json.loads(text)["workload"]["markers"] == ["[  a,  b  ]", "x ,y"]
    assert json.loads(text)["engine"]["command"] == "vllm serve m --speculative-config '[ 1,  2 ]'"
    assert '"markers": ["[  a,  b  ]", "x ,y"]' in text


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_baseline(tmp_path / "none.json") is None


def test_corrupt_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"schema_version": 1, "metrics": ')
    with pytest.raises(BaselineError) as exc:
        load_baseline(path)
    assert str(path) in str(exc.value) and "--llmperf-update-baselines" in str(exc.value)


def test_unknown_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BaselineError, match=r"schema_version 99.*reads versions 1, 2.*written by a newer"):
        load_baseline(path)


def test_invalid_fields_are_named(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    data = json.loads(dumps(sample()))
    data["metrics"] = {"output_throughput": "fast"}
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"metrics\.output_throughput"):
        load_baseline(path)


def test_baseline_path_is_per_test_and_case(tmp_path: Path) -> None:
    p = baseline_path(tmp_path, "perf_tests/test_sim.py", "test_serving", "sim-a-w1")
    assert p == tmp_path / "perf_tests" / "test_sim" / "test_serving" / "sim-a-w1.json"
