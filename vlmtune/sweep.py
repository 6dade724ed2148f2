"""``vlmtune bench llava|vlbart``: methods x ranks x seeds on the embedded shapes defaults.

Each run trains the suite's recipe with ``adapters.<tower>.method/r/alpha`` and ``train.seed``
replaced, on top of the suite's *unsaturated* overrides (fewer steps, smaller evaluation): at the
recipe defaults every method reaches the ceiling of the toy (LLaVA ~92% = what the base model
knows, VL-BART 100%) and no difference can show. Runs go seed by seed (all cells of seed 0, then
seed 1 ...) so that an interrupted sweep still pairs; every finished run is appended to one JSON
file at once, and a rerun with the same setting resumes from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmtune.core.config import ConfigError, load_config
from vlmtune.core.io import atomic_write_json


@dataclass(frozen=True)
class Suite:
    """One sweepable pipeline: recipe, adapted tower, alpha = ratio * r, unsaturated overrides."""

    recipe: str
    tower: str
    alpha_ratio: float
    overrides: tuple[str, ...]
    note: str
    title: str  # short plot title
    method_overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)


SUITES: dict[str, Suite] = {
    "llava": Suite(
        recipe="llava-dora",
        tower="language",
        alpha_ratio=2.0,
        overrides=(
            "train.lr=1e-3",
            "train.max_steps=50",
            "data.max_eval_samples=200",
            "train.eval_at_start=false",
        ),
        # VeRA trains only two scaling vectors per layer and needs a larger learning rate (the VeRA
        # paper's are 10x LoRA's); at 1e-3 both stayed at 0 after 60 steps, at 1e-2 DVoRA learns
        method_overrides={"vera": ("train.lr=1e-2",), "dvora": ("train.lr=1e-2",)},
        title="LLaVA shapes-VQA: lr 1e-3 (VeRA/DVoRA 1e-2), 50 steps, 200 questions",
        note=(
            "llava-dora recipe (all LM linear layers, alpha = 2r, projector at 2e-5) at lr 1e-3 "
            "(VeRA/DVoRA 1e-2) for 50 steps, scored on the first 200 held-out shapes-VQA questions (recipe: lr 2e-4, 400 steps, "
            "500 questions, where every method reaches the ~92% the base model knows)"
        ),
    ),
    "vlbart": Suite(
        recipe="vlbart-dora",
        tower="language",
        alpha_ratio=1.0,
        overrides=(
            "train.max_steps=60",
            "data.max_eval_samples=100",
            "train.eval_at_start=false",
        ),
        method_overrides={"vera": ("train.lr=1e-2",), "dvora": ("train.lr=1e-2",)},
        title="VL-BART shapes-VQA: lr 1e-3 (VeRA/DVoRA 1e-2), 60 steps, 100 questions",
        note=(
            "vlbart-dora recipe (q,v of all BART attention, alpha = r, lr 1e-3, VeRA/DVoRA 1e-2) for "
            "60 steps instead of 752, scored on the first 100 held-out records, which are VQA "
            "questions (recipe: every method at 99.96-100.0 VQA)"
        ),
    ),
}


def alpha_override(tower: str, method: str, alpha: float) -> str:
    """``adapters.<tower>.alpha=...``; null for methods without alpha (VeRA, DVoRA: an error if set)."""
    from vlmtune.adapters.registry import METHODS

    if method in METHODS and not METHODS[method].uses_alpha:
        return f"adapters.{tower}.alpha=null"
    return f"adapters.{tower}.alpha={alpha:g}"


def run_overrides(suite: Suite, extra: list[str], method: str, r: int, seed: int) -> list[str]:
    t = suite.tower
    return [
        *suite.overrides,
        *suite.method_overrides.get(method, ()),
        *extra,
        f"adapters.{t}.method={method}",
        f"adapters.{t}.r={r}",
        alpha_override(t, method, suite.alpha_ratio * r),
        f"train.seed={seed}",
    ]


def plan(suite: Suite, extra: list[str], methods: list[str], ranks: list[int], seeds: list[int]):
    """[(method, r, seed, config)] seed-major; every config is resolved before anything trains."""
    t = suite.tower
    for key in ("train.seed", f"adapters.{t}.method", f"adapters.{t}.r", f"adapters.{t}.alpha"):
        if any(o.startswith(f"{key}=") for o in extra):
            raise ConfigError(
                f"{key} is set by the sweep (--seeds/--methods/--ranks, alpha = {suite.alpha_ratio:g} r); "
                "drop the override"
            )
    return [
        (m, r, s, load_config(suite.recipe, run_overrides(suite, extra, m, r, s)))
        for s in seeds
        for r in ranks
        for m in methods
    ]


def setting(name: str, extra: list[str]) -> dict:
    """What must match for a JSON file to be resumed (as it reads back from JSON)."""
    return json.loads(json.dumps({"suite": name, **asdict(SUITES[name]), "overrides_extra": extra}))


def load_done(path: Path, expected: dict) -> list[dict]:
    """Rows already in ``path`` if it was written with the same setting; [] if it does not exist."""
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); pass another --out") from None
    if saved.get("setting") != expected:
        raise ConfigError(
            f"{path} holds a sweep with another setting; pass another --out (nothing is overwritten)"
        )
    return list(saved.get("rows") or [])


def one_run(cfg, run_dir: Path) -> dict:
    """Train + evaluate one config; the row's numbers."""
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes import finetune
    from vlmtune.train.evaluate import headline

    t0 = time.perf_counter()
    summary = finetune(cfg, run_dir, build_pipeline, quiet=True)
    tuned = summary.get("tuned") or {}
    metric, value = headline(tuned)
    train = summary.get("train") or {}
    return {
        "metric": metric,
        "value": value,
        "per_answer_type": tuned.get("per_answer_type"),
        "final_loss": train.get("loss"),
        "steps": train.get("step"),
        "eval_count": tuned.get("count"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_sweep(
    name: str,
    methods: list[str],
    ranks: list[int],
    seeds: list[int],
    extra: list[str],
    out: Path,
    say: Callable[[str], None] = print,
    runner: Callable[[object, Path], dict] | None = None,
) -> tuple[list[dict], dict]:
    """Rows of every (method, r, seed) run, written to ``out/bench_<name>.json`` after each run.
    ``runner(config, run_dir) -> row numbers`` defaults to ``one_run``."""
    runner = runner or one_run
    suite = SUITES[name]
    jobs = plan(suite, extra, methods, ranks, seeds)
    info = setting(name, extra)
    path = out / f"bench_{name}.json"
    rows = load_done(path, info)
    done = {(r["method"], r["r"], r["seed"]) for r in rows}
    if done:
        say(f"resuming {path}: {len(done)} of {len(jobs)} runs already there")
    for i, (method, r, seed, cfg) in enumerate(jobs, 1):
        if (method, r, seed) in done:
            continue
        row = {"suite": name, "method": method, "r": r, "seed": seed}
        row.update(runner(cfg, out / "runs" / f"{method}-r{r}-s{seed}"))
        rows.append(row)
        atomic_write_json({"setting": info, "rows": rows}, path)
        say(
            f"  [{i}/{len(jobs)}] {method:<6} r={r:<3} seed {seed}: {row['value']:.2f}  ({row['seconds']:.0f}s)"
        )
    return rows, info


def report(rows: list[dict], reference: str, title: str, metric: str = "accuracy") -> tuple[list[dict], str]:
    """(summary, printable text): the cell table with t intervals and paired differences."""
    from vlmtune.analysis.compare import format_summary, summarize

    summary = summarize(rows, reference)
    text = f"{title}\n{format_summary(summary, reference, metric)}"
    if not any(r["method"] == reference for r in rows):
        text += f"\n(no paired differences: the reference method {reference!r} did not run)"
    return summary, text


def report_vit(rows: list[dict], args, total_seconds: float) -> None:
    """``vlmtune bench vit``: per-method mean, t interval, paired difference vs ``--reference``."""
    from vlmtune.analysis.compare import as_json

    cells = [{"method": r["method"], "r": None, "seed": r["seed"], "value": r["accuracy"]} for r in rows]
    summary, text = report(cells, args.reference, "\nper method over seeds (top-1 %)")
    print(text)
    print(f"total {total_seconds:.1f}s")
    if args.json:
        out = {"overrides": list(args.overrides), "rows": rows, "summary": as_json(summary)}
        atomic_write_json(out, args.json)


def main_sweep(args, methods: list[str]) -> int:
    """``vlmtune bench llava|vlbart``: run (or resume) the sweep, print the table, write JSON/MD/PNG."""
    from vlmtune.adapters.registry import known_methods
    from vlmtune.analysis.compare import as_json, plot_vs_rank

    unknown = [m for m in methods if m not in known_methods()]
    if unknown:
        raise ConfigError(
            f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(known_methods())}"
        )
    if not args.ranks or min(args.ranks) < 1:
        raise ConfigError(f"--ranks must be positive integers, got {args.ranks}")
    name, out = args.suite, Path(args.out or f"runs/bench-{args.suite}")
    print(f"{name} sweep: {SUITES[name].note}")
    if args.overrides:  # the suite's description above is of its defaults
        print(f"your settings on top of it: {' '.join(args.overrides)}")
    print(f"{len(methods)} methods x {len(args.ranks)} ranks x {args.seeds} seeds -> {out}")
    t0 = time.perf_counter()
    rows, info = run_sweep(
        name, methods, list(args.ranks), list(range(args.seeds)), list(args.overrides), out
    )
    wall = time.perf_counter() - t0
    metric = next((r["metric"] for r in rows if r.get("metric")), "accuracy")
    title = f"\n{name}: {metric} per (method, r) over seeds {sorted({r['seed'] for r in rows})}"
    summary, text = report(rows, args.reference, title, metric)
    print(text)
    print(f"wall {wall:.0f}s for the runs of this invocation")
    base = out / f"bench_{name}"
    atomic_write_json({"setting": info, "rows": rows, "summary": as_json(summary)}, base.with_suffix(".json"))
    base.with_suffix(".md").write_text(text.strip() + "\n")
    plot_title = SUITES[name].title + (f"\nwith {' '.join(args.overrides)}" if args.overrides else "")
    png = plot_vs_rank(summary, base.with_suffix(".png"), plot_title, metric)
    print(f"wrote {base.with_suffix('.json')}, {base.with_suffix('.md')} and {png}")
    return 0
