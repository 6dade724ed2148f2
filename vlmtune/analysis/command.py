"""``vlmtune analyze RUN_DIR... [--out DIR] [--modules q,v]``: DoRA weight decomposition analysis.

Writes ``weight_decomposition.png`` (Figure 2 style) and ``weight_decomposition.json`` (points,
per-run fits, the paper's correlations) and prints the fits. Without ``--out`` into
``<parent of the first run>/analysis``, or ``analysis-2``, ``-3``... when that holds results (as eval: an
earlier analysis is never overwritten).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from vlmtune.analysis.plot import scatter
from vlmtune.analysis.runs import PAPER_CORRELATION, analyze_runs
from vlmtune.core.io import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (FT, LoRA, DoRA ...)")
    parser.add_argument(
        "--out",
        default=None,
        help="output folder (default: <parent of first run>/analysis, or -2, -3... if it holds results already)",
    )
    parser.add_argument("--modules", default="q,v", help="weights to analyse, comma-separated aliases (q,v)")


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'run':<28} {'method':<7} {'mod':<4} {'pts':>4} {'ckpts':>5} {'slope':>9} {'corr':>7} "
        f"{'95% CI (bootstrap over ckpts)':>30} {'paper':>6}"
    )
    lines = [head]
    for r in rows:
        slope = "n/a" if r["slope"] is None else f"{r['slope']:.3g}"
        corr = "n/a" if r["correlation"] is None else f"{r['correlation']:.2f}"
        low, high = r.get("correlation_ci95") or (None, None)
        ci = "n/a" if low is None else f"[{low:.2f}, {high:.2f}]"
        paper = "" if r["paper_correlation"] is None else f"{r['paper_correlation']:.2f}"
        lines.append(
            f"{r['run'][:28]:<28} {r['method']:<7} {r['module']:<4} {r['n']:>4} {len(r['checkpoints']):>5} "
            f"{slope:>9} {corr:>7} {ci:>30} {paper:>6}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    from vlmtune.presets import build_pipeline
    from vlmtune.train.run import next_free_dir

    out = Path(args.out) if args.out else next_free_dir(Path(args.run_dirs[0]).resolve().parent / "analysis")
    points, rows = analyze_runs(args.run_dirs, modules, build=build_pipeline)
    png = scatter(points, rows, out / "weight_decomposition.png")
    summary = {
        "paper": {"correlation_q": PAPER_CORRELATION, "source": "DoRA (ICML 2024) §4.1, VL-BART query"},
        "fits": rows,
        "points": [asdict(p) for p in points],
    }
    js = atomic_write_json(summary, out / "weight_decomposition.json")
    print(format_rows(rows))
    print(f"wrote {png} and {js}")
    return 0
