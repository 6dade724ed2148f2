"""The run folder and its metric logs.

runs/<recipe>[-N]/
    config.yaml          resolved config (data paths as typed)
    data_paths.json      the directory train ran in and the absolute data paths (recipes.run_folder)
    metrics.jsonl        one JSON object per log step (and eval results)
    tensorboard/         the same scalars for TensorBoard
    loss_curve.png       training loss vs step
    checkpoints/         see vlmtune.train.checkpoint
    adapter/             final PEFT-format adapter
    eval.json            final evaluation (base and tuned)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from vlmtune.core.io import atomic_write_text


def next_run_dir(template: str, recipe: str) -> Path:
    """``template`` with ``{recipe}`` filled; ``-2``, ``-3``... appended if it already exists and is not
    empty. Not created here: ``core.io.claim`` creates it."""
    return next_free_dir(Path(template.format(recipe=recipe or "run")))


def next_free_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that does not exist or is empty (never one with files)."""
    path, n = base, 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def remove_if_empty(run_dir: Path) -> None:
    """Remove ``run_dir`` when nothing was written into it (a run stopped by its preflight)."""
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet: what creating it makes."""
    return next((p for p in reversed([path, *path.parents]) if not p.exists()), None)


def remove_if_unstarted(run_dir: Path, created: Path | None = None) -> None:
    """Remove ``run_dir``, which this command created, when training stopped before its first checkpoint or
    adapter (a user error in the preflight, the base evaluation or the first steps): only what the start of
    the run wrote is there (config.yaml, data_paths.json, base_model.json, logs), nothing to resume from.
    ``created`` (:func:`first_missing` before the run): the empty parent folders up to it go too."""
    import shutil

    if not run_dir.is_dir() or any((run_dir / name).exists() for name in ("checkpoints", "adapter")):
        return
    shutil.rmtree(run_dir)
    if created is None or created == run_dir or created not in run_dir.parents:
        return
    for parent in run_dir.parents:
        if not parent.is_dir() or any(parent.iterdir()):
            return
        parent.rmdir()
        if parent == created:
            return


def latest_run_dir(template: str, recipe: str) -> Path | None:
    """The newest existing ``template`` folder (``runs/x``, ``runs/x-2``, ...), for ``--resume``."""
    base = Path(template.format(recipe=recipe or "run"))
    found = [p for p in [base, *base.parent.glob(base.name + "-*")] if p.is_dir()]
    found = [p for p in found if p == base or p.name[len(base.name) + 1 :].isdigit()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def write_config(run_dir: Path, config: dict) -> Path:
    return atomic_write_text(yaml.safe_dump(config, sort_keys=False), run_dir / "config.yaml")


class MetricsLogger:
    """Appends to ``metrics.jsonl`` and mirrors numeric values to TensorBoard. ``resumed_at``: the step
    of the checkpoint a resumed run starts from; the rows and TensorBoard events logged after it (by the
    interrupted run, past its last checkpoint) are dropped, so the log stays one sequence of steps."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resumed_at: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.dropped = 0 if resumed_at is None else drop_rows_after(run_dir, resumed_at)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resumed_at is None else resumed_at + 1  # events at steps >= purge go
                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.writer = None

    def log(self, record: dict[str, Any], step: int) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def drop_rows_after(run_dir: str | Path, step: int) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) without its rows logged after ``step`` nor a line cut short by
    a kill mid-write; returns how many lines were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) < len(lines):
        atomic_write_text("".join(line + "\n" for line in kept), path)
    return len(lines) - len(kept)


def _step_of(line: str) -> int | None:
    """The ``step`` of one metrics line; None for a line that is not a whole JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row.get("step", 0) if isinstance(row, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(run_dir: str | Path) -> Path | None:
    """``loss_curve.png``: train loss (and eval accuracy if logged) against optimizer step."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out
