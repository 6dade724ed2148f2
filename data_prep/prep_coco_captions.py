"""Karpathy-split COCO captions (dataset_coco.json) -> vlmtune JSONL (task ``caption``, ~5 references).

    python data_prep/prep_coco_captions.py dataset_coco.json --split test --images /data/coco --out coco_test.jsonl

``--split train`` includes ``restval`` (the Karpathy convention). Image path: ``<images>/<filepath>/<filename>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run

SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",), "restval": ("restval",)}


def convert(dataset_path, split: str, images: str, out: Path, report: Report) -> None:
    data = read_json(dataset_path, "Karpathy COCO dataset")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PrepError(f"{dataset_path}: not a Karpathy dataset file (no 'images' list)")
    wanted = SPLITS[split]
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "filename" not in img:
            report.skip("image entry without filename", f"images[{i}]")
            continue
        if img.get("split") not in wanted:
            report.note(f"images of other splits (not {split})")
            continue
        image_id = img.get("cocoid", img.get("imgid", i))
        sentences = img.get("sentences") or []
        captions = [str(s.get("raw", "")).strip() for s in sentences if isinstance(s, dict)]
        captions = [c for c in captions if c]
        if not captions:
            report.skip("image without captions", image_id)
            continue
        rel = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else img["filename"]
        report.keep(
            {
                "id": f"coco-{image_id}",
                "task": "caption",
                "image": image_path(images, rel, out),
                "captions": captions,
                "meta": {"image_id": image_id, "split": img["split"], "filename": img["filename"]},
            }
        )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("dataset", help="Karpathy dataset_coco.json")
    p.add_argument("--split", default="test", choices=sorted(SPLITS), help="Karpathy split (default: test)")
    p.add_argument("--images", default="", help="COCO root holding train2014/ and val2014/")
    args = p.parse_args(argv)
    report = Report("coco-captions")
    convert(args.dataset, args.split, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
