"""LoRA vs DoRA across ranks on one pipeline (DoRA paper §5.5 / Table 15, rank robustness).

    python benchmarks/rank_sweep.py                       # llava-dora recipe, r in 2,4,8,16
    python benchmarks/rank_sweep.py --ranks 4,8 train.max_steps=200 data.shapes_size=500

Each (method, r) trains the recipe with ``adapters.language.method``/``r`` replaced and
``alpha = 2 r`` (the recipe's alpha/r ratio), evaluates it on the recipe's benchmark, and the
script prints one table (markdown) and writes ``rank_sweep.json`` into ``--out``. Extra
``key=value`` arguments are config overrides applied to every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vlmtune.core.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="llava-dora")
    p.add_argument("--ranks", default="2,4,8,16")
    p.add_argument("--methods", default="lora,dora")
    p.add_argument("--tower", default="language")
    p.add_argument("--alpha-ratio", type=float, default=2.0, help="alpha = ratio * r")
    p.add_argument("--out", default="runs/rank_sweep")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    return p.parse_args(argv)


def one_run(args: argparse.Namespace, method: str, r: int) -> dict:
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes import finetune
    from vlmtune.train.evaluate import headline

    t = args.tower
    overrides = [
        *args.overrides,
        f"adapters.{t}.method={method}",
        f"adapters.{t}.r={r}",
        f"adapters.{t}.alpha={args.alpha_ratio * r:g}",
    ]
    cfg = load_config(args.recipe, overrides)
    run_dir = Path(args.out) / f"{method}-r{r}"
    t0 = time.perf_counter()
    summary = finetune(cfg, run_dir, build_pipeline, quiet=True)
    key, value = headline(summary.get("tuned") or {})
    train = summary.get("train") or {}
    return {
        "method": method,
        "r": r,
        "metric": key,
        "value": value,
        "final_loss": train.get("final_loss", train.get("loss")),
        "trainable_params": _trainable(run_dir),
        "seconds": round(time.perf_counter() - t0, 1),
        "run_dir": str(run_dir),
    }


def _trainable(run_dir: Path) -> int | None:
    """Trainable tensor elements saved in the run's adapter folder (adapter + extras)."""
    from safetensors.torch import load_file

    files = [run_dir / "adapter" / n for n in ("adapter_model.safetensors", "trainable_extras.safetensors")]
    total = sum(t.numel() for f in files if f.is_file() for t in load_file(str(f)).values())
    return total or None


def table(rows: list[dict], methods: list[str], ranks: list[int]) -> str:
    by = {(r["method"], r["r"]): r for r in rows}
    metric = next((r["metric"] for r in rows if r["metric"]), "score")
    head = (
        "| r | "
        + " | ".join(f"{m} {metric}" for m in methods)
        + " | "
        + " | ".join(f"{m} loss" for m in methods)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(methods))]
    for r in ranks:
        vals = [by.get((m, r), {}).get("value") for m in methods]
        losses = [by.get((m, r), {}).get("final_loss") for m in methods]
        cells = ["n/a" if v is None else f"{v:.4f}" for v in vals] + [
            "n/a" if v is None else f"{v:.4f}" for v in losses
        ]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    rows = []
    for r in ranks:
        for method in methods:
            row = one_run(args, method, r)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_sweep.json").write_text(
        json.dumps({"recipe": args.recipe, "overrides": args.overrides, "rows": rows}, indent=2)
    )
    print(table(rows, methods, ranks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
