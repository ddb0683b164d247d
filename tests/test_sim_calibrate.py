"""The calibrated simulator: knobs from command lines, mechanisms, the virtual-time replay, calibration."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from suite_files import StartSim, flat_profile

from pytest_llmperf.cli.main import main as llmperf_main
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.loadgen import BenchSettings, random_requests, run_benchmark_sync
from pytest_llmperf.sim.calibrate import Measured, calibrate, fit_base, leave_one_out, predict, read_results
from pytest_llmperf.sim.calibrated import (
    DEFAULT_PROFILE_FILE,
    FP8_CAPACITY,
    FamilyProfile,
    ProfileSet,
    calibration_key,
    default_profiles,
    load_profiles,
)
from pytest_llmperf.sim.knobs import Knobs, knobs_from_command
from pytest_llmperf.sim.kv_capacity import sglang_dp_attention_kv_tokens
from pytest_llmperf.sim.virtual import Shape, random_shape, replay, sharegpt_shape
from pytest_llmperf.tokenizer import SimTokenizer

STUDY = Path(__file__).resolve().parents[1] / "baselines" / "perf_tests" / "study"


# --- knobs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "command", "expected"),
    [
        ("vllm", "vllm serve m -tp 8", {"parallel": "tp8"}),
        ("vllm", "vllm serve m -tp 1 -dp 8 --enable-expert-parallel --max-model-len 81920",
         {"parallel": "tp1+dp8+dpattn+ep", "context": "81920"}),
        ("vllm", "VLLM_USE_DEEP_GEMM=0 vllm serve m -tp 8", {"parallel": "tp8", "deep_gemm": "off"}),
        ("vllm", "VLLM_ATTENTION_BACKEND=FLASHMLA vllm serve m -tp 8", {"parallel": "tp8", "attention": "FLASHMLA"}),
        ("vllm", """vllm serve m -tp 8 --speculative-config '{"method":"mtp","num_speculative_tokens":1}'""",
         {"parallel": "tp8", "spec": "mtp1"}),
        ("sglang", "python3 -m sglang.launch_server --model-path m --tp-size 8 --dp-size 8 --enable-dp-attention "
         "--ep-size 8 --tool-call-parser deepseekv32 --context-length 32768 --kv-cache-dtype fp8_e4m3",
         {"parallel": "tp8+dp8+dpattn+ep", "tool_call": "on", "context": "32768", "kv_dtype": "fp8_e4m3"}),
        ("sglang", "python3 -m sglang.launch_server --model-path m --tp-size 8 --speculative-algorithm EAGLE "
         "--speculative-num-steps 1 --speculative-eagle-topk 1 --speculative-num-draft-tokens 2",
         {"parallel": "tp8", "spec": "eagle1"}),
        ("sglang", "python3 -m sglang.launch_server --model-path m --tp-size 8 --attention-backend nsa "
         "--nsa-prefill-backend fa3 --nsa-decode-backend fa3", {"parallel": "tp8", "attention": "nsa+fa3"}),
        ("trtllm", "TRTLLM_DG_ENABLED=0 trtllm-serve /w --tp_size 8 --ep_size 8 --pp_size 1",
         {"parallel": "tp8+ep", "deep_gemm": "off"}),
    ],
)  # fmt: skip
def test_knobs_are_read_from_the_engines_own_command_lines(engine: str, command: str, expected: dict[str, str]) -> None:
    values = knobs_from_command(engine, command).values()
    assert {k: v for k, v in values.items() if v != "default"} == expected


# --- mechanisms ----------------------------------------------------------------------------------


def test_dp_attention_splits_kv_and_context_reads_over_the_ranks() -> None:
    # vLLM's DP engines; SGLang's DP attention sizes its pool by its own arithmetic (tests/test_sim_ranks.py)
    fam = FamilyProfile.uncalibrated("vllm")
    tp = fam.profile(Knobs(tp=8))
    dp = fam.profile(Knobs(tp=1, dp=8, dp_attention=True))
    assert dp.kv_capacity_tokens == pytest.approx(8 * tp.kv_capacity_tokens, rel=1e-6)
    assert dp.context_per_token_s == pytest.approx(tp.context_per_token_s / 8)
    # ~447k tokens per rank: 35 GB at 1284 B per token and layer, 61 layers
    assert 440_000 < tp.kv_capacity_tokens < 450_000
    fp8 = fam.profile(Knobs(tp=8, kv_dtype="fp8_e4m3"))
    assert fp8.kv_capacity_tokens == pytest.approx(tp.kv_capacity_tokens * FP8_CAPACITY, rel=1e-6)


def test_speculative_decoding_emits_accepted_tokens_and_sglang_caps_the_batch() -> None:
    sglang = FamilyProfile.uncalibrated("sglang").profile(Knobs(tp=8, spec_tokens=1, spec_name="eagle"))
    assert sglang.max_num_seqs == 48 and sglang.spec_tokens == 1 and sglang.spec_accept == 0.8
    assert FamilyProfile.uncalibrated("vllm").profile(Knobs(tp=8, spec_tokens=1)).max_num_seqs == 1024
    # one request of 101 tokens, every draft accepted: the first token, then 50 steps of 2
    p = flat_profile(0.01, spec_tokens=1, spec_accept=1.0)
    m = replay(p, random_shape(10, 101, 1))
    assert m["duration"] == pytest.approx(0.51)
    assert m["mean_itl_ms"] == pytest.approx(10.0) and m["mean_tpot_ms"] == pytest.approx(5.0)
    # half accepted: 3 tokens every 2 steps
    half = replay(flat_profile(0.01, spec_tokens=1, spec_accept=0.5), random_shape(10, 101, 1))
    assert half["duration"] == pytest.approx(0.01 + 0.01 * math.ceil(100 / 1.5), abs=0.011)


def test_sglang_runs_prefill_only_steps_while_prompts_wait() -> None:
    # two requests, a budget of one prompt a step: vLLM-style puts the first request's decode before the
    # second prefill; SGLang-style runs the second prefill alone, so the first request's next token waits
    shape = random_shape(100, 3, 2)
    mixed = replay(flat_profile(0.01, max_num_batched_tokens=100), shape)
    first = replay(flat_profile(0.01, max_num_batched_tokens=100, prefill_first=True), shape)
    # mixed, decodes first: P1 | D1 + 99 of P2 | D1 + the rest of P2 | D2 | D2
    assert mixed["duration"] == pytest.approx(0.05)
    assert mixed["median_ttft_ms"] == pytest.approx(20.0) and mixed["mean_itl_ms"] == pytest.approx(10.0)
    # prefill first: P1 | P2 | D1 + D2 | D1 + D2: the first request waits a step for the second's prefill
    assert first["duration"] == pytest.approx(0.04)
    assert first["median_ttft_ms"] == pytest.approx(15.0) and first["mean_itl_ms"] == pytest.approx(12.5)


def test_prefill_attention_is_capped_at_the_sparse_keys_and_the_indexer_is_not() -> None:
    p = flat_profile(0.0, attn_pair_s=1.0, index_pair_s=0.0, sparse_keys=4)
    # positions 0..5 attend to 0,1,2,3,4,4 earlier tokens at most 4
    assert p.prefill_attention(0, 6) == 0 + 1 + 2 + 3 + 4 + 4
    assert p.prefill_attention(0, 3) + p.prefill_attention(3, 3) == p.prefill_attention(0, 6)  # chunks add up
    q = flat_profile(0.0, attn_pair_s=0.0, index_pair_s=1.0, sparse_keys=4)
    assert q.prefill_attention(0, 6) == 15


# --- the replay ----------------------------------------------------------------------------------


def test_replay_gives_the_step_model_exactly() -> None:
    # 4 requests of 1 + 9 tokens at 20 ms a step: TTFT 20 ms, ITL 20 ms, TPOT 20 ms, 10 steps
    m = replay(flat_profile(0.02), random_shape(50, 10, 4))
    assert m["completed"] == 4 and m["failed"] == 0
    assert m["duration"] == pytest.approx(0.2)
    assert m["mean_ttft_ms"] == pytest.approx(20.0) and m["mean_tpot_ms"] == pytest.approx(20.0)
    assert m["output_throughput"] == pytest.approx(40 / 0.2)
    assert m["max_concurrent_requests"] == 4


def test_a_prompt_larger_than_the_kv_cache_fails_instead_of_looping() -> None:
    m = replay(flat_profile(0.01, kv_capacity_tokens=64), random_shape(1000, 4, 2))
    assert m["completed"] == 0 and m["failed"] == 2


def test_sharegpt_shape_has_the_measured_means_and_vllms_filter() -> None:
    s = sharegpt_shape(1000, 219.1, 196.6, seed=0)
    ins = [p for p, _ in s.requests]
    outs = [o for _, o in s.requests]
    assert len(s.requests) == 1000
    assert sum(ins) / 1000 == pytest.approx(219.1, rel=0.01) and sum(outs) / 1000 == pytest.approx(196.6, rel=0.01)
    assert min(ins) >= 4 and min(outs) >= 4
    assert sharegpt_shape(1000, 219.1, 196.6, seed=0) == s  # seeded


def test_replay_of_a_study_shape_is_fast() -> None:
    prof = default_profiles().profile("vllm", Knobs(tp=8))[0]
    t0 = time.perf_counter()
    replay(prof, sharegpt_shape(1000, 219.1, 196.6))
    assert time.perf_counter() - t0 < 5.0  # ~0.15 s here; calibration runs thousands of these


@pytest.mark.parametrize(
    ("engine", "args"),
    [
        ("vllm", "-tp 8"),
        # SGLang's DP attention: eight schedulers in lockstep (pytest_llmperf.sim.ranks)
        ("sglang", "--tp-size 8 --dp-size 8 --enable-dp-attention --context-length 32768 --attention-backend nsa "
         "--nsa-prefill-backend fa3 --nsa-decode-backend fa3"),
    ],
)  # fmt: skip
def test_the_served_engine_and_the_replay_agree(start_sim: StartSim, engine: str, args: str) -> None:
    """The HTTP server runs the same scheduler on the wall clock: a measured run matches the replay."""
    server = start_sim(*args.split(), "--profile", f"h200-{engine}")  # the last --profile wins
    assert "simulated timing, deepseek-v32-h200.toml" in server.log_path.read_text()
    reqs = random_requests(SimTokenizer(), num_requests=40, input_len=300, output_len=30, seed=1)
    settings = BenchSettings(
        base_url=server.base_url, model="llmperf-sim", backend="openai", endpoint="/v1/completions", ignore_eos=True
    )
    measured = run_benchmark_sync(settings, reqs).metrics
    prof, _ = default_profiles().profile(engine, knobs_from_command(engine, f"{engine} serve m {args}"))
    replayed = replay(prof, Shape("same", tuple((r.prompt_len, r.expected_output_len) for r in reqs)))
    assert measured.completed == 40
    assert measured.duration == pytest.approx(replayed["duration"], rel=0.1)
    assert measured.stats["tpot"]["mean"] == pytest.approx(replayed["mean_tpot_ms"], rel=0.1)
    assert measured.stats["ttft"]["mean"] == pytest.approx(replayed["mean_ttft_ms"], rel=0.2)


def test_the_served_engine_says_which_flags_it_models_and_how(start_sim: StartSim) -> None:
    """With a calibrated profile the engine's flags are knobs: the log names what it read, and ignores only the rest."""
    args = "--tp-size 8 --dp-size 8 --enable-dp-attention --attention-backend nsa --trust-remote-code"
    server = start_sim(*args.split(), "--profile", "h200-sglang")
    log = server.log_path.read_text()
    assert "ignoring flags it does not model: --trust-remote-code\n" in log
    assert "llmperf sim: knobs from the command line: parallel=tp8+dp8+dpattn, attention=nsa" in log
    assert f"8 DP-attention schedulers, {sglang_dp_attention_kv_tokens(8):,} KV tokens a rank" in log


# --- calibration ---------------------------------------------------------------------------------


def _measured(config: str, engine: str, command: str, metrics: dict[str, float], **kw: object) -> Measured:
    shape = random_shape(200, 40, 120)
    return Measured(config, engine, command, "w", shape, metrics, **kw)  # type: ignore[arg-type]


def test_calibration_recovers_a_known_profile() -> None:
    """Results made by a known profile are fitted back: the base within 15%, the knob's factor within 15%."""
    truth = FamilyProfile.uncalibrated("vllm")
    truth.base.update(step_overhead_s=0.012, decode_per_seq_s=2e-4, prefill_per_token_s=6e-5)
    truth.knobs["tool_call=on"] = {"overhead": 1.5, "per_seq": 1.0, "prefill": 1.0}
    base_cmd, tool_cmd = "vllm serve m -tp 8", "vllm serve m -tp 8 --tool-call-parser x"
    shape = sharegpt_shape(300, 150.0, 80.0)  # varied lengths: the batch size, and so the step mix, varies
    root_m = replay(truth.profile(knobs_from_command("vllm", base_cmd)), shape)
    tool_m = replay(truth.profile(knobs_from_command("vllm", tool_cmd)), shape)
    results = [
        Measured("base", "vllm", base_cmd, "w", shape, root_m),
        Measured("tool", "vllm", tool_cmd, "w", shape, tool_m, knob="tool-call", derives_from="base"),
    ]
    fitted = calibrate(results, workload="w").families["vllm"]
    assert fitted.fitted_on == {"base": "base", "parallel=tp8": "base", "tool_call=on": "tool"}
    for name in ("step_overhead_s", "decode_per_seq_s"):
        assert fitted.base[name] == pytest.approx(truth.base[name], rel=0.15), name
    got = fitted.profile(knobs_from_command("vllm", tool_cmd))
    assert got.step_overhead_s == pytest.approx(0.018, rel=0.15)
    for m in results:
        pred = predict(ProfileSet({"vllm": fitted}), m)
        assert pred["output_throughput"] == pytest.approx(m.metrics["output_throughput"], rel=0.03)
    # leave-one-out: without the tool-call result its factor is the prior (1.0): the base's throughput
    loo = dict((m.config, p) for m, p in leave_one_out(results, ProfileSet({"vllm": fitted}), workload="w"))
    assert loo["tool"]["output_throughput"] == pytest.approx(root_m["output_throughput"], rel=0.05)
    assert set(loo) == {"base", "tool"}


def test_fit_base_stays_within_its_bounds() -> None:
    m = replay(flat_profile(0.5, decode_per_seq_s=0.0), random_shape(10, 5, 10))  # far slower than the bounds allow
    fam = fit_base("vllm", Measured("slow", "vllm", "vllm serve m", "w", random_shape(10, 5, 10), m))
    assert fam.base["step_overhead_s"] <= 0.2


def test_the_packaged_calibration_loads_and_covers_the_study() -> None:
    ps = load_profiles(DEFAULT_PROFILE_FILE)
    assert set(ps.families) == {"vllm", "sglang", "trtllm"}
    assert "llmperf sim calibrate baselines/perf_tests/study" in ps.source["command"]
    fitted = {cfg for fam in ps.families.values() for cfg in fam.fitted_on.values()}
    assert len(fitted) == 19  # every study configuration that starts
    assert ps.dumps() == load_profiles(DEFAULT_PROFILE_FILE).dumps()  # stable round trip


def test_a_recalibration_on_the_same_day_keys_its_results_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration in a simulated result's hardware key follows the profile file's content, not its date:
    results of two calibrations are never compared with each other as if from one machine."""
    import pytest_llmperf.sim.calibrated as calibrated

    packaged = DEFAULT_PROFILE_FILE.read_text(encoding="utf-8")
    copy = tmp_path / DEFAULT_PROFILE_FILE.name
    copy.write_text(packaged, encoding="utf-8")
    monkeypatch.setattr(calibrated, "DEFAULT_PROFILE_FILE", copy)
    first = calibration_key("sglang")
    assert first == calibration_key("sglang") and first.startswith(f"{copy.name} ")
    refit = packaged.replace("step_overhead_s = ", "step_overhead_s = 1", 1)  # a new fit, same source date
    assert refit != packaged and load_profiles(copy).source["date"] in refit
    copy.write_text(refit, encoding="utf-8")
    second = calibration_key("sglang")
    assert second != first and second.startswith(f"{copy.name} ")
    assert calibration_key("sim") == "uncalibrated"  # a family the file does not hold


def test_reading_results_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(LlmperfError, match="nope: no such file"):
        read_results([tmp_path / "nope"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(LlmperfError, match=r"bad\.json: not a JSON result"):
        read_results([bad])
    doc = json.loads((STUDY / "test_deepseek_v32_h200" / "test_serving" / "vllm-baseline-sharegpt.json").read_text())
    del doc["metrics"]["median_itl_ms"]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(doc))
    with pytest.raises(LlmperfError, match=r"short\.json: lacks median_itl_ms; calibration needs them"):
        read_results([short])
    profile = tmp_path / "p.toml"
    profile.write_text("[vllm]\nstep_overhead_s = 0.01\n")
    with pytest.raises(LlmperfError, match=r"p.toml: \[vllm\] lacks decode_per_seq_s"):
        load_profiles(profile)
    profile.write_bytes(b"[vllm]\nstep_overhead_s = \xff\n")  # not UTF-8: an error naming the file, no traceback
    with pytest.raises(LlmperfError, match=r"simulator profile file .*p\.toml: 'utf-8' codec can't decode"):
        load_profiles(profile)
    with pytest.raises(LlmperfError, match=r"simulator profile file .*gone\.toml not found \(write one: llmperf sim"):
        load_profiles(tmp_path / "gone.toml")


def test_llmperf_sim_calibrate_writes_a_profile_and_prints_the_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = STUDY / "test_deepseek_v32_h200" / "test_serving"
    files = [str(src / f"trtllm-{c}-sharegpt.json") for c in ("baseline", "tp-ep")]
    out = tmp_path / "p.toml"
    assert llmperf_main(["sim", "calibrate", *files, "-o", str(out), "--simulate-into", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "calibrating on 2 results of workload sharegpt" in text
    assert "trtllm    base" in text and "parallel=tp8+ep" in text and "bounds" in text
    assert "residuals (simulated vs measured):" in text and f"wrote {out}" in text
    ps = load_profiles(out)
    fitted_on = {"base": "trtllm-baseline", "parallel=tp8": "trtllm-baseline", "parallel=tp8+ep": "trtllm-tp-ep"}
    assert ps.families["trtllm"].fitted_on == fitted_on
    assert ps.source["worst_total_throughput_residual"] < 0.05
    # the replay as a report folder: the study view says it is a simulation, and of what
    assert llmperf_main(["report", str(tmp_path / "rep")]) == 0
    study = capsys.readouterr().out
    assert "# Study view (sharegpt, by total_token_throughput): a simulation" in study
    assert "not from the engines: llmperf-sim, H200 profiles p.toml, calibrated on " in study
    assert "| trtllm-tp-ep    | parallelism |" in study
    assert llmperf_main(["sim", "calibrate", str(tmp_path / "none"), "-o", str(out)]) == 2
    assert "none: no such file or folder of results" in capsys.readouterr().err


def test_the_published_study_view_is_not_labelled_a_simulation(capsys: pytest.CaptureFixture[str]) -> None:
    assert llmperf_main(["report", str(STUDY)]) == 0
    out = capsys.readouterr().out
    assert "# Study view (sharegpt, by total_token_throughput)\n" in out and "a simulation" not in out
