"""TextVQA (Singh et al., CVPR 2019) accuracy as LLaVA-1.5's ``llava/eval/eval_textvqa.py`` computes it.

LLaVA scores with ``m4c_evaluator.TextVQAAccuracyEvaluator``: the prediction *and all 10 human answers*
go through the EvalAI answer processor (:func:`vlmtune.eval.vqa.evalai_answer`: lower-case, "," and "?"
deleted, "'s" -> " 's", then the official VQA punctuation / number-word / article / contraction steps),
and the score is the VQA leave-one-out ``min(1, matches / 3)`` average; ``accuracy`` is
``100 * mean`` (LLaVA prints it with 2 decimals). LLaVA-1.5 prompts with the OCR tokens of the
TextVQA release ("Reference OCR token: ...", ``meta.ocr_tokens``, kept by ``prep_textvqa.py --ocr``).

``--predictions`` reads vlmtune's predictions or a LLaVA answers file (``question_id`` there is the
TextVQA *image* id; as eval_textvqa.py, the record is found by image id and the lower-cased question
taken back out of ``prompt``). A question asked twice on one image gets the two answers in file order;
eval_textvqa.py's dict keeps the last annotation of the pair and scores both answers against its human
answers, so the two numbers differ when the pair's human answers do. No lenient variant.
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlmtune.eval.benchmarks import SHORT_ANSWER, Benchmark, question_id, register, stripped
from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring, evalai_answer, leave_one_out, percent

OCR_PREFIX = "Reference OCR token: "


def textvqa_prompt(record: dict) -> str:
    """``question`` [``\\nReference OCR token: a, b``] ``\\nAnswer the question using a single word or phrase.``"""
    tokens = (record.get("meta") or {}).get("ocr_tokens") or []
    lines = [record["question"]] + ([OCR_PREFIX + ", ".join(tokens)] if tokens else []) + [SHORT_ANSWER]
    return "\n".join(lines)


def question_from_prompt(prompt: str) -> str:
    """eval_textvqa.py ``prompt_processor``: the lower-cased question inside a LLaVA TextVQA prompt."""
    if prompt.startswith("OCR tokens: "):
        m = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if m is None:
            raise EvalError(f"TextVQA prompt starts with 'OCR tokens: ' but has no question: {prompt[:60]!r}")
        return m.group(1).lower()
    lines = prompt.split("\n")
    if OCR_PREFIX in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise EvalError(f"TextVQA prompt in an unknown layout ({len(lines)} lines): {prompt[:60]!r}")


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """m4c ``TextVQAAccuracyEvaluator`` score of one prediction (in [0, 1])."""
    if not answers:
        raise EvalError("TextVQA accuracy needs the human answers")
    return leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])


def score_textvqa(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``prediction`` and ``answers``; sets ``row["accuracy"]``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    accs = []
    for row in rows:
        row["accuracy"] = textvqa_accuracy(row["prediction"], row["answers"])
        accs.append(row["accuracy"])
    return {"accuracy": percent(accs), "count": len(accs), "scoring": scoring}


def adapt_llava_answers(predictions: list[dict], records: list[dict]) -> list[dict]:
    """LLaVA TextVQA answers (``question_id`` = image id, ``prompt``, ``text``) -> ``{id, prediction}``.

    Keyed by (image id, lower-cased question) as eval_textvqa.py; a question asked twice on one image
    (two records with one key) gets the key's answers in file order, one per record."""
    if not predictions or "prompt" not in predictions[0]:
        return predictions
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in records:
        by_key[(str((r.get("meta") or {}).get("image_id")), r["question"].lower())].append(r["id"])
    used: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for i, p in enumerate(predictions):
        key = (str(p.get("question_id")), question_from_prompt(str(p.get("prompt", ""))))
        ids = by_key.get(key)
        if not ids:
            raise EvalError(
                f"answers entry {i + 1}: no TextVQA record for image {key[0]!r} and question {key[1]!r}"
            )
        if used[key] == len(ids):
            raise EvalError(
                f"answers entry {i + 1}: answer {used[key] + 1} for image {key[0]!r} and question {key[1]!r}, "
                f"which the data asks {len(ids)} time(s); remove the repeated answer"
            )
        out.append({"id": ids[used[key]], "prediction": p.get("text", "")})
        used[key] += 1
    return out


def _refs(record: dict) -> dict:
    return {"question_id": question_id(record), "answers": [str(a) for a in record.get("answers") or []]}


register(
    Benchmark(
        "textvqa", "vqa", textvqa_prompt, stripped, _refs, score_textvqa, ("answers",),
        description="TextVQA accuracy (LLaVA eval_textvqa.py / m4c evaluator), OCR-token prompt",
        adapt_predictions=adapt_llava_answers,
    ),
    overwrite=True,
)  # fmt: skip
