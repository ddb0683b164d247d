"""The study view: what a tuning study reports, computed from results (live, saved, or baselines).

* per engine: every configuration against that engine's baseline configuration (the root of its
  ``derives_from`` chain), on each gated metric;
* the chain of accepted optimizations, as the DeepSeek-V3.2 study builds it: start from the engine
  configuration that is best at defaults (on the reference workload), then for each knob take the
  best configuration of that knob deriving from the current step, and keep it only if it improves
  the reference metric; knobs that did not help are listed with "-";
* the best configuration overall with its launch command;
* the baseline-vs-best table per workload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tabulate import tabulate

from pytest_llmperf.report.rows import fmt_num

__all__ = ["Entry", "StudyView", "build_view", "render_markdown"]

REFERENCE_METRIC = "total_token_throughput"
TABLE_METRICS = ("total_token_throughput", "output_throughput", "mean_tpot_ms", "mean_ttft_ms")
KNOB_LABELS = {
    "parallelism": "Parallelism",
    "tool-call": "Tool Call Configuration",
    "context-length": "Context Length Adjust",
    "attention-backend": "Attention Backend",
    "kv-cache-dtype": "KV Cache Dtype",
    "mtp": "MTP",
    "deepgemm": "DeepGEMM",
}


@dataclass(frozen=True)
class Entry:
    """One (configuration, workload) result: the means of its metrics."""

    config: str
    engine: str
    workload: str
    metrics: dict[str, float]
    knob: str | None = None
    derives_from: str | None = None
    command: str = ""
    simulated: str = ""  # "": measured on the engine; else the simulator and its profile's calibration source


@dataclass
class Step:
    knob: str
    config: str | None  # None: no configuration of this knob improved on the current step
    value: float | None
    change: float | None  # relative to the previous step


@dataclass
class StudyView:
    workload: str
    per_engine: dict[str, list[tuple[Entry, dict[str, float | None]]]] = field(default_factory=dict)
    start: Entry | None = None
    chain: list[Step] = field(default_factory=list)
    total_change: float | None = None
    best: Entry | None = None
    comparison: list[tuple[str, Entry | None, Entry | None]] = field(default_factory=list)


def _change(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return new / old - 1


def _root(config: str, parents: dict[str, str | None]) -> str:
    seen = set()
    while parents.get(config) and config not in seen:
        seen.add(config)
        config = str(parents[config])
    return config


def build_view(entries: Sequence[Entry], *, workload: str = "sharegpt") -> StudyView:
    view = StudyView(workload)
    ref = {e.config: e for e in entries if e.workload == workload and REFERENCE_METRIC in e.metrics}
    parents = {e.config: e.derives_from for e in entries}
    # per engine: against the engine's baseline configuration
    for entry in sorted(ref.values(), key=lambda e: (e.engine, e.derives_from is not None, e.config)):
        root = ref.get(_root(entry.config, parents))
        changes = {m: (_change(entry.metrics.get(m), root.metrics.get(m)) if root else None) for m in TABLE_METRICS}
        view.per_engine.setdefault(entry.engine, []).append((entry, changes))
    roots = [e for e in ref.values() if not e.derives_from]
    if not roots:
        return view
    view.start = max(roots, key=lambda e: e.metrics[REFERENCE_METRIC])
    view.best = max(ref.values(), key=lambda e: e.metrics[REFERENCE_METRIC])
    tip = view.start
    knobs = list(dict.fromkeys(e.knob for e in ref.values() if e.knob))
    pending = list(knobs)
    root_ids = {e.config for e in roots}
    # apply knobs greedily: at each step, the knob whose best candidate improves most on the tip. The
    # first step may switch engines (any engine's one-knob variant of its baseline competes, as in the
    # study, where SGLang's parallelism beats vLLM at defaults); later steps derive from the tip.
    while pending:
        best_step: tuple[float, str, Entry] | None = None
        for knob in pending:
            cands = [
                e
                for e in ref.values()
                if e.knob == knob
                and (e.derives_from == tip.config or (tip is view.start and e.derives_from in root_ids))
            ]
            for cand in cands:
                gain = cand.metrics[REFERENCE_METRIC] / tip.metrics[REFERENCE_METRIC] - 1
                if gain > 0 and (best_step is None or gain > best_step[0]):
                    best_step = (gain, knob, cand)
        if best_step is None:
            break
        gain, knob, cand = best_step
        view.chain.append(Step(knob, cand.config, cand.metrics[REFERENCE_METRIC], gain))
        pending.remove(knob)
        tip = cand
    for knob in pending:
        view.chain.append(Step(knob, None, None, None))
    view.total_change = _change(tip.metrics[REFERENCE_METRIC], view.start.metrics[REFERENCE_METRIC])
    workloads = list(dict.fromkeys(e.workload for e in entries))
    by = {(e.config, e.workload): e for e in entries}
    for w in workloads:
        view.comparison.append((w, by.get((view.start.config, w)), by.get((view.best.config, w))))
    return view


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2%}"


def _md(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [*tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True).splitlines(), ""]


def render_markdown(view: StudyView) -> str:
    simulated = sorted({e.simulated for rows in view.per_engine.values() for e, _ in rows if e.simulated})
    if simulated:
        out = [
            f"# Study view ({view.workload}, by {REFERENCE_METRIC}): a simulation",
            "",
            "Every number below comes from the simulated engine, not from the engines: "
            + "; ".join(simulated)
            + ". Compare a real run before acting on it.",
            "",
        ]
    else:
        out = [f"# Study view ({view.workload}, by {REFERENCE_METRIC})", ""]
    for engine, rows in view.per_engine.items():
        out += [f"## {engine}: each configuration against the engine's baseline configuration", ""]
        headers = ("configuration", "knob", "total tok/s", "change", "output tok/s", "change", "mean TPOT ms", "change")
        cells: list[list[str]] = []
        for entry, ch in rows:
            m = entry.metrics
            cells.append(
                [entry.config, entry.knob or "baseline"]
                + [x for k in TABLE_METRICS[:3] for x in (fmt_num(m.get(k)), _pct(ch[k]))]
            )
        out += _md(headers, cells)
    if view.start is not None:
        out += [
            "## Summary of optimization options",
            "",
            f"Start: `{view.start.config}` ({fmt_num(view.start.metrics[REFERENCE_METRIC])} tok/s), the best "
            "engine configuration at defaults.",
            "",
        ]
        cells = [
            [KNOB_LABELS.get(step.knob, step.knob), _pct(step.change), step.config or "-", fmt_num(step.value)]
            for step in view.chain
        ]
        cells.append(["Total (vs baseline)", _pct(view.total_change), "", ""])
        out += _md(("optimization option", "throughput improvement", "configuration", "total tok/s"), cells)
    if view.best is not None:
        out += [
            "## Best configuration",
            "",
            f"`{view.best.config}`: {fmt_num(view.best.metrics[REFERENCE_METRIC])} total tok/s on {view.workload}.",
            "",
            "```bash",
            view.best.command or "(command not recorded)",
            "```",
            "",
            f"## Baseline (`{view.start.config if view.start else '-'}`) vs best (`{view.best.config}`)",
            "",
        ]
        cells = []
        for w, base, best in view.comparison:
            bt = base.metrics.get(REFERENCE_METRIC) if base else None
            nt = best.metrics.get(REFERENCE_METRIC) if best else None
            cells.append(
                [
                    w,
                    fmt_num(bt),
                    fmt_num(base.metrics.get("mean_tpot_ms") if base else None),
                    fmt_num(nt),
                    _pct(_change(nt, bt)),
                    fmt_num(best.metrics.get("mean_tpot_ms") if best else None),
                ]
            )
        out += _md(
            (
                "workload",
                "baseline total tok/s",
                "baseline mean TPOT ms",
                "best total tok/s",
                "change",
                "best mean TPOT ms",
            ),
            cells,
        )
    return "\n".join(out)
