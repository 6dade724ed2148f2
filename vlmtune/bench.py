"""``vlmtune bench vit``: every ViT adaptation recipe on the embedded digits default, one table.

A tiny ViT pretrained on digits 0-4 (``digits-tiny``, built once with the shared trainer and cached)
is adapted to digits 5-9 by each ``configs/vit-<method>.yaml`` recipe with the shared trainer; the
table reports trainable parameters (% of the base model, head included: every method trains it) and
top-1 accuracy on the held-out target test split. Runs offline on CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

METHODS = ("head", "full", "bitfit", "lora", "dora", "vpt-shallow", "vpt-deep")
OPTIONAL = ("vera",)  # benchmarked when its recipe and adapter method exist


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=["vit"], help="which comparison to run")
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides for every recipe, e.g. train.epochs=5"
    )
    parser.add_argument(
        "--methods", default="", help=f"comma-separated subset (default: {','.join(METHODS)})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)"
    )
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")


def available_methods() -> list[str]:
    from vlmtune.adapters.inject import known_methods
    from vlmtune.core.config import list_recipes

    recipes = list_recipes()
    extra = [m for m in OPTIONAL if f"vit-{m}" in recipes and m in known_methods()]
    return [*METHODS, *extra]


def run_method(method: str, overrides: list[str], work: Path) -> dict:
    """Train ``vit-<method>`` and return {method, trainable, total, percent, accuracy, seconds}."""
    from vlmtune.adapters import attach, param_report
    from vlmtune.core.config import load_config
    from vlmtune.data.records import read_classification
    from vlmtune.presets import build_pipeline
    from vlmtune.train.trainer import Trainer, seed_everything

    t0 = time.perf_counter()
    cfg = load_config(f"vit-{method}", overrides)
    seed_everything(cfg.train.seed)
    pipe = build_pipeline(cfg)
    train = read_classification(cfg.data.train, "train", cfg.data.max_train_samples)
    test = read_classification(cfg.data.eval, "test", cfg.data.max_eval_samples)
    seed_everything(cfg.train.seed)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    Trainer(pipe, cfg, train, work / method, quiet=True).fit()
    total = param_report(pipe.model, pipe.towers)[-1]
    return {
        "method": method,
        "trainable": total.trainable,
        "base_params": total.total,
        "percent": total.percent,
        "accuracy": pipe.accuracy(test),
        "seconds": time.perf_counter() - t0,
    }


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<12} {'trainable':>10} {'% params':>9} {'accuracy':>9} {'time (s)':>9}"]
    for r in rows:
        lines.append(
            f"{r['method']:<12} {r['trainable']:>10,} {r['percent']:>8.2f}% {r['accuracy']:>8.2f}% {r['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def run_vit_bench(methods: list[str], overrides: list[str], say=print) -> list[dict]:
    from vlmtune.presets.digits_vit import pretrained_digits_tiny

    t0 = time.perf_counter()
    folder = pretrained_digits_tiny()
    say(f"digits-tiny backbone: {folder} ({time.perf_counter() - t0:.1f}s)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlmtune-bench-") as tmp:
        for method in methods:
            rows.append(run_method(method, overrides, Path(tmp)))
            r = rows[-1]
            say(f"  {method:<12} accuracy {r['accuracy']:.2f}%  ({r['seconds']:.1f}s)")
    return rows


def main(args: argparse.Namespace) -> int:
    import torch

    from vlmtune.core.config import ConfigError

    torch.set_num_threads(max(1, args.threads))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or available_methods()
    unknown = [m for m in methods if m not in (*METHODS, *OPTIONAL)]
    if unknown:
        raise ConfigError(
            f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS + OPTIONAL)}"
        )
    t0 = time.perf_counter()
    rows = run_vit_bench(methods, list(args.overrides))
    print()
    print("ViT adaptation, digits 0-4 -> 5-9 (target test split, top-1 %)")
    print(format_table(rows))
    print(f"total {time.perf_counter() - t0:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0
