"""ScienceQA (Lu et al., NeurIPS 2022) multiple-choice accuracy with LLaVA-1.5's option-letter parser.

Breakdown as in the paper: by subject (NAT / SOC / LAN), context (IMG = has an image, NO = none) and
grade (G1-6, G7-12). An unparseable answer counts as wrong (LLaVA picks a random letter instead).
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlmtune.eval.errors import EvalError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_THE_ANSWER_IS = re.compile(r"[Tt]he answer is \(?([A-Z])\)?")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def parse_option(text: str, num_choices: int) -> str:
    """Option letter from a generation: ``"B"``, ``"B. text"``, ``"(B)"``, ``"The answer is B."``; else ``""``."""
    text = str(text).strip()
    options = LETTERS[:num_choices]
    if len(text) == 1 and text in options:
        return text
    m = re.match(r"^\(?([A-Z])[.):](\s|$)", text)
    if m and m.group(1) in options:
        return m.group(1)
    m = _THE_ANSWER_IS.search(text)
    if m and m.group(1) in options:
        return m.group(1)
    return ""


def _grade_group(grade: str) -> str:
    m = re.search(r"\d+", str(grade))
    if not m:
        return ""
    return "G1-6" if int(m.group(0)) <= 6 else "G7-12"


def score_scienceqa(rows: list[dict]) -> dict:
    """``rows``: dicts with ``prediction`` (a letter or raw text), ``answer`` (letter), ``choices``, ``meta``."""
    if not rows:
        raise EvalError("no predictions to score")
    groups: dict[str, list[float]] = defaultdict(list)
    hits = []
    for row in rows:
        pred = parse_option(row["prediction"], len(row.get("choices") or LETTERS))
        row["prediction"] = pred
        hit = float(pred == str(row["answer"]).strip())
        row["correct"] = bool(hit)
        hits.append(hit)
        meta = row.get("meta") or {}
        keys = [SUBJECTS.get(meta.get("subject", ""), ""), "IMG" if row.get("has_image") else "NO"]
        keys.append(_grade_group(meta.get("grade", "")))
        for k in keys:
            if k:
                groups[k].append(hit)

    def pct(xs: list[float]) -> float:
        return round(100.0 * sum(xs) / len(xs), 2)

    order = ["NAT", "SOC", "LAN", "IMG", "NO", "G1-6", "G7-12"]
    return {
        "accuracy": pct(hits),
        "unparsed": sum(not r["prediction"] for r in rows),
        "per_group": {k: pct(groups[k]) for k in order if groups.get(k)},
        "count": len(hits),
    }
