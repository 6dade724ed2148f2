"""An NLVR2-style task on the shapes default: two images, one statement, ``true`` / ``false``.

Pairs are drawn from shapes ``caption`` records (their ``meta.objects`` lists what each image holds,
e.g. ``["red circle", "blue square"]``). Statements, balanced between true and false:

* ``the left image has a red circle`` / ``the right image has a blue square``
* ``both images have a triangle`` (a shape type)
* ``the left image has more shapes than the right image``

Everything is a pure function of (records, n, seed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from vlmtune.core.io import atomic_write_text
from vlmtune.data.errors import DataError

SIDES = ("left", "right")


def _objects(record: dict) -> list[str]:
    objs = (record.get("meta") or {}).get("objects")
    if not objs:
        raise DataError(
            f"record {record.get('id')!r}: shapes NLVR needs meta.objects (a shapes caption record)"
        )
    return list(objs)


def _statement(a: list[str], b: list[str], vocab: list[str], rng: random.Random, want: bool) -> str | None:
    kind = rng.choice(("has", "has", "both", "more"))
    if kind == "has":
        side = rng.randrange(2)
        objs = (a, b)[side]
        pool = objs if want else [o for o in vocab if o not in objs]
        return f"the {SIDES[side]} image has a {rng.choice(pool)}"
    if kind == "both":
        types = sorted({o.split()[-1] for o in vocab})
        ta, tb = {o.split()[-1] for o in a}, {o.split()[-1] for o in b}
        pool = [t for t in types if (t in ta and t in tb) == want]
        return f"both images have a {rng.choice(pool)}" if pool else None
    if (len(a) > len(b)) == want:
        return "the left image has more shapes than the right image"
    return None


def shapes_nlvr_records(caption_records: list[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` NLVR records ``{"id", "task": "nlvr", "images": [left, right], "sentence", "answer"}``."""
    if len(caption_records) < 2:
        raise DataError("shapes NLVR needs at least 2 caption records to pair")
    rng = random.Random(f"shapes-nlvr/{seed}")
    vocab = sorted({o for r in caption_records for o in _objects(r)})
    out: list[dict] = []
    while len(out) < n:
        ra, rb = rng.sample(caption_records, 2)
        want = len(out) % 2 == 0  # alternate true / false: balanced labels
        sentence = _statement(_objects(ra), _objects(rb), vocab, rng, want)
        if sentence is None:
            continue
        out.append(
            {
                "id": f"shapes-nlvr-{seed}-{len(out):06d}",
                "task": "nlvr",
                "images": [ra["image"], rb["image"]],
                "sentence": sentence,
                "answer": "true" if want else "false",
            }
        )
    return out


def write_shapes_nlvr(caption_jsonl: str | Path, n: int, seed: int = 0) -> Path:
    """``nlvr.jsonl`` beside a shapes ``caption.jsonl`` (image paths stay relative to that folder)."""
    caption_jsonl = Path(caption_jsonl)
    records = [json.loads(line) for line in caption_jsonl.read_text().splitlines() if line.strip()]
    out = caption_jsonl.with_name("nlvr.jsonl")
    lines = [json.dumps(r) for r in shapes_nlvr_records(records, n, seed)]
    return atomic_write_text("\n".join(lines) + "\n", out)
