"""POPE question files (coco_pope_{adversarial,popular,random}.json; one JSON object per line) -> vlmtune JSONL.

    python data_prep/prep_pope.py coco_pope_adversarial.json coco_pope_popular.json coco_pope_random.json \
        --images /data/coco/val2014 --out pope.jsonl

The category comes from the file name (``..._<category>.json``) unless ``--category`` is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_jsonl, run

CATEGORIES = ("adversarial", "popular", "random")


def category_of(path: Path) -> str:
    stem = path.stem.lower()
    for c in CATEGORIES:
        if stem.endswith(c):
            return c
    return stem


def check_unique(seen: dict, key: tuple[str, str], path: Path, lineno: int) -> None:
    """A (category, question_id) read twice: the same file repeats an id, or two files share a category."""
    if key in seen:
        first, first_line = seen[key]
        if first == path:
            raise PrepError(
                f"{path}:{lineno}: question_id {key[1]} repeats line {first_line} of the same file; POPE "
                "question ids are unique in a file: is it the right file?"
            )
        raise PrepError(
            f"{path}:{lineno}: question_id {key[1]} of category '{key[0]}' is also at {first}:{first_line} "
            "(two files share a category): give each its own --out or distinct file names"
        )
    seen[key] = (path, lineno)


def convert(path: Path, category: str, images: str, out: Path, report: Report, seen: dict) -> None:
    for lineno, q in read_jsonl(path, "POPE questions"):
        where = f"{path.name}:{lineno}"
        if any(k not in q for k in ("question_id", "image", "text", "label")):
            report.skip("line without question_id/image/text/label", where)
            continue
        check_unique(seen, (category, str(q["question_id"])), path, lineno)
        label = str(q["label"]).strip().lower()
        if label not in ("yes", "no"):
            report.skip("label is not yes/no", where)
            continue
        report.keep(
            {
                "id": f"pope-{category}-{q['question_id']}",
                "task": "vqa",
                "image": image_path(images, str(q["image"]), out),
                "question": str(q["text"]).strip(),
                "answer": label,
                "meta": {"question_id": q["question_id"], "category": category},
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="POPE question files")
    p.add_argument("--category", help="category of all files (default: from each file name)")
    p.add_argument("--images", default="val2014", help="folder of the COCO val2014 images")
    args = p.parse_args(argv)
    report = Report("pope")
    seen: dict[tuple[str, str], tuple[Path, int]] = {}
    for f in args.files:
        path = Path(f)
        convert(path, args.category or category_of(path), args.images, Path(args.out), report, seen)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
