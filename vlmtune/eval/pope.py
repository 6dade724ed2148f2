"""POPE (Li et al., EMNLP 2023): object-hallucination yes/no probing; "yes" is the positive class.

accuracy = (TP + TN) / N, precision = TP / (TP + FP), recall = TP / (TP + FN),
F1 = 2 P R / (P + R), yes-ratio = #predicted yes / N; reported overall and per category
(adversarial / popular / random) as the POPE paper and LLaVA-1.5 do.
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.errors import EvalError

_NEGATIONS = frozenset({"no", "not"})


def parse_yes_no(text: str) -> str:
    """LLaVA-1.5's POPE parser: first sentence, then ``no`` if it contains "no"/"not", else ``yes``."""
    text = str(text).strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", " ").lower().split()
    return "no" if any(w in _NEGATIONS for w in words) else "yes"


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    """Percent metrics of yes/no ``preds`` against yes/no ``labels``."""
    tp = sum(p == "yes" and y == "yes" for p, y in zip(preds, labels))
    tn = sum(p == "no" and y == "no" for p, y in zip(preds, labels))
    fp = sum(p == "yes" and y == "no" for p, y in zip(preds, labels))
    fn = sum(p == "no" and y == "yes" for p, y in zip(preds, labels))
    n = len(preds)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": round(100.0 * (tp + tn) / n, 2),
        "precision": round(100.0 * precision, 2),
        "recall": round(100.0 * recall, 2),
        "f1": round(100.0 * f1, 2),
        "yes_ratio": round(100.0 * (tp + fp) / n, 2),
        "count": n,
    }


def score_pope(rows: list[dict]) -> dict:
    """``rows``: dicts with ``prediction`` (raw or parsed), ``answer`` (yes/no), optional ``category``."""
    if not rows:
        raise EvalError("no predictions to score")
    for row in rows:
        label = str(row["answer"]).strip().lower()
        if label not in ("yes", "no"):
            raise EvalError(f"POPE record {row.get('id')}: answer must be yes or no, got {row['answer']!r}")
        row["answer"] = label
        row["prediction"] = parse_yes_no(row["prediction"])
        row["correct"] = row["prediction"] == label
    out = binary_metrics([r["prediction"] for r in rows], [r["answer"] for r in rows])
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("category"):
            by_cat[row["category"]].append(row)
    if by_cat:
        out["per_category"] = {
            c: binary_metrics([r["prediction"] for r in rs], [r["answer"] for r in rs])
            for c, rs in sorted(by_cat.items())
        }
    return out
