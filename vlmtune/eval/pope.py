"""POPE (Li et al., EMNLP 2023): object-hallucination yes/no probing; "yes" is the positive class.

accuracy = (TP + TN) / N, precision = TP / (TP + FP), recall = TP / (TP + FN),
F1 = 2 P R / (P + R), yes-ratio = #predicted yes / N; reported overall and per category
(adversarial / popular / random) as the POPE paper and LLaVA-1.5 do; LLaVA-1.5's table reports the F1
averaged over the three categories (``f1_mean_over_categories``).

``scoring="official"`` parses answers exactly as LLaVA's ``llava/eval/eval_pope.py`` (after the answer
file's ``.strip()``): keep the text before the first ``.``, delete commas, split on single spaces (not on
newlines or tabs) and answer ``no`` iff one of the words is exactly ``No``, ``not`` or ``no`` (so "NO",
"Not at all", "Nope" and "no\nthere is none" are ``yes``). ``scoring="lenient"`` (off by default) also
lower-cases and splits on any whitespace.
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring

_NEGATIONS = frozenset({"No", "not", "no"})  # case-sensitive, as in eval_pope.py


def parse_yes_no(text: str, scoring: str = "official") -> str:
    """LLaVA-1.5's POPE parser: first sentence, then ``no`` if a word is "No"/"not"/"no", else ``yes``."""
    text = str(text).strip()
    if "." in text:
        text = text.split(".")[0]
    if scoring == "lenient":
        words = text.replace(",", " ").lower().split()
    else:
        words = text.replace(",", "").split(" ")
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


def score_pope(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``raw`` (the generated text) or ``prediction``, ``answer`` (yes/no), optional
    ``category``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    for row in rows:
        label = str(row["answer"]).strip().lower()
        if label not in ("yes", "no"):
            raise EvalError(f"POPE record {row.get('id')}: answer must be yes or no, got {row['answer']!r}")
        row["answer"] = label
        row["prediction"] = parse_yes_no(row.get("raw", row["prediction"]), scoring)
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
        f1s = [m["f1"] for m in out["per_category"].values()]
        out["f1_mean_over_categories"] = round(sum(f1s) / len(f1s), 2)
    out["scoring"] = scoring
    return out
