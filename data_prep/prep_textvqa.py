"""TextVQA annotations JSON (TextVQA_0.5.1_val.json) -> vlmtune JSONL (task ``vqa``, 10 answers).

    python data_prep/prep_textvqa.py TextVQA_0.5.1_val.json --images /data/textvqa/train_images \
        --ocr --out textvqa_val.jsonl

``--ocr`` keeps OCR tokens so the prompt carries "Reference OCR token: ..." as LLaVA-1.5's
``llava_textvqa_val_v051_ocr.jsonl`` does. The TextVQA_0.5.1 release entries carry no ``ocr_tokens``:
they are in the Rosetta OCR file of the same split (``TextVQA_Rosetta_OCR_v0.2_val.json``,
``{"data": [{image_id, ocr_tokens, ...}]}``), read by image id with ``--ocr-file`` (implies ``--ocr``);
without it, tokens come from the annotation entries. ``--ocr`` where no entry has tokens is an error;
records whose image has none are counted.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run

NO_TOKENS = "records without OCR tokens (none for their image)"


def read_ocr_file(path) -> dict[str, list[str]]:
    """Rosetta OCR JSON -> ``{image_id: ocr_tokens}``."""
    data = read_json(path, "TextVQA OCR")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise PrepError(f"{path}: not a TextVQA Rosetta OCR file (no 'data' list)")
    tokens = {}
    for i, entry in enumerate(data["data"]):
        if (
            not isinstance(entry, dict)
            or "image_id" not in entry
            or not isinstance(entry.get("ocr_tokens"), list)
        ):
            raise PrepError(f"{path}: data[{i}] has no image_id / ocr_tokens list; is it a Rosetta OCR file?")
        tokens[str(entry["image_id"])] = [str(t) for t in entry["ocr_tokens"]]
    return tokens


def entry_tokens(data: list, path) -> dict[str, list[str]]:
    """``{image_id: ocr_tokens}`` from annotation entries that carry them; an error if none does."""
    tokens = {
        str(q["image_id"]): [str(t) for t in q["ocr_tokens"]]
        for q in data
        if isinstance(q, dict) and "image_id" in q and isinstance(q.get("ocr_tokens"), list)
    }
    if not tokens:
        raise PrepError(
            f"{path}: --ocr, but no entry has 'ocr_tokens' (the TextVQA_0.5.1 release has none); "
            "give the Rosetta OCR file: --ocr-file TextVQA_Rosetta_OCR_v0.2_val.json"
        )
    return tokens


def convert(path, images: str, ocr: bool, out: Path, report: Report, ocr_file: str | None = None) -> None:
    data = read_json(path, "TextVQA annotations")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise PrepError(f"{path}: not a TextVQA annotations file (no 'data' list)")
    ocr_tokens = read_ocr_file(ocr_file) if ocr_file else entry_tokens(data["data"], path) if ocr else None
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
        if ocr_tokens is not None:
            if str(q["image_id"]) not in ocr_tokens:
                report.note(NO_TOKENS)
            meta["ocr_tokens"] = ocr_tokens.get(str(q["image_id"]), [])
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
    p.add_argument(
        "--ocr-file", help="Rosetta OCR JSON of the split (TextVQA_Rosetta_OCR_v0.2_val.json); implies --ocr"
    )
    args = p.parse_args(argv)
    report = Report("textvqa")
    convert(args.annotations, args.images, args.ocr, Path(args.out), report, args.ocr_file)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
