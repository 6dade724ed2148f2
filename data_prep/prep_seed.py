"""SEED-Bench JSON (SEED-Bench.json) -> vlmtune JSONL of its image questions (task ``mcq``, 4 choices).

    python data_prep/prep_seed.py SEED-Bench.json --images /data/seed/SEED-Bench-image --out seed_img.jsonl

Video questions (``data_type`` != "image") are skipped with a count; the question-type name comes from
the file's ``question_type`` map.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, integer, read_json, run

CHOICE_KEYS = ("choice_a", "choice_b", "choice_c", "choice_d")
LETTERS = ("A", "B", "C", "D")  # a list: "" and "AB" are substrings of "ABCD", not letters


def convert(path, images: str, out: Path, report: Report) -> None:
    data = read_json(path, "SEED-Bench")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise PrepError(f"{path}: not a SEED-Bench file (no 'questions' list)")
    type_names = {
        integer(v, path, "question_type", k): k for k, v in (data.get("question_type") or {}).items()
    }
    for i, q in enumerate(data["questions"]):
        where = f"questions[{i}]"
        if not isinstance(q, dict) or any(
            k not in q for k in ("question_id", "question", "answer", "data_id")
        ):
            report.skip("entry without question_id/question/answer/data_id", where)
            continue
        if q.get("data_type", "image") != "image":
            report.skip("video question (image subset only)", where)
            continue
        if any(k not in q for k in CHOICE_KEYS) or q["answer"] not in LETTERS:
            report.skip("choices or answer letter missing", where)
            continue
        type_id = integer(q.get("question_type_id", 0), path, where, "question_type_id")
        report.keep(
            {
                "id": f"seed-{q['question_id']}",
                "task": "mcq",
                "image": image_path(images, str(q["data_id"]), out),
                "question": str(q["question"]).strip(),
                "choices": [str(q[k]) for k in CHOICE_KEYS],
                "answer": q["answer"],
                "meta": {
                    "question_id": q["question_id"],
                    "question_type_id": type_id,
                    "question_type": type_names.get(type_id, str(type_id)),
                },
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("seed_json", help="SEED-Bench.json ({'questions': [...], 'question_type': {name: id}})")
    p.add_argument("--images", default="SEED-Bench-image", help="folder of the SEED-Bench images")
    args = p.parse_args(argv)
    report = Report("seed-bench")
    convert(args.seed_json, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
