"""VQAv2 official questions (+ annotations) JSON -> vlmtune JSONL (task ``vqa``, 10 human answers).

    python data_prep/prep_vqav2.py v2_OpenEnded_mscoco_val2014_questions.json \
        --annotations v2_mscoco_val2014_annotations.json --images /data/coco/val2014 --out vqav2_val.jsonl

Without ``--annotations`` (test-dev) records have no answers; ``vlmtune eval vqav2`` then writes only the
submission file. Images are ``COCO_<subtype>_<image_id:012d>.jpg`` (test-dev2015 images live in test2015).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, integer, read_json, run


def image_file(subtype: str, image_id: int) -> tuple[str, str]:
    """(conventional folder, file name) of a COCO image of VQA ``data_subtype``."""
    folder = "test2015" if subtype.startswith("test") else subtype
    return folder, f"COCO_{folder}_{image_id:012d}.jpg"


def convert(questions_path, annotations_path, images: str | None, out, report: Report) -> None:
    qdata = read_json(questions_path, "VQA questions")
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise PrepError(f"{questions_path}: not an official VQA questions file (no 'questions' list)")
    subtype = str(qdata.get("data_subtype") or "")
    if not subtype:
        raise PrepError(f"{questions_path}: no 'data_subtype' (e.g. val2014); needed for image file names")
    annotations: dict[int, dict] | None = None
    if annotations_path:
        adata = read_json(annotations_path, "VQA annotations")
        if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
            raise PrepError(
                f"{annotations_path}: not an official VQA annotations file (no 'annotations' list)"
            )
        annotations = {}
        for i, a in enumerate(adata["annotations"]):
            if not isinstance(a, dict) or "question_id" not in a:
                report.skip("annotation without question_id", f"annotations[{i}]")
                continue
            annotations[integer(a["question_id"], annotations_path, f"annotations[{i}]", "question_id")] = a
    seen: set[int] = set()
    for i, q in enumerate(qdata["questions"]):
        where = f"questions[{i}]"
        if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
            report.skip("question without question_id/image_id/question", where)
            continue
        qid = integer(q["question_id"], questions_path, where, "question_id")
        image_id = integer(q["image_id"], questions_path, where, "image_id")
        if qid in seen:
            report.skip("duplicate question_id", qid)
            continue
        seen.add(qid)
        if not str(q["question"]).strip():
            report.skip("empty question", qid)
            continue
        folder, name = image_file(subtype, image_id)
        record = {
            "id": f"vqav2-{qid}",
            "task": "vqa",
            "image": image_path(images if images is not None else folder, name, out),
            "question": str(q["question"]).strip(),
            "meta": {"question_id": qid, "image_id": image_id, "split": subtype},
        }
        if annotations is not None:
            a = annotations.get(qid)
            if a is None:
                report.skip("no annotation for the question", qid)
                continue
            answers = [x.get("answer") for x in a.get("answers", []) if isinstance(x, dict)]
            if not answers or any(not isinstance(x, str) or not x.strip() for x in answers):
                report.skip("missing or empty human answers", qid)
                continue
            if len(answers) != 10:
                report.note(f"questions with {len(answers)} instead of 10 human answers")
            record["answers"] = answers
            record["answer_type"] = a.get("answer_type", "")
            record["meta"]["question_type"] = a.get("question_type", "")
            record["meta"]["multiple_choice_answer"] = a.get("multiple_choice_answer", "")
        report.keep(record)
    if annotations is not None:
        extra = len(set(annotations) - seen)
        if extra:
            report.note("annotations without a question (ignored)")
            report.notes["annotations without a question (ignored)"] = extra


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("questions", help="official questions JSON (v2_OpenEnded_mscoco_*_questions.json)")
    p.add_argument("--annotations", help="official annotations JSON (v2_mscoco_*_annotations.json)")
    p.add_argument("--images", help="folder of the COCO images (default: the subtype name, e.g. val2014)")
    args = p.parse_args(argv)
    report = Report("vqav2")
    convert(args.questions, args.annotations, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
