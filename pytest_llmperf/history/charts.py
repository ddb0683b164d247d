"""Trend charts of one test's metric over its nights (matplotlib, the ``plot`` extra): each run as a faint
dot, the night's mean as a line (a failed night in red, a night not accepted hollow), the reference with
its tolerance as a band, change points as dashed lines with their step, baseline refreshes as dotted ones.

``llmperf history plot`` writes them as PNG files; ``llmperf history html`` inlines them as SVG.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.gate.decision import DEFAULT_TOLERANCE
from pytest_llmperf.history.series import Change, Night
from pytest_llmperf.history.store import HistoryError

__all__ = ["chart_svg", "draw", "file_name", "refreshes", "write_png"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise HistoryError("history plot and html need matplotlib: pip install 'pytest-llmperf[plot]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller page, searchable
    matplotlib.rcParams["svg.hashsalt"] = "llmperf"  # the same history draws the same file
    import matplotlib.pyplot as plt

    return plt


def refreshes(nights: Sequence[Night], metric: str) -> list[int]:
    """The nights whose reference differs from the night before's: a baseline was refreshed between them."""
    out = []
    for i in range(1, len(nights)):
        before, after = nights[i - 1].reference.get(metric), nights[i].reference.get(metric)
        if before is not None and after is not None and abs(after - before) > 1e-9 * max(abs(before), 1.0):
            out.append(i)
    return out


def draw(case: str, metric: str, nights: Sequence[Night], changes: Sequence[Change]) -> Any:
    """The figure of one test's metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2), layout="constrained")
    xs = [i for i, n in enumerate(nights) if metric in n.means]
    for i in xs:
        runs = nights[i].runs[metric]
        ax.plot([i] * len(runs), runs, ".", color="0.65", markersize=3, zorder=1)
    ax.plot(xs, [nights[i].means[metric] for i in xs], "-", color="tab:blue", linewidth=1.2, zorder=2)
    for i in xs:
        n = nights[i]
        colour = "tab:red" if n.verdict == "FAIL" else "tab:blue"
        ax.plot(i, n.means[metric], "o", color=colour, markerfacecolor=colour if n.accepted else "white", markersize=4)
    ref_x = [i for i in xs if metric in nights[i].reference]
    if ref_x:
        ref = [nights[i].reference[metric] for i in ref_x]
        tol = [nights[i].tolerance.get(metric, DEFAULT_TOLERANCE) for i in ref_x]
        ax.fill_between(
            ref_x,
            [r * (1 - t) for r, t in zip(ref, tol, strict=True)],
            [r * (1 + t) for r, t in zip(ref, tol, strict=True)],
            step="mid",
            color="tab:green",
            alpha=0.12,
            linewidth=0,
            label="reference ± tolerance",
        )
        ax.step(ref_x, ref, where="mid", color="tab:green", linewidth=0.8)
    for change in changes:
        x = change.point.index - 0.5
        ax.axvline(x, color="tab:red" if change.bad else "tab:green", linestyle="--", linewidth=1)
        ax.annotate(f"{change.point.step:+.1%}", (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="top")
    for i in refreshes(nights, metric):
        ax.axvline(i - 0.5, color="0.4", linestyle=":", linewidth=1)
    step = max(1, len(nights) // 8)
    ax.set_xticks(range(0, len(nights), step), [nights[i].started[:10] for i in range(0, len(nights), step)])
    ax.tick_params(axis="x", labelsize=7, rotation=30)
    ax.set_title(f"{case}: {metric}", fontsize=9)
    ax.set_ylabel(metric, fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def file_name(case: str, metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{case}__{metric}") + ".png"


def write_png(case: str, metric: str, nights: Sequence[Night], changes: Sequence[Change], out_dir: Path) -> Path:
    fig = draw(case, metric, nights, changes)
    path = out_dir / file_name(case, metric)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def chart_svg(case: str, metric: str, nights: Sequence[Night], changes: Sequence[Change]) -> str:
    """The chart as an inline ``<svg>`` element (no XML prolog)."""
    fig = draw(case, metric, nights, changes)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]
