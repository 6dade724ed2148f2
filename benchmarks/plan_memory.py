"""`vlmtune plan`'s single-process (DDP row, 1 GPU) peak estimate vs the measured peak of a training step.

The model is the `small` LLaVA of ``train_step.py`` (CPU default; ``1b`` on CUDA) with the LLaVA-1.5
LoRA recipe on the language model (r=128, alpha=256, dropout 0.05; vision tower and projector frozen),
AdamW. The planner sees only the model's ``config.json`` (written to a temporary folder) and the
recipe; the measurement runs two real steps (the second is the steady state: optimizer states live)
and takes the peak of tensor storages over both (``memory.peak_step_memory``: ``TensorMemory`` on
CPU, ``max_memory_allocated`` on CUDA) plus the parameters. Variants: LoRA, DoRA, LoRA with gradient
checkpointing.

    python benchmarks/plan_memory.py                 # small on CPU (1b on CUDA)
    python benchmarks/plan_memory.py --model tiny
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from memory import peak_step_memory
from train_step import SIZES, build_llava, make_batch

from vlmtune.adapters import AdapterSpec, attach
from vlmtune.core.config import load_config
from vlmtune.plan import make_plan
from vlmtune.train.trainer import enable_checkpointing

TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]


def recipe(method: str, folder: Path, size, checkpointing: bool, dtype: str) -> list[str]:
    n_img = (size.image_size // size.patch_size) ** 2
    return [
        f"model.name_or_path={folder}",
        f"model.dtype={dtype}",
        f"model.gradient_checkpointing={str(checkpointing).lower()}",
        f"adapters.language.method={method}",
        "adapters.projector.method=frozen",
        f"data.max_length={n_img + size.text_tokens}",
        f"train.batch_size={size.batch}",
    ]


def measured_peak(size, method: str, checkpointing: bool, device: torch.device, dtype: torch.dtype) -> int:
    """Parameters + peak of two AdamW steps (bytes)."""
    torch.manual_seed(0)
    model = build_llava(size).to(device=device, dtype=dtype)
    spec = AdapterSpec(method=method, r=128, alpha=256, dropout=0.05, targets=TARGETS)
    attach(model, {"language": ["model.language_model", "lm_head"]}, {"language": spec})
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    batch = make_batch(size, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def two_steps() -> None:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + peak_step_memory(two_steps, device)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(SIZES), default="1b" if cuda else "small")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    dtype, dtype_name = (torch.bfloat16, "bfloat16") if cuda else (torch.float32, "float32")
    size = SIZES[args.model]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        build_llava_config(size).save_pretrained(tmp)
        for method, ckpt in (("lora", False), ("dora", False), ("lora", True)):
            cfg = load_config("llava-lora", recipe(method, Path(tmp), size, ckpt, dtype_name))
            planned = make_plan(cfg, gpus=1, gpu_mem=80 * 1024**3).table[0].total  # DDP row, 1 GPU
            measured = measured_peak(size, method, ckpt, device, dtype)
            row = {
                "model": args.model,
                "variant": method + ("+checkpointing" if ckpt else ""),
                "device": str(device),
                "planned_mib": round(planned / 2**20, 1),
                "measured_mib": round(measured / 2**20, 1),
                "planned_over_measured": round(planned / measured, 3),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    worst = max(abs(r["planned_over_measured"] - 1) for r in results)
    print(json.dumps({"worst_relative_error": round(worst, 3), "within_20pct": worst <= 0.2}))
    return 0 if worst <= 0.2 else 1


def build_llava_config(size):
    """The config of ``train_step.build_llava(size)`` (built on meta: no weights)."""
    with torch.device("meta"):
        return build_llava(size).config


if __name__ == "__main__":
    sys.exit(main())
