"""GQA accuracy (Hudson & Manning, CVPR 2019): exact match of the normalised answer, as LLaVA-1.5 scores
testdev-balanced (lower-case, trailing period removed), with a breakdown by structural / semantic type."""

from __future__ import annotations

import re
from collections import defaultdict

from vlmtune.eval.errors import EvalError

_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip a trailing period: ``"Yes."`` -> ``"yes"``."""
    return _SPACES.sub(" ", str(text)).strip().rstrip(".").strip().lower()


def score_gqa(rows: list[dict]) -> dict:
    """``rows``: dicts with ``prediction``, ``answer`` and optional ``types`` (``{"structural": ...}``)."""
    if not rows:
        raise EvalError("no predictions to score")
    groups: dict[str, dict[str, list[float]]] = {
        "structural": defaultdict(list),
        "semantic": defaultdict(list),
    }
    hits = []
    for row in rows:
        hit = float(normalize_answer(row["prediction"]) == normalize_answer(row["answer"]))
        row["correct"] = bool(hit)
        hits.append(hit)
        for key, per_type in groups.items():
            value = (row.get("types") or {}).get(key)
            if value:
                per_type[value].append(hit)

    def pct(xs: list[float]) -> float:
        return round(100.0 * sum(xs) / len(xs), 2)

    out: dict = {"accuracy": pct(hits), "count": len(hits)}
    for key, per_type in groups.items():
        if per_type:
            out[f"per_{key}_type"] = {k: pct(v) for k, v in sorted(per_type.items())}
    return out
