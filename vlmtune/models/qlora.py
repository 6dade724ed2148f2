"""QLoRA (Dettmers et al., 2023): the frozen language model in 4-bit NF4 through ``bitsandbytes``.

Only the base weights change: ``W`` is stored as NF4 blocks (double-quantised scales) and
dequantised to the compute dtype (bf16) on the fly; the LoRA matrices are created in that compute
dtype and their math is unchanged (``h = dequant(W) x + s B A x``). Optional paged optimizers
(``train.optimizer=paged_adamw`` with fp32 states, or ``paged_adamw_8bit``) move optimizer state to
CPU memory under GPU memory pressure (QLoRA §3). DoRA on 4-bit layers is refused with one line (its
column norm needs ``W0`` in full precision). Needs a CUDA GPU and ``pip install vlmtune[qlora]``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from vlmtune.core.config import ConfigError, RunConfig

REFUSAL = (
    "model.load_in_4bit=true needs a CUDA GPU and bitsandbytes; {why}: run on a CUDA machine with "
    "`pip install vlmtune[qlora]`, or set model.load_in_4bit=false"
)


def unavailable_reason() -> str | None:
    """Why 4-bit loading cannot work here (``None`` when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def check_4bit(cfg: RunConfig) -> None:
    """Raise a one-line :class:`ConfigError` when ``model.load_in_4bit`` or a paged optimizer cannot
    be honoured."""
    if cfg.model.load_in_4bit and (why := unavailable_reason()) is not None:
        raise ConfigError(REFUSAL.format(why=why))
    if cfg.train.optimizer.startswith("paged_") and (why := unavailable_reason()) is not None:
        raise ConfigError(
            f"train.optimizer={cfg.train.optimizer} needs a CUDA GPU and bitsandbytes; {why}: run on a CUDA "
            "machine with `pip install vlmtune[qlora]`, or set train.optimizer=adamw"
        )


def paged_optimizer(groups: list[dict], name: str, lr: float) -> torch.optim.Optimizer:
    """bitsandbytes' paged AdamW: ``paged_adamw`` (32-bit states) or ``paged_adamw_8bit``."""
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.PagedAdamW32bit
    return cls(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def quantization_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Extra ``from_pretrained`` keyword arguments: NF4 + double quantisation, bf16 compute, the
    model placed on this process's GPU; ``{}`` when ``model.load_in_4bit`` is false."""
    if not cfg.model.load_in_4bit:
        return {}
    check_4bit(cfg)
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"],
        ),
        "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))},
    }


def is_quantized(model: torch.nn.Module) -> bool:
    """A bitsandbytes-quantised model (already on its device; ``.to()`` is not allowed)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False))
