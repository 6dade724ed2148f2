"""VizWiz-VQA annotations (val.json / test.json, a JSON list) -> vlmtune JSONL (task ``vqa``).

    python data_prep/prep_vizwiz.py val.json --images /data/vizwiz/val --out vizwiz_val.jsonl

val/train entries carry 10 answers, ``answer_type`` and ``answerable``; test entries (no answers)
are kept for the submission file.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run


def convert(path, images: str, out: Path, report: Report) -> None:
    data = read_json(path, "VizWiz annotations")
    if not isinstance(data, list):
        raise PrepError(f"{path}: a VizWiz annotations file is a JSON list of {{image, question, ...}}")
    for i, q in enumerate(data):
        if not isinstance(q, dict) or not q.get("image") or not str(q.get("question", "")).strip():
            report.skip("entry without image/question", f"[{i}]")
            continue
        record = {
            "id": f"vizwiz-{Path(q['image']).stem}",
            "task": "vqa",
            "image": image_path(images, q["image"], out),
            "question": str(q["question"]).strip(),
            "meta": {"image_name": q["image"], "question_id": Path(q["image"]).stem},
        }
        answers = q.get("answers")
        if isinstance(answers, list) and answers:
            record["answers"] = [str(a["answer"] if isinstance(a, dict) else a) for a in answers]
            record["answer_type"] = str(q.get("answer_type", ""))
            record["meta"]["answerable"] = q.get("answerable")
        else:
            report.note("without answers (test split: submission only)")
        report.keep(record)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "annotations", help="VizWiz JSON list ([{image, question, answers, answer_type, answerable}])"
    )
    p.add_argument("--images", default="val", help="folder of the VizWiz images")
    args = p.parse_args(argv)
    report = Report("vizwiz")
    convert(args.annotations, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
