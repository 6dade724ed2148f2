"""A VQAv2 ``submission.json`` -> the upload file with every question of the test2015 questions file.

    python data_prep/pad_vqav2_submission.py runs/eval/vqav2/submission.json \
        v2_OpenEnded_mscoco_test2015_questions.json --out vqav2_upload.json

``vlmtune eval vqav2`` writes one entry per evaluated question (e.g. the test-dev subset). LLaVA's
``scripts/convert_vqav2_for_submission.py`` uploads one entry per question of the whole test2015 split
(``llava_vqav2_mscoco_test2015.jsonl``), in that file's order, the answer ``''`` where it has none; this
script writes the same list: ``[{"question_id": int, "answer": str}]``. An answered question that is not
in the questions file, a repeated question id and an existing ``--out`` are errors (one line, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, integer, read_json, run
from vlmtune.core.io import atomic_write_json


def read_answers(path: str) -> dict[int, str]:
    """``{question_id: answer}`` of a submission file; a repeated id is an error."""
    entries = read_json(path, "VQAv2 submission")
    if not isinstance(entries, list):
        raise PrepError(f"{path}: not a VQAv2 submission (a JSON list of {{question_id, answer}})")
    answers: dict[int, str] = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "question_id" not in e or not isinstance(e.get("answer"), str):
            raise PrepError(f"{path}: entry {i} is not {{question_id, answer}}")
        qid = integer(e["question_id"], path, f"entry {i}", "question_id")
        if qid in answers:
            raise PrepError(f"{path}: entry {i}: question_id {qid} is answered twice")
        answers[qid] = e["answer"]
    return answers


def read_question_ids(path: str) -> list[int]:
    """Question ids of an official VQA questions file, in its order."""
    data = read_json(path, "VQA questions")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise PrepError(f"{path}: not an official VQA questions file (no 'questions' list)")
    ids = []
    for i, q in enumerate(data["questions"]):
        if not isinstance(q, dict) or "question_id" not in q:
            raise PrepError(f"{path}: questions[{i}] has no question_id")
        ids.append(integer(q["question_id"], path, f"questions[{i}]", "question_id"))
    return ids


def pad(answers: dict[int, str], question_ids: list[int], questions_path: str) -> list[dict]:
    """One entry per question id, ``''`` where unanswered (convert_vqav2_for_submission.py)."""
    unknown = sorted(set(answers) - set(question_ids))
    if unknown:
        raise PrepError(
            f"{questions_path}: {len(unknown)} answered question(s) are not in it (first: {unknown[0]}); "
            "give the test2015 questions file of the split you evaluated"
        )
    return [{"question_id": q, "answer": answers.get(q, "")} for q in question_ids]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("submission", help="submission.json written by vlmtune eval vqav2")
    p.add_argument("questions", help="v2_OpenEnded_mscoco_test2015_questions.json (all of test2015)")
    p.add_argument("--out", required=True, help="upload file to write (must not exist)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise PrepError(f"{out} exists; give another --out (nothing is overwritten)")
    answers = read_answers(args.submission)
    entries = pad(answers, read_question_ids(args.questions), args.questions)
    atomic_write_json(entries, out)
    print(
        f"vqav2: wrote {len(entries)} entries to {out}: {len(answers)} answered, {len(entries) - len(answers)} ''"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
