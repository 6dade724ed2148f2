"""Write the synthetic shapes dataset (vlmtune JSONL + PNG images) to a folder.

    python data_prep/make_shapes.py --out data/shapes-train --n 2000 --split train
    python data_prep/make_shapes.py --out data/shapes-test --n 500 --split test --tasks vqa,caption

Identical arguments give identical files. The same data is what ``shapes:<task>`` specs load from
the cache (``$VLMTUNE_CACHE/shapes``), so this script is only needed to inspect or ship it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmtune.data.errors import DataError
from vlmtune.data.shapes import SPLITS, TASKS, generate_shapes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (images/ and <task>.jsonl)")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--split", default="train", choices=SPLITS, help="split (different seeds per split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    start = time.perf_counter()
    try:
        paths = generate_shapes(args.out, args.n, args.split, args.seed, args.image_size, tasks)
    except DataError as e:
        print(f"make_shapes: error: {e}", file=sys.stderr)
        return 2
    for task, path in paths.items():
        count = sum(1 for line in path.read_text().splitlines() if line.strip())
        print(f"{task:<10} {count:>6} records  {path}")
    n_png = sum(1 for _ in (Path(args.out) / "images").glob("*.png"))
    print(f"images     {n_png:>6} png      {Path(args.out) / 'images'}  ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
