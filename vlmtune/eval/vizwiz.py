"""VizWiz-VQA (Gurari et al., CVPR 2018) as LLaVA-1.5 submits it and the VizWiz evaluation server scores it.

LLaVA-1.5 prompts ``question\\nWhen the provided information is insufficient, respond with
'Unanswerable'.\\nAnswer the question using a single word or phrase.`` and uploads
(``scripts/convert_vizwiz_for_submission.py``) ``[{"image": "VizWiz_test_00000000.jpg", "answer":
EvalAI-processed answer}]`` (``submission.json`` here). The server's ``VQAEval_Vizwiz`` (VizWiz-VQA
evaluation code) then normalises the uploaded answer like ``vqaEval.py`` (punctuation, number words,
articles, contractions) and, unlike VQAv2, compares it with the 10 human answers *as released*, with no
processing at all; accuracy is the VQA leave-one-out ``min(1, matches / 3)`` average, overall and per
answer type (``yes/no``, ``number``, ``other``, ``unanswerable``), ``round(100 * mean, 2)``.
The server's unanswerability average precision / F1 need a per-question answerable score that the
submission format does not carry; they are not computed.

``scoring="lenient"`` (off by default) normalises the human answers like the prediction.
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.benchmarks import SHORT_ANSWER, Benchmark, register, stripped
from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring, evalai_answer, leave_one_out, normalize_answer, percent

UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def vizwiz_prompt(record: dict) -> str:
    return f"{record['question']}\n{UNANSWERABLE}\n{SHORT_ANSWER}"


def vizwiz_accuracy(prediction: str, answers: list[str], scoring: str = "official") -> float:
    """Server accuracy of a raw generated answer (EvalAI-processed as in the upload, then normalised)."""
    if not answers:
        raise EvalError("VizWiz accuracy needs the human answers")
    pred = normalize_answer(evalai_answer(prediction))
    refs = [normalize_answer(a) for a in answers] if scoring == "lenient" else [str(a) for a in answers]
    return leave_one_out(pred, refs)


def score_vizwiz(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``prediction``, ``answers``, optional ``answer_type``; sets ``row["accuracy"]``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    accs: list[float] = []
    per_type: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        row["accuracy"] = vizwiz_accuracy(row["prediction"], row["answers"], scoring)
        accs.append(row["accuracy"])
        if row.get("answer_type"):
            per_type[row["answer_type"]].append(row["accuracy"])
    return {
        "accuracy": percent(accs),
        "per_answer_type": {k: percent(v) for k, v in sorted(per_type.items())},
        "count": len(accs),
        "scoring": scoring,
    }


def vizwiz_submission(rows: list[dict]) -> list[dict]:
    return [{"image": r["image_name"], "answer": evalai_answer(r["prediction"])} for r in rows]


def _refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "question_id": meta.get("question_id", record["id"]),
        "image_name": meta.get("image_name", record["id"]),
        "answers": [str(a) for a in record.get("answers") or []],
        "answer_type": record.get("answer_type") or meta.get("answer_type", ""),
    }


register(
    Benchmark(
        "vizwiz", "vqa", vizwiz_prompt, stripped, _refs, score_vizwiz, ("answers",),
        submission=vizwiz_submission,
        description="VizWiz-VQA accuracy per answer type (server algorithm) + the LLaVA upload file",
    ),
    overwrite=True,
)  # fmt: skip
