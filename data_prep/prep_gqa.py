"""GQA questions JSON (e.g. testdev_balanced_questions.json) -> vlmtune JSONL (task ``vqa``, one answer).

python data_prep/prep_gqa.py testdev_balanced_questions.json --images /data/gqa/images --out gqa.jsonl
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run


def convert(questions_path, images: str, out: Path, report: Report) -> None:
    data = read_json(questions_path, "GQA questions")
    if not isinstance(data, dict):
        raise PrepError(f"{questions_path}: a GQA questions file is a JSON object keyed by question id")
    for qid, q in data.items():
        if not isinstance(q, dict) or not q.get("imageId") or not str(q.get("question", "")).strip():
            report.skip("question without imageId/question", qid)
            continue
        if not isinstance(q.get("answer"), str) or not q["answer"].strip():
            report.skip("no 'answer' (test/challenge split?)", qid)
            continue
        types = q.get("types") if isinstance(q.get("types"), dict) else {}
        report.keep(
            {
                "id": f"gqa-{qid}",
                "task": "vqa",
                "image": image_path(images, f"{q['imageId']}.jpg", out),
                "question": q["question"].strip(),
                "answer": q["answer"].strip(),
                "meta": {
                    "question_id": str(qid),
                    "image_id": str(q["imageId"]),
                    "full_answer": q.get("fullAnswer", ""),
                    "types": {k: types[k] for k in ("structural", "semantic", "detailed") if k in types},
                    "is_balanced": bool(q.get("isBalanced", False)),
                },
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("questions", help="GQA questions JSON ({qid: {imageId, question, answer, types, ...}})")
    p.add_argument("--images", default="images", help="folder of the GQA images (default: images)")
    args = p.parse_args(argv)
    report = Report("gqa")
    convert(args.questions, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
