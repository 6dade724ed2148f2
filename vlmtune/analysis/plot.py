"""Scatter of (ΔD, ΔM) like the DoRA paper's Figure 2: one panel per run and module."""

from __future__ import annotations

from pathlib import Path

from vlmtune.analysis.runs import Point


def scatter(points: list[Point], rows: list[dict], out_png: str | Path) -> Path:
    """Panels: rows = modules (q, v), columns = runs; marker per checkpoint, regression line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(p.run for p in points))
    modules = list(dict.fromkeys(p.module for p in points))
    fits = {(r["run"], r["module"]): r for r in rows}
    fig, axes = plt.subplots(
        len(modules), len(runs), figsize=(3.6 * len(runs), 3.0 * len(modules)), squeeze=False
    )
    markers = "o^sDvP*X"
    for i, module in enumerate(modules):
        for j, run in enumerate(runs):
            ax = axes[i][j]
            sel = [p for p in points if p.run == run and p.module == module]
            steps = sorted({p.step for p in sel})
            for k, step in enumerate(steps):
                pts = [p for p in sel if p.step == step]
                label = "final" if k == len(steps) - 1 else f"step {step}"
                ax.scatter([p.dD for p in pts], [p.dM for p in pts], s=18, marker=markers[k % 8], label=label)
            fit = fits.get((run, module))
            if sel and fit and fit["slope"] is not None:
                xs = [min(p.dD for p in sel), max(p.dD for p in sel)]
                ax.plot(xs, [fit["slope"] * x + fit["intercept"] for x in xs], "k--", lw=1)
            method = sel[0].method if sel else "?"
            corr = fit["correlation"] if fit else None
            low, high = (fit.get("correlation_ci95") if fit else None) or (None, None)
            ci = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
            ax.set_title(
                f"{method} {module} ({run})\nr = {corr:.2f}{ci}" if corr is not None else f"{method} {module}"
            )
            ax.set_xlabel("ΔD")
            ax.set_ylabel("ΔM")
            ax.ticklabel_format(style="sci", scilimits=(-2, 2))
            ax.legend(fontsize=6)
    return save_figure(fig, out_png)


def save_figure(fig, out_png: str | Path) -> Path:
    """Lay out ``fig``, write it as a 120-dpi PNG (creating the folder) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
