"""TextVQA annotations JSON (TextVQA_0.5.1_val.json) -> vlmtune JSONL (task ``vqa``, 10 answers).

    python data_prep/prep_textvqa.py TextVQA_0.5.1_val.json --images /data/textvqa/train_images \
        --ocr --out textvqa_val.jsonl

``--ocr`` keeps the release's ``ocr_tokens`` so the prompt carries "Reference OCR token: ..." as
LLaVA-1.5's ``llava_textvqa_val_v051_ocr.jsonl`` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run


def convert(path, images: str, ocr: bool, out: Path, report: Report) -> None:
    data = read_json(path, "TextVQA annotations")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise PrepError(f"{path}: not a TextVQA annotations file (no 'data' list)")
    for i, q in enumerate(data["data"]):
        where = f"data[{i}]"
        if not isinstance(q, dict) or any(k not in q for k in ("question_id", "image_id", "question")):
            report.skip("entry without question_id/image_id/question", where)
            continue
        answers = q.get("answers")
        if not isinstance(answers, list) or not answers:
            report.skip("no 'answers' (test split?)", where)
            continue
        meta = {"question_id": q["question_id"], "image_id": q["image_id"]}
        if ocr:
            meta["ocr_tokens"] = [str(t) for t in q.get("ocr_tokens") or []]
        report.keep(
            {
                "id": f"textvqa-{q['question_id']}",
                "task": "vqa",
                "image": image_path(images, f"{q['image_id']}.jpg", out),
                "question": str(q["question"]).strip(),
                "answers": [str(a) for a in answers],
                "meta": meta,
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "annotations", help="TextVQA JSON ({'data': [{question_id, image_id, question, answers}]})"
    )
    p.add_argument("--images", default="train_images", help="folder of the TextVQA images")
    p.add_argument("--ocr", action="store_true", help="keep the OCR tokens for LLaVA-1.5's OCR prompt")
    args = p.parse_args(argv)
    report = Report("textvqa")
    convert(args.annotations, args.images, args.ocr, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
