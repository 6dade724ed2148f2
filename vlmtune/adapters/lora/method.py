"""LoRA in the registry: options (none beyond the spec's r, alpha, dropout, rslora) and PEFT mapping.

PEFT: ``LoraConfig`` layer; tensors ``lora_A.weight`` (r, in), ``lora_B.weight`` (out, r). In a folder
with ``use_dora: true`` (another layer is DoRA) a LoRA layer also writes ``lora_magnitude_vector`` =
``||W0 + s B A||_c`` so that PEFT's DoRA forward computes exactly this LoRA (see ``peft_io``).
"""

from __future__ import annotations

import re

from torch import nn

from vlmtune.adapters.lora.layer import LoraLinear
from vlmtune.adapters.method import Method, PeftLayer, PeftLayerInfo
from vlmtune.core.adapter_spec import lora_alpha

LORA_TENSORS = frozenset({"lora_A.weight", "lora_B.weight"})


def peft_pattern(cfg: dict, pattern_key: str, default_key: str, path: str, default: float) -> float:
    """A per-module value of a PEFT ``LoraConfig`` (``rank_pattern`` / ``alpha_pattern``) or its default."""
    for key, value in (cfg.get(pattern_key) or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return cfg.get(default_key, default)


def lora_kwargs(info: PeftLayerInfo) -> dict:
    """LoraLinear arguments from a PEFT ``LoraConfig`` and the layer's ``lora_A`` shape."""
    cfg = info.config
    return {
        "r": info.shapes["lora_A.weight"][0],
        "alpha": peft_pattern(cfg, "alpha_pattern", "lora_alpha", info.path, 8),
        "dropout": cfg.get("lora_dropout", 0.0),
        "rslora": bool(cfg.get("use_rslora", False)),
    }


def build(base: nn.Linear, spec, options, shared) -> LoraLinear:
    return LoraLinear(base, spec.r, lora_alpha(spec), spec.dropout, spec.rslora)


METHOD = Method(
    name="lora",
    kind="layer",
    label="LoRA",
    build=build,
    peft=(
        PeftLayer(
            LoraLinear, "LORA", LORA_TENSORS, False, lambda base, i: LoraLinear(base, **lora_kwargs(i))
        ),
    ),
)
