"""Matrix files: valid ones expand into cases; bad ones name the file, the entry and the field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pytest_llmperf.config import expand_cases, load_matrix
from pytest_llmperf.errors import ConfigError

GOOD = """
[defaults]
markers = ["sim"]

[[engines]]
id = "a"
engine = "sim"
model = "m"
markers = ["slow"]

[[engines]]
id = "b"
engine = "vllm"
model = "m"
tensor_parallel_size = 8
workloads = ["w2"]

[[workloads]]
id = "w1"
request_rate = "inf"

[[workloads]]
id = "w2"
dataset = "sharegpt"
request_rate = 4.5
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def test_valid_matrix_expands_engines_times_workloads(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cases = expand_cases(load_matrix(path), path)
    assert [c.id for c in cases] == ["a-w1", "a-w2", "b-w2"]
    assert cases[0].markers == ("sim", "slow")
    assert cases[0].workload.request_rate == math.inf
    assert cases[1].workload.request_rate == 4.5
    assert cases[0].workload.resolved_endpoint == "/v1/chat/completions"


def test_unknown_field_names_file_entry_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("tensor_parallel_size = 8", "tensor_paralel_size = 8"))
    with pytest.raises(ConfigError) as exc:
        load_matrix(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "engines[1] (id='b'), field 'tensor_paralel_size'" in msg
    assert "Extra inputs are not permitted" in msg


def test_bad_value_names_the_workload(tmp_path: Path) -> None:
    path = write(
        tmp_path, GOOD.replace('id = "w2"\ndataset = "sharegpt"', 'id = "w2"\ndataset = "sharegpt"\nnum_prompts = 0')
    )
    with pytest.raises(ConfigError, match=r"workloads\[1\] \(id='w2'\), field 'num_prompts'"):
        load_matrix(path)


def test_unknown_workload_reference_and_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workload 'nope' is not defined"):
        load_matrix(write(tmp_path, GOOD.replace('workloads = ["w2"]', 'workloads = ["nope"]')))
    with pytest.raises(ConfigError, match="duplicate id 'w1'"):
        load_matrix(write(tmp_path, GOOD.replace('id = "w2"', 'id = "w1"')))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_matrix(write(tmp_path, "[[engines]\nid="))
    with pytest.raises(ConfigError, match="matrix file not found"):
        load_matrix(tmp_path / "absent.toml")


def test_ids_must_be_safe_for_test_ids_and_file_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engines\[0\].*field 'id'"):
        load_matrix(write(tmp_path, GOOD.replace('id = "a"', 'id = "a b/c"')))
