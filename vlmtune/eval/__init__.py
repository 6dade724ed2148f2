"""Evaluation: per-benchmark metrics, the benchmark registry, and the generation + scoring runner."""

from vlmtune.eval.benchmarks import BENCHMARKS, Benchmark, get_benchmark, register
from vlmtune.eval.errors import EvalError
from vlmtune.eval.runner import run_benchmark, score_predictions
from vlmtune.eval.vqa import normalize_answer, vqa_accuracy

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "EvalError",
    "get_benchmark",
    "normalize_answer",
    "register",
    "run_benchmark",
    "score_predictions",
    "vqa_accuracy",
]
