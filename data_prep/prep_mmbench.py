"""MMBench TSV (e.g. mmbench_dev_20230712.tsv, images inline as base64) -> vlmtune JSONL (task ``mcq``).

    python data_prep/prep_mmbench.py mmbench_dev_20230712.tsv --images mmbench_images --out mmbench_dev.jsonl

Images are decoded into ``--images`` as ``<index>.jpg|png``. Rows with ``index >= 1,000,000`` are the
release's circular copies (question group ``index % 1,000,000``). ``--rotate`` adds the other rotations
of every question itself (LLaVA's ``model_vqa_mmbench.py --all-rounds``) for TSVs without copies.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, run

LETTERS = "ABCD"
ROUND_STRIDE = 1_000_000
PNG_MAGIC = b"\x89PNG"


def is_none(value) -> bool:
    """LLaVA's ``is_none`` on a pandas-read cell: empty (NaN), "nan" or "none"."""
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def write_image(data: str, folder: Path, index: int) -> Path:
    raw = base64.b64decode(data, validate=False)
    suffix = "png" if raw.startswith(PNG_MAGIC) else "jpg"
    path = folder / f"{index}.{suffix}"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def record_for(row: dict, index: int, options: list[str], shift: int, image: Path, out: Path) -> dict:
    """One (possibly rotated by ``shift``) presentation of a question."""
    n = len(options)
    shown = options[shift:] + options[:shift]
    meta = {
        "index": index,
        "group": index % ROUND_STRIDE,
        "round": index // ROUND_STRIDE + shift,
        "llava_round": shift,
        "released": shift == 0,
        "hint": "" if is_none(row.get("hint")) else row["hint"],
        "category": row.get("category") or "",
        "l2_category": row.get("l2-category") or "",
        "tsv_question": row["question"],
        "options": {LETTERS[i]: options[i] for i in range(n)},
        "option_char": [LETTERS[(i + shift) % n] for i in range(n)],
    }
    for key in ("split",):
        if not is_none(row.get(key)):
            meta[key] = row[key]
    record = {
        "id": f"mmbench-{index}" + (f"-r{shift}" if shift else ""),
        "task": "mcq",
        "image": os.path.relpath(image.resolve(), out.resolve().parent),
        "question": row["question"],
        "choices": shown,
        "meta": meta,
    }
    answer = str(row.get("answer") or "").strip()
    if answer in list(LETTERS[:n]):  # a list: "" (test split) and "AB" are substrings of "ABCD"
        meta["tsv_answer"] = answer
        record["answer"] = LETTERS[(LETTERS.index(answer) - shift) % n]
    return record


def convert(path: Path, images: Path, rotate: bool, out: Path, report: Report) -> None:
    if not path.is_file():
        raise PrepError(f"MMBench TSV {path} does not exist")
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [k for k in ("index", "question", "A", "B", "image") if k not in (reader.fieldnames or [])]
        if missing:
            raise PrepError(f"{path}: not an MMBench TSV (no '{missing[0]}' column)")
        for lineno, row in enumerate(reader, 2):
            where = f"{path.name}:{lineno}"
            try:
                index = int(float(row["index"]))
            except ValueError:
                report.skip("index is not a number", where)
                continue
            options = []
            for letter in LETTERS:
                if is_none(row.get(letter)):
                    break
                options.append(row[letter])
            if len(options) < 2:
                report.skip("fewer than 2 options", where)
                continue
            try:
                image = write_image(row["image"], images, index)
            except (binascii.Error, ValueError):
                report.skip("image is not base64", where)
                continue
            if not is_none(row.get("answer")) and str(row["answer"]).strip() not in list(
                LETTERS[: len(options)]
            ):
                report.note(
                    "rows whose answer is not one of their option letters (kept without a gold answer)"
                )
            shifts = range(len(options)) if rotate and index < ROUND_STRIDE else range(1)
            for shift in shifts:
                report.keep(record_for(row, index, options, shift, image, out))


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "tsv", help="MMBench TSV (index, question, hint, A-D, answer, category, l2-category, image, ...)"
    )
    p.add_argument("--images", required=True, help="folder to decode the images into")
    p.add_argument("--rotate", action="store_true", help="add every rotation of the options (CircularEval)")
    args = p.parse_args(argv)
    report = Report("mmbench")
    convert(Path(args.tsv), Path(args.images), args.rotate, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
