"""ScienceQA (Lu et al., NeurIPS 2022) multiple-choice accuracy as LLaVA-1.5's ``llava/eval/eval_science_qa.py``.

``scoring="official"`` extracts the letter from the (stripped) answer with LLaVA-1.5's rules, in order:
1. the whole text is one of the option letters ``A``-``E`` -> that letter (membership in the list of
   letters: "AB" or "BCD" is no letter);
2. the text is at least 3 characters, starts with an option letter followed by ``". "`` -> that letter
   ("B. duck" yes; "B." and "B)" no);
3. the regex ``The answer is ([A-Z]).`` (case-sensitive; the ``.`` matches any character, so a letter
   followed by at least one more character) has exactly one match -> that letter;
4. else ``FAILED``. A letter beyond the problem's choices is also a failure.
A failure is wrong: LLaVA-1.5's ``get_pred_idx`` returns -1 for it (the ``random.choice`` line after that
``return`` never runs; only the LLaVA v1 script, haotian-liu/LLaVA@8959d5c, guessed at random, with the
"The answer is" rule alone). vlmtune reports the failures as ``unparsed``. ``IMG`` is the accuracy on
problems with an image (LLaVA's "IMG-Accuracy"). The paper's breakdown by subject (NAT / SOC / LAN),
context (IMG / NO) and grade (G1-6 / G7-12) is reported too.

``scoring="lenient"`` (off by default) also accepts "(B)", "B)", "B:", "B." and "The answer is (B)".
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring, percent

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py --options default (a list)
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
_LENIENT_ANSWER_IS = re.compile(r"[Tt]he answer is \(?([A-Z])\)?")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


def _official_letter(text: str) -> str:
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _THE_ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else ""


def _lenient_letter(text: str) -> str:
    if len(text) == 1 and text in LETTERS:
        return text
    m = re.match(r"^\(?([A-Z])[.):](\s|$)", text)
    if m:
        return m.group(1)
    m = _LENIENT_ANSWER_IS.search(text)
    return m.group(1) if m else ""


def parse_option(text: str, num_choices: int, scoring: str = "official") -> str:
    """Option letter of a generation, or ``""`` when it cannot be parsed (LLaVA's ``FAILED``)."""
    text = str(text).strip()
    letter = _lenient_letter(text) if scoring == "lenient" else _official_letter(text)
    return letter if letter and letter in LETTERS[:num_choices] else ""


def _grade_group(grade: str) -> str:
    m = re.search(r"\d+", str(grade))
    if not m:
        return ""
    return "G1-6" if int(m.group(0)) <= 6 else "G7-12"


def score_scienceqa(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``raw`` or ``prediction``, ``answer`` (letter), ``choices``, ``has_image``, ``meta``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    groups: dict[str, list[float]] = defaultdict(list)
    hits = []
    for row in rows:
        n_choices = len(row.get("choices") or LETTERS)
        pred = parse_option(row.get("raw", row["prediction"]), n_choices, scoring)
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

    order = ["NAT", "SOC", "LAN", "IMG", "NO", "G1-6", "G7-12"]
    out = {
        "accuracy": percent(hits),
        "unparsed": sum(not r["prediction"] for r in rows),
        "per_group": {k: percent(groups[k]) for k in order if groups.get(k)},
        "count": len(hits),
        "scoring": scoring,
    }
    if groups.get("IMG"):
        out["img_accuracy"] = percent(groups["IMG"])
    return out
