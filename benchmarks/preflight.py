"""How long the preflight of ``vlmtune train`` takes on 10,000 shapes records with their images on disk (issue 21
bar: < 20 s on 2 cores), against a reference measured in the same run: decoding every image one after the other
(``vlmtune.data.images.load_image``, what reading with ``data.on_error=skip`` does).

    PYTHONPATH=. python benchmarks/preflight.py [--records 10000] [--rounds 2] [--model shapes-tiny]

Prints one JSON line per round and the medians: ``data_s`` (records parsed and validated + every image opened,
header and size, in the thread pool: :func:`vlmtune.recipes.preflight.preflight`, before the base loads),
``model_s`` (targets resolved + every record encoded to count prompts too long for ``data.max_length``:
:func:`~vlmtune.recipes.preflight.preflight_model`, on the shipped shapes-tiny), ``decode_s`` (the serial decode
reference) and ``decode_over_data`` (their ratio). Generating the shapes images is done once before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default="shapes-tiny", help="base for the model part (a preset or folder)")
    return p.parse_args(argv)


def config(args: argparse.Namespace):
    from vlmtune.core.config import load_config

    images = args.records // 4 + 1  # shapes:vqa has >= 4 questions per image
    return load_config("llava-dora", [f"data.shapes_size={images}", f"data.max_train_samples={args.records}",
                                      "data.eval=", f"model.name_or_path={args.model}"])  # fmt: skip


def decode_all(records: list[dict]) -> float:
    """Seconds to decode every image of ``records`` serially (the reference)."""
    from vlmtune.data.images import load_image
    from vlmtune.data.records import record_images

    t0 = time.perf_counter()
    for record in records:
        for path in record_images(record):
            load_image(path, record_id=record["id"])
    return time.perf_counter() - t0


def main(argv=None) -> None:
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes.preflight import preflight, preflight_model

    args = parse(argv)
    cfg = config(args)
    quiet = lambda *_: None  # noqa: E731
    checked = preflight(cfg, Path("."), quiet, progress=False)  # warm-up: generates the shapes data once
    assert len(checked.train) == args.records, len(checked.train)
    pipeline = build_pipeline(cfg)
    rows = []
    for i in range(args.rounds):  # interleaved: preflight, then the reference, each round
        t0 = time.perf_counter()
        checked = preflight(cfg, Path("."), quiet, progress=False)
        data_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        preflight_model(pipeline, cfg, checked, quiet)
        model_s = time.perf_counter() - t0
        decode_s = decode_all(checked.train)
        rows.append({"round": i, "records": len(checked.train), "images": checked.images, "data_s": round(data_s, 2),
                     "model_s": round(model_s, 2), "decode_s": round(decode_s, 2),
                     "decode_over_data": round(decode_s / data_s, 2)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    medians = {
        k: statistics.median(r[k] for r in rows)
        for k in ("data_s", "model_s", "decode_s", "decode_over_data")
    }
    print(json.dumps({"median": medians, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
