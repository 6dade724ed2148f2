"""The whole training loop: vlmtune's Trainer (packed / padded) vs transformers ``Trainer`` + peft.

One epoch over a length-varied instruction mix drawn like LLaVA-665k's (mostly short VQA answers,
some captions, long multi-turn conversations, text-only chats; one 224 px image per multimodal
sample), on the ``small`` LLaVA of ``benchmarks/train_step.py`` (CLIP 4 x 256 on 224 px = 256 image
tokens, Llama 4 x 512, MLP 1408, vocab 32000; random weights, fp32 on CPU). Every variant trains
the same model (loaded from the same folder), on the same samples in the same order (vlmtune's
epoch-0 permutation; the HF reference gets them through a sequential sampler), with the same batch
size, AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight decay), cosine schedule, grad-norm clip 1
and DoRA/LoRA r=128, alpha=256, dropout 0.05 on q,k,v,o,gate,up,down of the LM (projector and
vision tower frozen):

* ``vlmtune-packed``  vlmtune ``Trainer.fit`` with ``data.packing=true`` (SDPA: one row per micro-batch,
                      one causal attention call per sample; vlmtune.models.packed_attention)
* ``vlmtune``         the same with ``data.packing=false`` (right-padded to the longest in a batch)
* ``hf-peft``         ``transformers.Trainer`` on a ``peft.get_peft_model`` model; the batches are
                      vlmtune's padded collation (same tokens, labels, pixel values)

Variants run in one process, interleaved round by round (A, B, ref, A, B, ref, ...); reported
per variant: the median over rounds of wall time and of this process's CPU time for the epoch
(model loading excluded; everything from the first batch to the last update, vlmtune's final
checkpoint included), supervised tokens/s (answer tokens the loss sees), tokens/s (non-padding),
samples/s; ratios are medians over rounds of per-round ratios (CPU time). ``--cache`` adds a
2-epoch vlmtune run with ``data.cache_vision_features=true`` (a fresh cache each round) and
reports epoch-2 / epoch-1 time; an uncached 2-epoch run is the control.

    python benchmarks/trainer.py                         # CPU: small, DoRA, 3 rounds
    python benchmarks/trainer.py --methods dora lora --cache --rounds 2
    python benchmarks/trainer.py --model 1b              # CUDA: the 1b of train_step.py in bf16 (default there),
                                                         # wall-clock ratios and peak memory per variant
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from harness import device_description, sync

WORDS = (
    "the a red blue green yellow purple circle square triangle star small large left right above below "
    "near corner center image shows there is are two three one of and with next to on in picture shape "
    "color bright dark round sharp edge top bottom middle side because looks like seems each other"
).split()
MIX = {"vqa": 0.45, "caption": 0.15, "conversation": 0.30, "text": 0.10}  # share of samples
TWO_EPOCHS = ("train.epochs=2", "train.log_every=1")
PEFT_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"


# ---------------------------------------------------------------- model and data
def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def draw_sample(rng: random.Random, i: int, image: str) -> dict:
    """One LLaVA-format record of a kind drawn from :data:`MIX`."""
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    turns, q, a = {
        "vqa": ((1, 3), (5, 10), (1, 2)),  # VQAv2/GQA: several short questions about one image
        "caption": ((1, 1), (5, 8), (8, 20)),  # COCO/TextCaps-like
        "conversation": ((2, 5), (6, 14), (30, 90)),  # LLaVA-Instruct conversation / detail / reasoning
        "text": ((1, 3), (6, 14), (40, 120)),  # ShareGPT: no image
    }[kind]
    conv = []
    for t in range(rng.randint(*turns)):
        question = sentence(rng, *q)
        if t == 0 and kind != "text":
            question = "<image>\n" + question
        conv += [{"from": "human", "value": question}, {"from": "gpt", "value": sentence(rng, *a)}]
    record = {"id": f"mix-{i:05d}-{kind}", "conversations": conv}
    if kind != "text":
        record["image"] = image
    return record


def write_mix(folder: Path, n: int, seed: int, shapes_cache: Path) -> Path:
    """``n`` records (LLaVA JSON) over the shapes images at 224 px; returns the JSON path."""
    from vlmtune.data.records import load_records

    images = sorted(
        {
            r["image"]
            for r in load_records("shapes:caption", n_images=n, image_size=224, cache_dir=shapes_cache)
        }
    )
    rng = random.Random(seed)
    records = [draw_sample(rng, i, images[i % len(images)]) for i in range(n)]
    path = folder / "mix.json"
    path.write_text(json.dumps(records))
    return path


def model_sizes() -> dict:
    """``--model``: the LLaVA sizes of benchmarks/train_step.py (vocab 32000 in the LM; the BPE
    tokenizer has 1024 entries), plus ``tiny`` for a smoke test of this script."""
    from vlmtune.presets.shapes_tiny import TinySize

    return {
        "tiny": TinySize(1024, 224, 14, 32, 1, 2, 64, 1, 2, 128, 4096),
        "small": TinySize(1024, 224, 14, 256, 4, 4, 512, 4, 8, 1408, 4096),
        "1b": TinySize(1024, 224, 14, 1024, 8, 16, 2048, 16, 16, 5632, 4096),
    }


def write_llava(folder: Path, texts: list[str], model: str, dtype: torch.dtype) -> Path:
    """The ``model`` LLaVA (random weights, saved in ``dtype``) with a BPE tokenizer for ``texts``."""
    from transformers import LlavaForConditionalGeneration

    from vlmtune.presets.shapes_tiny import image_processor, tiny_config, train_tokenizer

    size = model_sizes()[model]
    tokenizer = train_tokenizer(texts, size.vocab_size)
    cfg = tiny_config(tokenizer, size)
    cfg.text_config.vocab_size = 32000
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor(size.image_size).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the three loops
def vlmtune_config(args, model: Path, data: Path, method: str, *extra: str):
    from vlmtune.core.config import load_config

    return load_config(
        "llava-dora",
        [
            f"model.name_or_path={model}",
            f"model.dtype={args.dtype}",
            f"data.train={data}",
            f"data.max_length={args.max_length}",
            f"adapters.language.method={method}",
            "adapters.projector.method=frozen",
            f"train.batch_size={args.batch_size}",
            "train.max_steps=0",
            "train.epochs=1",
            "train.mixed_precision='no'",
            "train.log_every=1000000",
            *extra,
        ],
    )


def run_vlmtune(args, cfg, records: list[dict], out: Path) -> dict:
    from vlmtune.models import build_pipeline
    from vlmtune.recipes import seeded_pipeline
    from vlmtune.train.run import read_metrics
    from vlmtune.train.trainer import Trainer

    pipe = seeded_pipeline(cfg, build_pipeline)
    trainer = Trainer(pipe, cfg, records, out, quiet=True)
    step_cpu: list[float] = []  # this process's CPU time per optimizer step (data wait included)
    step_wall: list[float] = []  # wall time per optimizer step (CUDA work included)
    step = trainer._optimizer_step
    device = torch.device(args.device)

    def timed_step(*a, **k):
        sync(device)
        t, w = time.process_time(), time.perf_counter()
        out = step(*a, **k)
        sync(device)
        step_cpu.append(time.process_time() - t)
        step_wall.append(time.perf_counter() - w)
        return out

    trainer._optimizer_step = timed_step
    with measured(device) as m:
        result = trainer.fit()
    metrics = read_metrics(out)
    breakdown = next(m for m in reversed(metrics) if "time/data_share" in m)
    cache = pipe.feature_cache
    return {
        **m,
        "loss": result["loss"],
        "steps": result["step"],
        "step_wall_s": step_wall,
        "step_cpu_s": step_cpu,
        "breakdown": {k: v for k, v in breakdown.items() if k.startswith("time/")},
        **({"cache_hits": cache.hits, "cache_misses": cache.misses} if cache is not None else {}),
    }


def run_hf(
    args, model_dir: Path, method: str, records: list[dict], order: list[int], collate, out: Path
) -> dict:
    import peft
    from torch.utils.data import SequentialSampler
    from transformers import LlavaForConditionalGeneration, Trainer, TrainingArguments

    class InOrder(Trainer):  # vlmtune's sample order, so both loops see the same batches
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
    lora = peft.LoraConfig(
        r=args.r,
        lora_alpha=2 * args.r,
        lora_dropout=0.05,
        target_modules=PEFT_TARGETS,
        use_dora=method == "dora",
    )
    model = peft.get_peft_model(model, lora, autocast_adapter_dtype=False)
    steps = -(-len(records) // args.batch_size)
    targs = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=2e-4,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(0.03 * steps)),
        optim="adamw_torch",
        use_cpu=args.device == "cpu",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        seed=0,
    )

    def collator(batch: list[dict]) -> dict:
        return {k: v for k, v in collate(batch).items() if isinstance(v, torch.Tensor)}

    trainer = InOrder(
        model=model, args=targs, train_dataset=[records[i] for i in order], data_collator=collator
    )
    with measured(torch.device(args.device)) as m:
        result = trainer.train()
    return {**m, "loss": result.training_loss, "steps": result.global_step}


@contextmanager
def measured(device: torch.device):
    """Yields a dict that receives ``cpu_s`` (this process), ``wall_s`` (CUDA work included) and, on
    CUDA, ``peak_mib`` (the most memory allocated at once, model and optimizer state included)."""
    m: dict[str, float] = {}
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cpu, wall = time.process_time(), time.perf_counter()
    yield m
    sync(device)
    m["cpu_s"], m["wall_s"] = time.process_time() - cpu, time.perf_counter() - wall
    if device.type == "cuda":
        m["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20


# ---------------------------------------------------------------- driver
def epoch_totals(pipe, records: list[dict]) -> dict:
    """Samples, non-padding tokens and supervised (answer) tokens of one epoch."""
    from vlmtune.data.collate import supervised_tokens

    enc = [pipe.encode(r) for r in records]
    return {
        "samples": len(records),
        "tokens": sum(len(e) for e in enc),
        "supervised": sum(supervised_tokens(e) - (e.labels[0] != -100) for e in enc),
    }


def round_ratios(rows: list[dict], a: str, b: str, key: str = "cpu_s") -> list[float]:
    """``key`` of variant ``a`` over variant ``b``, per round (both ran in it)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        if key in r:
            by_round.setdefault(r["round"], {})[r["variant"]] = r[key]
    return [v[a] / v[b] for v in by_round.values() if a in v and b in v]


def median_ratio(rows: list[dict], a: str, b: str, key: str = "cpu_s") -> float:
    return statistics.median(round_ratios(rows, a, b, key))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--r", type=int, default=128)
    p.add_argument("--methods", nargs="+", default=["dora"], choices=["dora", "lora"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cache", action="store_true", help="also the 2-epoch feature-cache runs")
    p.add_argument("--cache-only", action="store_true", help="only the 2-epoch feature-cache runs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep-work", action="store_true", help="keep the work folder (models, data, runs; ~0.5 GB on small)"
    )
    p.add_argument(
        "--model", choices=["tiny", "small", "1b"], default=None, help="default: 1b on CUDA, small on CPU"
    )
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    args = p.parse_args(argv)
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    args.model = args.model or ("1b" if cuda else "small")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.clock = "wall_s" if cuda else "cpu_s"  # what ratios compare (CPU time resists a shared machine)
    args.cache = args.cache or args.cache_only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    try:
        return run_benchmark(args, work)
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, work: Path) -> int:
    """Every round of every variant, then the summary; models, data and runs live under ``work``."""
    from vlmtune.data.records import load_records

    data = write_mix(work, args.samples, args.seed, work / "shapes")
    texts = [
        t["value"].replace("<image>\n", "") for r in json.loads(data.read_text()) for t in r["conversations"]
    ]
    model_dir = write_llava(work / args.model, texts, args.model, getattr(torch, args.dtype))
    records = load_records(str(data))
    info = {
        "bench": "trainer",
        "device": device_description(torch.device(args.device)),
        "model": args.model,
        "dtype": args.dtype,
    }
    print(json.dumps({**info, "command": " ".join(["python", *sys.argv]), **vars(args)}), flush=True)

    from vlmtune.models import build_pipeline

    probe = build_pipeline(vlmtune_config(args, model_dir, data, "dora"))
    totals = epoch_totals(probe, records)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(records), generator=g).tolist()  # vlmtune's epoch-0 order (seed 0)
    print(json.dumps({**info, **totals}), flush=True)

    rows = []
    for rnd in range(args.rounds):
        for method in args.methods:
            variants = {
                f"vlmtune-packed-{method}": lambda m=method, o=None: run_vlmtune(
                    args, vlmtune_config(args, model_dir, data, m, "data.packing=true"), records, o
                ),
                f"vlmtune-{method}": lambda m=method, o=None: run_vlmtune(
                    args, vlmtune_config(args, model_dir, data, m), records, o
                ),
                f"hf-peft-{method}": lambda m=method, o=None: run_hf(
                    args, model_dir, m, records, order, lambda b: probe.collate(b, train=True), o
                ),
            }
            if args.cache_only:
                variants = {}
            if args.cache:
                variants[f"vlmtune-2ep-{method}"] = lambda m=method, o=None: run_vlmtune(
                    args, vlmtune_config(args, model_dir, data, m, *TWO_EPOCHS), records, o
                )
                variants[f"vlmtune-2ep-cached-{method}"] = lambda m=method, o=None: run_vlmtune(
                    args,
                    vlmtune_config(
                        args,
                        model_dir,
                        data,
                        m,
                        *TWO_EPOCHS,
                        "data.cache_vision_features=true",
                        f"data.vision_cache_dir={o}/cache",
                    ),
                    records,
                    o,
                )
            for name, run in variants.items():
                out = work / f"r{rnd}-{name}"
                res = run(o=out)
                row = {**info, "round": rnd, "variant": name, **res}
                n = totals if "2ep" not in name else {k: 2 * v for k, v in totals.items()}
                row["supervised_tokens_per_s"] = n["supervised"] / res["wall_s"]
                row["tokens_per_s"] = n["tokens"] / res["wall_s"]
                row["samples_per_s"] = n["samples"] / res["wall_s"]
                row["supervised_tokens_per_cpu_s"] = (
                    n["supervised"] / res["cpu_s"]
                )  # the loaded-machine measure
                if "2ep" in name:
                    for clock in ("cpu_s", "wall_s"):
                        steps = res[f"step_{clock}"]
                        per = len(steps) // 2
                        row[f"epoch2_{clock}"] = sum(steps[per:])
                        row[f"epoch2_over_epoch1_{clock}"] = sum(steps[per:]) / sum(steps[:per])
                print(json.dumps(row), flush=True)
                rows.append(row)
    print()
    summarize(rows, args)
    return 0


def summarize(rows: list[dict], args) -> None:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cuda = any("peak_mib" in r for r in rows)
    keys = ["cpu_s", "wall_s", "supervised_tokens_per_cpu_s", "supervised_tokens_per_s", "tokens_per_s"]
    keys += ["samples_per_s", "loss"] + (["peak_mib"] if cuda else [])
    print(
        "| variant | epoch CPU s (median) | epoch wall s (median) | supervised tok/CPU s | supervised tok/s (wall) "
        "| tok/s (wall) | samples/s (wall) | loss (median) |" + (" peak MiB |" if cuda else "")
    )
    print("|---" * (len(keys) + 1) + "|")
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        med = {k: statistics.median(r[k] for r in rs) for k in keys}
        print(
            f"| {v} | {med['cpu_s']:.1f} | {med['wall_s']:.1f} | {med['supervised_tokens_per_cpu_s']:.1f} | "
            f"{med['supervised_tokens_per_s']:.1f} | "
            f"{med['tokens_per_s']:.0f} | {med['samples_per_s']:.2f} | {med['loss']:.4f} |"
            + (f" {med['peak_mib']:.0f} |" if cuda else "")
        )
    print()
    for method in args.methods:
        for a, b in (
            []
            if args.cache_only
            else [
                (f"vlmtune-packed-{method}", f"vlmtune-{method}"),
                (f"vlmtune-packed-{method}", f"hf-peft-{method}"),
                (f"vlmtune-{method}", f"hf-peft-{method}"),
            ]
        ):
            speed = 1 / median_ratio(rows, a, b)
            wall = 1 / median_ratio(rows, a, b, "wall_s")
            print(f"speed {a} / {b}: {speed:.3f}x (CPU time), {wall:.3f}x (wall)")
        if args.cache:
            for v in (f"vlmtune-2ep-{method}", f"vlmtune-2ep-cached-{method}"):
                for clock in ("cpu_s", "wall_s"):
                    ratios = [r[f"epoch2_over_epoch1_{clock}"] for r in rows if r["variant"] == v]
                    print(
                        f"epoch 2 / epoch 1 {clock[:-2]} time, {v}: {statistics.median(ratios):.3f} "
                        f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})"
                    )
            paired = round_ratios(
                rows, f"vlmtune-2ep-cached-{method}", f"vlmtune-2ep-{method}", "epoch2_cpu_s"
            )
            print(
                f"epoch 2 CPU time, cached / uncached (the same batches; epochs differ in their batches): "
                f"{statistics.median(paired):.3f} (rounds: {', '.join(f'{x:.3f}' for x in paired)})"
            )
            uncached = [r["breakdown"] for r in rows if r["variant"] == f"vlmtune-2ep-{method}"]
            skippable = statistics.median(x["time/data_share"] + x["time/vision_share"] for x in uncached)
            print(
                f"what a cache can skip (data + vision share of the uncached run's steps): {100 * skippable:.1f}%, "
                f"so no cache takes a warm epoch below {1 - skippable:.3f}x of an uncached one on this model"
            )
    for v in variants:
        if v.startswith("vlmtune"):
            b = [r["breakdown"] for r in rows if r["variant"] == v]
            shares = {
                k.split("/")[1][: -len("_share")]: statistics.median(x[k] for x in b)
                for k in b[0]
                if k.endswith("_share")
            }
            print(f"step-time shares {v}: " + ", ".join(f"{k} {100 * s:.1f}%" for k, s in shares.items()))


if __name__ == "__main__":
    raise SystemExit(main())
