"""Evaluation hook of ``vlmtune train``: generate with the pipeline and score with vlmtune.eval."""

from __future__ import annotations

from pathlib import Path

from vlmtune.core.config import EvalConfig


def evaluate(
    pipeline,
    records: list[dict],
    cfg: EvalConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    records_total: int | None = None,
) -> dict:
    """Metrics dict of ``cfg.benchmark`` on ``records`` (e.g. ``{"benchmark", "accuracy", "count"}``, and
    ``records_total``: the eval data's records before ``data.max_eval_samples``, when given); writes
    predictions and metrics under ``out_dir`` when given."""
    from vlmtune.eval.runner import run_benchmark

    return run_benchmark(
        pipeline,
        cfg.benchmark,
        records,
        out_dir=out_dir,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        num_beams=cfg.num_beams,
        progress=progress,
        records_total=records_total,
    )


def headline(metrics: dict) -> tuple[str, float | None]:
    """The main number of a metrics dict: accuracy if present, else the first float."""
    for key in ("accuracy", "overall", "f1", "CIDEr"):
        if isinstance(metrics.get(key), int | float):
            return key, float(metrics[key])
    for key, value in metrics.items():
        if isinstance(value, float):
            return key, value
    return "", None


SECONDARY = ("CIDEr", "nlvr_accuracy", "mIoU", "exact_match", "loss", "perplexity")


def describe(metrics: dict) -> str:
    """One line for the terminal: the headline metric, its per-answer-type split and any secondary
    metric (e.g. ``accuracy 86.20 (number 99.0, other 80.1, yes/no 88.0)  CIDEr 2.31``)."""
    key, value = headline(metrics)
    if value is None:
        return "no metric"
    text = f"{key} {value:.2f}"
    split = metrics.get("per_answer_type") or {}
    if split:
        text += " (" + ", ".join(f"{k} {v:.1f}" for k, v in sorted(split.items())) + ")"
    for extra in SECONDARY:
        if extra != key and isinstance(metrics.get(extra), int | float):
            text += f"  {extra} {metrics[extra]:.3f}"
    return text
