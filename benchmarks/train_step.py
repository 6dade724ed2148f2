"""Tokens/s and peak memory of a full LLaVA training step: vlmtune vs peft, LoRA and DoRA.

A step is ``zero_grad`` + forward (loss on the text tokens) + backward + AdamW ``step``, on a
``LlavaForConditionalGeneration`` built from configs with random weights (no download), adapters
on the language model's q,k,v,o,gate,up,down (the LLaVA-1.5 LoRA recipe: r=128, alpha=256,
dropout 0.05).  All variants run in one process, interleaved round by round, on the same batch and
the same (shared, frozen) base weights; peft keeps adapters in the base dtype
(``autocast_adapter_dtype=False``) like vlmtune.

Models (``--model``):

* ``tiny``  the shapes-tiny sizes (vlmtune/presets/shapes_tiny.py): CLIP 2 layers hidden 64 on 64 px
  images, Llama 2 layers hidden 128, vocab 1024; batch 8.
* ``1b``    LLaVA-shaped ~1.06B: CLIP ViT-L/14-like tower cut to 8 layers (hidden 1024, 224 px,
  256 patches), Llama hidden 2048, 16 layers, MLP 5632, vocab 32000; batch 4 x 768 tokens.
  Default on CUDA (bf16).
* ``small`` the 1b layout scaled down for CPU (default there, fp32): CLIP 4 layers hidden 256,
  Llama 4 layers hidden 512, MLP 1408, vocab 32000; batch 2 x 384 tokens, 49M parameters.

    python benchmarks/train_step.py                       # tiny + (1b on CUDA | small on CPU)
    python benchmarks/train_step.py --models tiny small --ranks 16 128
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass

import torch
from harness import clock, device_description, interleaved, median, paired_ratio
from memory import peak_step_memory
from torch import nn

from vlmtune.adapters import AdapterSpec, attach

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
VARIANTS = ["vlmtune-lora", "peft-lora", "vlmtune-dora", "peft-dora"]


@dataclass
class Size:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_mlp: int
    vocab: int
    batch: int
    text_tokens: int


SIZES = {
    "tiny": Size(64, 2, 4, 64, 16, 128, 2, 4, 384, 1024, 8, 48),
    "small": Size(256, 4, 4, 224, 14, 512, 4, 8, 1408, 32000, 2, 128),
    "1b": Size(1024, 8, 16, 224, 14, 2048, 16, 16, 5632, 32000, 4, 512),
}


def build_llava(size: Size) -> nn.Module:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )
    text = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.text_hidden,
        intermediate_size=size.text_mlp,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    n_patches = (size.image_size // size.patch_size) ** 2
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=size.vocab - 1,
        image_seq_length=n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    cfg._attn_implementation = "sdpa"
    return LlavaForConditionalGeneration(cfg)


def make_batch(size: Size, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Image tokens then text tokens; loss on the text tokens only."""
    n_img = (size.image_size // size.patch_size) ** 2
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, size.vocab - 2, (size.batch, size.text_tokens), generator=g)
    image = torch.full((size.batch, n_img), size.vocab - 1)
    ids = torch.cat([image, text], dim=1)
    labels = torch.cat([torch.full_like(image, -100), text], dim=1)
    pixels = torch.randn(size.batch, 3, size.image_size, size.image_size, generator=g)
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": torch.ones_like(ids, device=device),
        "pixel_values": pixels.to(device=device, dtype=dtype),
    }


def shared_copy(model: nn.Module) -> nn.Module:
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def with_adapters(base: nn.Module, name: str, r: int, dropout: float) -> nn.Module:
    lib, method = name.split("-")
    model = shared_copy(base)
    if lib == "vlmtune":
        spec = AdapterSpec(method=method, r=r, alpha=2 * r, dropout=dropout, targets=TARGETS)
        attach(model, {"language": ["model.language_model"]}, {"language": spec})
        return model
    import peft

    cfg = peft.LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=PEFT_TARGETS, use_dora=method == "dora"
    )
    return peft.get_peft_model(model, cfg, autocast_adapter_dtype=False)


def make_step(model: nn.Module, batch: dict[str, torch.Tensor]):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    return step, sum(p.numel() for p in params)


def run_model(name: str, r: int, dropout: float, args: argparse.Namespace, info: dict) -> dict:
    size = SIZES[name]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    base = build_llava(size).to(device=device, dtype=dtype).requires_grad_(False)
    batch = make_batch(size, device, dtype)
    tokens = batch["input_ids"].numel()
    models = {v: with_adapters(base, v, r, dropout).train() for v in VARIANTS}
    steps, trainable = {}, {}
    for v, m in models.items():
        steps[v], trainable[v] = make_step(m, batch)
    times = interleaved(steps, args.repeats, args.warmup, device)
    mem = {v: peak_step_memory(s, device) for v, s in steps.items()}
    params = sum(p.numel() for p in base.parameters())
    for v in VARIANTS:
        row = {
            **info,
            "model": name,
            "params_m": round(params / 1e6, 1),
            "tokens_per_step": tokens,
            "variant": v,
            "r": r,
            "dropout": dropout,
            "trainable_m": round(trainable[v] / 1e6, 3),
            "step_ms": round(1e3 * median(times[v]), 2),
            "tokens_per_s": round(tokens / median(times[v]), 1),
            "peak_mb": round(mem[v] / 2**20, 1),
        }
        print(json.dumps(row), flush=True)
    out = {"model": name, "params_m": round(params / 1e6, 1), "r": r, "dropout": dropout}
    for a, b in [
        ("vlmtune-lora", "peft-lora"),
        ("vlmtune-dora", "peft-dora"),
        ("vlmtune-dora", "vlmtune-lora"),
    ]:
        out[f"time {a}/{b}"] = paired_ratio(times, a, b)
        out[f"mem {a}/{b}"] = mem[a] / max(mem[b], 1)
    return out


def table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k.startswith(("time", "mem"))]
    head = "| model | params (M) | r | dropout | " + " | ".join(keys) + " |"
    lines = [head, "|---" * (4 + len(keys)) + "|"]
    for row in rows:
        vals = " | ".join(f"{row[k]:.3f}" for k in keys)
        lines.append(f"| {row['model']} | {row['params_m']} | {row['r']} | {row['dropout']} | {vals} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=list(SIZES), default=None)
    p.add_argument("--small", action="store_true", help="CPU sizes (default when CUDA is unavailable)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--ranks", nargs="+", type=int, default=[128])
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (1 on CPU, 3 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU, see README)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.device = "cuda" if cuda else "cpu"
    small = args.small or not cuda
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.models = args.models or ["tiny", "small" if small else "1b"]
    args.dtype = args.dtype or ("float32" if small else "bfloat16")
    args.repeats = args.repeats or (5 if small else 20)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    info = {
        "bench": "train_step",
        "device": device_description(device),
        "dtype": args.dtype,
        "clock": clock(device),
    }
    print(json.dumps({**info, "command": " ".join(["python", *sys.argv])}), flush=True)
    rows = [run_model(m, r, args.dropout, args, info) for m in args.models for r in args.ranks]
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
