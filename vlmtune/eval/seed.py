"""SEED-Bench (Li et al., CVPR 2024) image subset, as LLaVA-1.5's ``scripts/convert_seed_for_submission.py``.

Prompt: question, ``A. choice`` lines, "Answer with the option's letter from the given choices
directly.". A prediction is right iff the (stripped) answer text *equals* the gold letter: "A" scores,
"A." and "A. cat" do not (LLaVA's script; ``scoring="lenient"``, off by default, reads the letter with
the ScienceQA lenient rules first). Accuracy per question type (by name) and over all image questions;
the upload file (``submission.jsonl``) is ``{"question_id", "prediction"}`` per line.
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.benchmarks import MCQ_LETTER, Benchmark, register, stripped
from vlmtune.eval.errors import EvalError
from vlmtune.eval.scienceqa import LETTERS, parse_option
from vlmtune.eval.vqa import check_scoring, percent


def seed_prompt(record: dict) -> str:
    lines = [record["question"]] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(record["choices"])]
    return "\n".join(lines + [MCQ_LETTER])


def score_seed(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``prediction``, ``answer`` (letter), ``question_type``, ``choices``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    per_type: dict[str, list[float]] = defaultdict(list)
    hits = []
    for row in rows:
        pred = str(row["prediction"]).strip()
        if scoring == "lenient":
            pred = parse_option(pred, len(row.get("choices") or LETTERS), "lenient") or pred
        row["correct"] = pred == str(row["answer"])
        hits.append(float(row["correct"]))
        per_type[str(row.get("question_type") or "")].append(float(row["correct"]))
    return {
        "accuracy": percent(hits),
        "per_question_type": {k: percent(v) for k, v in sorted(per_type.items()) if k},
        "count": len(hits),
        "scoring": scoring,
    }


def seed_submission(rows: list[dict]) -> list[dict]:
    return [{"question_id": r["question_id"], "prediction": r["prediction"]} for r in rows]


def _refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "question_id": meta.get("question_id", record["id"]),
        "answer": record.get("answer"),
        "choices": record.get("choices"),
        "question_type": meta.get("question_type", ""),
    }


register(
    Benchmark(
        "seed-bench", "mcq", seed_prompt, stripped, _refs, score_seed, ("answer",),
        submission=seed_submission, submission_file="submission.jsonl",
        description="SEED-Bench image accuracy per question type (LLaVA convert_seed_for_submission.py)",
    ),
    overwrite=True,
)  # fmt: skip
