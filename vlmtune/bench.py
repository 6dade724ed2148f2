"""``vlmtune bench vit``: every ViT adaptation recipe on the embedded digits default, one table.

A tiny ViT pretrained on digits 0-4 (``digits-tiny``, built once with the shared trainer and cached)
is adapted to digits 5-9 by each ``configs/vit-<method>.yaml`` recipe with the shared trainer; the
table reports trainable parameters (% of the base model, head included: every method trains it) and
top-1 accuracy on the held-out target test split. Runs offline on CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

METHODS = ("head", "full", "bitfit", "lora", "dora", "vpt-shallow", "vpt-deep")
OPTIONAL = ("vera",)  # benchmarked when its recipe and adapter method exist
SWEEP_METHODS = ("lora", "dora", "vera", "dvora")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite",
        choices=["vit", "llava", "vlbart"],
        help="which comparison to run (llava/vlbart: rank sweeps)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides for every recipe, e.g. train.epochs=5"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[],
        help=f"methods, space- or comma-separated (vit default: {','.join(METHODS)}; "
        f"llava/vlbart default: {' '.join(SWEEP_METHODS)})",
    )
    parser.add_argument(
        "--ranks", nargs="+", type=int, default=[2, 8], help="llava/vlbart: adapter ranks (default 2 8)"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs per cell with train.seed = 0..N-1 (default 3)"
    )
    parser.add_argument(
        "--reference", default="lora", help="paired differences are against this method (default lora)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for tiny models)"
    )
    parser.add_argument("--json", default="", help="vit: also write the rows and summary to this JSON file")
    parser.add_argument(
        "--out",
        default="",
        help="llava/vlbart: folder for bench_<suite>.json/.md/.png and run folders "
        "(default runs/bench-<suite>; a rerun with the same setting resumes)",
    )


def available_methods() -> list[str]:
    from vlmtune.adapters.registry import known_methods
    from vlmtune.core.config import list_recipes

    recipes = list_recipes()
    extra = [m for m in OPTIONAL if f"vit-{m}" in recipes and m in known_methods()]
    return [*METHODS, *extra]


def run_method(method: str, overrides: list[str], work: Path) -> dict:
    """Train ``vit-<method>`` and return {method, trainable, total, percent, accuracy, seconds}."""
    from vlmtune.adapters import param_report
    from vlmtune.core.config import load_config
    from vlmtune.data.records import read_classification
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes import fit, seeded_pipeline

    t0 = time.perf_counter()
    cfg = load_config(f"vit-{method}", overrides)
    train = read_classification(cfg.data.train, "train", cfg.data.max_train_samples)
    test = read_classification(cfg.data.eval, "test", cfg.data.max_eval_samples)
    pipe = seeded_pipeline(cfg, build_pipeline, reseed=True)
    fit(pipe, cfg, train, work / method)
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


def run_vit_bench(methods: list[str], overrides: list[str], say=print, seeds=(None,)) -> list[dict]:
    """One row per (seed, method); ``seeds`` None keeps the recipes' ``train.seed``."""
    from vlmtune.presets.digits_vit import pretrained_digits_tiny

    t0 = time.perf_counter()
    folder = pretrained_digits_tiny()
    say(f"digits-tiny backbone: {folder} ({time.perf_counter() - t0:.1f}s)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vlmtune-bench-") as tmp:
        for seed in seeds:
            seeded = overrides if seed is None else [*overrides, f"train.seed={seed}"]
            for method in methods:
                rows.append(run_method(method, seeded, Path(tmp) / f"seed-{seed}"))
                r = rows[-1]
                if seed is not None:
                    r["seed"] = seed
                at = "" if seed is None else f"seed {seed} "
                say(f"  {at}{method:<12} accuracy {r['accuracy']:.2f}%  ({r['seconds']:.1f}s)")
    return rows


def parse_methods(values: list[str]) -> list[str]:
    """``--methods lora dora`` and ``--methods lora,dora`` alike."""
    from vlmtune.core.config import ConfigError

    methods = [m.strip() for v in values for m in v.split(",") if m.strip()]
    overrides = [m for m in methods if "=" in m]
    if overrides:
        raise ConfigError(f"--methods took {overrides[0]!r}: put key=value overrides before --methods")
    return methods


def main(args: argparse.Namespace) -> int:
    import torch

    from vlmtune.core.config import ConfigError

    torch.set_num_threads(max(1, args.threads))
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if any(o.startswith("train.seed=") for o in args.overrides):
        raise ConfigError("train.seed is set by --seeds (seeds 0..N-1); drop the train.seed override")
    if args.suite != "vit":
        from vlmtune.sweep import main_sweep

        return main_sweep(args, parse_methods(args.methods) or list(SWEEP_METHODS))
    methods = parse_methods(args.methods) or available_methods()
    unknown = [m for m in methods if m not in (*METHODS, *OPTIONAL)]
    if unknown:
        raise ConfigError(
            f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS + OPTIONAL)}"
        )
    from vlmtune.sweep import report_vit

    t0 = time.perf_counter()
    rows = run_vit_bench(methods, list(args.overrides), seeds=range(args.seeds))
    print()
    print(f"ViT adaptation, digits 0-4 -> 5-9 (target test split, top-1 %), seeds 0..{args.seeds - 1}")
    print(format_table(rows))
    report_vit(rows, args, total_seconds=time.perf_counter() - t0)
    return 0
