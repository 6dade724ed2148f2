"""Batched vs one-at-a-time greedy generation on the tiny LLaVA (shapes-tiny), through the Pipeline API.

    python benchmarks/generation.py [--n 64] [--batch-size 16] [--max-new-tokens 16] [--model shapes-tiny]

Both paths go through ``pipeline.collate(records, train=False)`` (left padding) and
``pipeline.generate`` (KV cache, greedy). Prints one JSON object: wall times, speed-up, and whether
every batched output equals the one-at-a-time output (with the first mismatches if not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-tiny")
    p.add_argument("--data", default="shapes:vqa")
    p.add_argument("--benchmark", default="shapes-vqa")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = p.parse_args(argv)

    import torch

    from vlmtune.data.records import load_records
    from vlmtune.eval.benchmarks import get_benchmark, prepare
    from vlmtune.eval.command import load_model
    from vlmtune.eval.runner import generate_predictions

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipeline, _, _ = load_model(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipeline.model.to(device)
    bench = get_benchmark(args.benchmark)
    records = [prepare(bench, r) for r in load_records(args.data, split="test", max_samples=args.n)]

    def run(batch_size: int) -> tuple[list[str], float]:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        texts = generate_predictions(pipeline, records, batch_size, args.max_new_tokens, 1, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return texts, time.perf_counter() - t0

    generate_predictions(
        pipeline, records[: args.batch_size], args.batch_size, 2, 1, progress=False
    )  # warm-up
    single, t_single = run(1)
    batched, t_batched = run(args.batch_size)
    mismatches = [
        {"id": r["id"], "single": s, "batched": b} for r, s, b in zip(records, single, batched) if s != b
    ]
    result = {
        "benchmark": "generation",
        "model": args.model,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "n": len(records),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "one_at_a_time_s": round(t_single, 3),
        "batched_s": round(t_batched, 3),
        "speedup": round(t_single / t_batched, 2),
        "identical": not mismatches,
        "mismatches": mismatches[:3],
        "n_mismatches": len(mismatches),
        "examples": [{"prompt": r["prompt"], "output": s} for r, s in zip(records[:2], single[:2])],
    }
    print(json.dumps(result, indent=2))
    return 0 if not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
