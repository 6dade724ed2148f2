"""Tuned weights W_t rebuilt from an adapter folder (vlmtune or PEFT format) and the base W_0.

* LoRA / DyLoRA:  W_t = W_0 + s B A                       (s = alpha/r, rsLoRA alpha/sqrt(r))
* DoRA:           W_t = m (W_0 + s B A) / ||W_0 + s B A||_c  (the merged weight; its row norms are m)
* magnitude-only: W_t = m W_0 / ||W_0||_c
* VeRA / DVoRA:   as above with Λ_b B Λ_d A as the update
* full FT:        W_t is stored as is (``<path>.weight`` in ``trainable_extras.safetensors``)

The layer classes themselves do the merge, so this is the same arithmetic as training and
``vlmtune merge``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.granularity import MagnitudeOnlyLinear
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.peft_io import (
    EXTRAS_NAME,
    PEFT_PREFIX,
    VERA_A_KEY,
    VERA_B_KEY,
    WEIGHTS_NAME,
    _pattern_value,
    read_peft_config,
)
from vlmtune.adapters.vera import DVoraLinear, VeraLinear, VeraProjection
from vlmtune.core.errors import AdapterError

_LEAF = re.compile(
    r"^(.*)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|vera_lambda_b|vera_lambda_d)$"
)


def _linear(w0: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    layer.weight.data = w0.detach().float().clone()
    return layer


@torch.no_grad()
def finetuned_weights(adapter_dir: str | Path, base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{path: W_t (out, in) fp32} for every path of ``base`` ({path: W_0}) tuned in the folder.

    Paths the folder does not touch are left out.
    """
    folder = Path(adapter_dir)
    out: dict[str, torch.Tensor] = {}
    if (folder / EXTRAS_NAME).is_file():
        extras = load_file(str(folder / EXTRAS_NAME))
        for path in base:
            if f"{path}.weight" in extras:
                out[path] = extras[f"{path}.weight"].float()
    if not (folder / WEIGHTS_NAME).is_file():
        if out:
            return out
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME} or {EXTRAS_NAME}; is this an adapter folder?")
    tensors = load_file(str(folder / WEIGHTS_NAME))
    leaves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _LEAF.match(key[len(PEFT_PREFIX) :]) if key.startswith(PEFT_PREFIX) else None
        if m and m.group(1) in base:
            leaves.setdefault(m.group(1), {})[m.group(2)] = value
    if not leaves:
        return out
    cfg = read_peft_config(folder)
    proj = _vera_projection(cfg, tensors, base, folder) if cfg.get("peft_type") == "VERA" else None
    for path, found in leaves.items():
        layer = _layer(cfg, path, found, _linear(base[path]), proj)
        for name, value in found.items():
            layer.load_adapter_tensor(name, value.float(), where=f"{folder / WEIGHTS_NAME}: module {path!r}")
        out[path] = layer.merged_linear().weight.detach()
    return out


def _layer(cfg: dict, path: str, found: dict, base: nn.Linear, proj: VeraProjection | None) -> nn.Module:
    if proj is not None:
        return DVoraLinear(base, proj) if "lora_magnitude_vector" in found else VeraLinear(base, proj)
    if "lora_A.weight" not in found:
        return MagnitudeOnlyLinear(base)
    r = found["lora_A.weight"].shape[0]
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, path, cfg.get("lora_alpha", 8))
    rslora = bool(cfg.get("use_rslora", False))
    if "lora_magnitude_vector" in found:
        return DoraLinear(base, r, alpha, rslora=rslora)
    return LoraLinear(base, r, alpha, rslora=rslora)


def _vera_projection(
    cfg: dict, tensors: dict[str, torch.Tensor], base: Mapping[str, torch.Tensor], folder: Path
) -> VeraProjection:
    r, seed = int(cfg.get("r", 256)), int(cfg.get("projection_prng_key", 0))
    if VERA_A_KEY in tensors:
        proj = VeraProjection(r, tensors[VERA_A_KEY].shape[1], tensors[VERA_B_KEY].shape[0], seed)
        proj.load(tensors[VERA_A_KEY], tensors[VERA_B_KEY], where=str(folder))
        return proj
    paths = [k[len(PEFT_PREFIX) :].rsplit(".", 1)[0] for k in tensors if k.endswith(".vera_lambda_b")]
    if any(p not in base for p in paths):
        raise AdapterError(
            f"{folder}: the VeRA projection was not saved; pass the base weights of every adapted layer "
            "so it can be regenerated from projection_prng_key"
        )
    return VeraProjection(r, max(base[p].shape[1] for p in paths), max(base[p].shape[0] for p in paths), seed)
