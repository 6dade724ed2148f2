"""Method comparisons over seeds: per-cell mean with a t interval, paired difference vs a reference.

A *row* is one training run: ``{"method": str, "r": int | None, "seed": int, "value": float, ...}``
(``r`` is None when ranks are not swept). A *cell* is one (method, r); its seeds are paired with
the reference method's seeds at the same r (same seed = same initialisation RNG and data order).
"""

from __future__ import annotations

import math
from pathlib import Path

from vlmtune.analysis.stats import Interval, format_interval, mean_interval, paired_difference


def seed_values(rows: list[dict]) -> dict[tuple[str, int | None], dict[int, float]]:
    """{(method, r): {seed: value}} in first-seen order."""
    cells: dict[tuple[str, int | None], dict[int, float]] = {}
    for row in rows:
        cells.setdefault((row["method"], row.get("r")), {})[row["seed"]] = float(row["value"])
    return cells


def verdict(diff: Interval | None) -> str:
    """'higher' / 'lower' when the paired interval excludes 0, else 'within noise'."""
    if diff is None or not math.isfinite(diff.low):
        return "n/a"
    if not diff.excludes_zero:
        return "within noise"
    return "higher" if diff.mean > 0 else "lower"


def summarize(rows: list[dict], reference: str, level: float = 0.95) -> list[dict]:
    """One dict per cell: method, r, seeds, mean interval, paired difference vs ``reference``
    at the same r (None for the reference itself or when it did not run at that r), verdict."""
    cells = seed_values(rows)
    out = []
    for (method, r), values in cells.items():
        ref = cells.get((reference, r))
        diff = paired_difference(values, ref, level) if ref and method != reference else None
        out.append(
            {
                "method": method,
                "r": r,
                "seeds": sorted(values),
                "interval": mean_interval(list(values.values()), level),
                "diff": diff,
                "verdict": verdict(diff) if diff else "",
            }
        )
    return out


def as_json(summary: list[dict]) -> list[dict]:
    """``summarize`` output with the intervals as plain dicts."""
    return [
        {
            **s,
            "interval": s["interval"].as_dict(),
            "diff": s["diff"].as_dict() if s["diff"] else None,
        }
        for s in summary
    ]


def format_summary(summary: list[dict], reference: str, metric: str = "accuracy") -> str:
    """Markdown table: method, r, seeds, mean [95% CI], paired difference vs reference [95% CI]."""
    level = summary[0]["interval"].level if summary else 0.95
    pct = f"{level * 100:g}%"
    show_r = any(s["r"] is not None for s in summary)
    head = ["method", *(["r"] if show_r else []), "seeds", f"{metric} mean [{pct} t-CI]"]
    head.append(f"- {reference} (paired) [{pct} t-CI]")
    head.append("verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["method"], *([str(s["r"])] if show_r else []), str(len(s["seeds"]))]
        cells.append(format_interval(s["interval"]))
        cells.append(format_interval(s["diff"], signed=True) if s["diff"] else "(reference)")
        cells.append(s["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_vs_rank(summary: list[dict], out_png: str | Path, title: str, metric: str = "accuracy") -> Path:
    """Mean vs rank per method (log2 x axis) with the t interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlmtune.analysis.plot import save_figure

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for method in methods:
        sel = sorted((s for s in summary if s["method"] == method), key=lambda s: s["r"] or 0)
        ranks = [s["r"] or 0 for s in sel]
        means = [s["interval"].mean for s in sel]
        (line,) = ax.plot(ranks, means, marker="o", label=f"{method} (n={len(sel[0]['seeds'])})")
        lows = [s["interval"].low for s in sel]
        if all(math.isfinite(v) for v in lows):
            highs = [s["interval"].high for s in sel]
            ax.fill_between(ranks, lows, highs, color=line.get_color(), alpha=0.2)
    ranks = sorted({s["r"] or 0 for s in summary})
    if ranks and ranks[0] > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"{metric} (mean over seeds, band: 95% t-interval)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out_png)
