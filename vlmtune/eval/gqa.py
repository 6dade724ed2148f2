"""GQA accuracy (Hudson & Manning, CVPR 2019) as LLaVA-1.5 reports testdev-balanced.

``scoring="official"``: LLaVA's ``scripts/convert_gqa_for_eval.py`` turns an answer into
``text.rstrip('.').lower()`` (after the answer file's ``.strip()``; a multi-line answer stays whole and
whitespace is not collapsed), then the official GQA ``eval.py`` counts ``prediction == answer`` over the
balanced questions (``isBalanced``; all of testdev-balanced), reporting ``accuracy``, ``binary``
(structural type not ``query``) and ``open`` (``query``) and accuracy per structural / semantic type.
Rows left out as unbalanced are counted in ``unbalanced_excluded`` and said in ``note``.
Validity, plausibility, consistency and distribution need the choices / scene-graph files and are not
computed. ``scoring="lenient"`` (off by default) keeps the first line and collapses whitespace first.
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring, percent

_SPACES = re.compile(r"\s+")


def normalize_answer(text: str, scoring: str = "official") -> str:
    """``"Yes."`` -> ``"yes"``; official: ``text.strip().rstrip('.').lower()``."""
    text = str(text).strip()
    if scoring == "lenient":
        lines = text.splitlines()
        text = _SPACES.sub(" ", lines[0] if lines else "").strip().rstrip(".").strip()
    return text.rstrip(".").lower()


def score_gqa(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``raw`` or ``prediction``, ``answer``, optional ``types``
    (``{"structural": ..., "semantic": ...}``) and ``is_balanced`` (default true)."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    groups: dict[str, dict[str, list[float]]] = {
        "structural": defaultdict(list),
        "semantic": defaultdict(list),
    }
    hits: list[float] = []
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        row["prediction"] = normalize_answer(row.get("raw", row["prediction"]), scoring)
        hit = float(row["prediction"] == str(row["answer"]))  # the gold answer is compared as released
        row["correct"] = bool(hit)
        if row.get("is_balanced") is False:
            continue
        hits.append(hit)
        types = row.get("types") or {}
        for key, per_type in groups.items():
            if types.get(key):
                per_type[types[key]].append(hit)
        if types.get("structural"):
            row["answer_type"] = "open" if types["structural"] == "query" else "binary"
            by_answer_type[row["answer_type"]].append(hit)
    if not hits:
        raise EvalError("no balanced GQA question to score (every row has is_balanced false)")
    excluded = len(rows) - len(hits)
    out: dict = {"accuracy": percent(hits), "count": len(hits), "unbalanced_excluded": excluded}
    for name in ("binary", "open"):
        if by_answer_type.get(name):
            out[name] = percent(by_answer_type[name])
    for key, per_type in groups.items():
        if per_type:
            out[f"per_{key}_type"] = {k: percent(v) for k, v in sorted(per_type.items())}
    out["scoring"] = scoring
    if excluded:
        out["note"] = f"{excluded} unbalanced question(s) left out (eval.py scores balanced questions only)"
    return out
