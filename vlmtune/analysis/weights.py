"""Tuned weights W_t rebuilt from an adapter folder (vlmtune or PEFT format) and the base W_0.

* LoRA / DyLoRA:  W_t = W_0 + s B A                       (s = alpha/r, rsLoRA alpha/sqrt(r))
* DoRA:           W_t = m (W_0 + s B A) / ||W_0 + s B A||_c  (the merged weight; its row norms are m)
* magnitude-only: W_t = m W_0 / ||W_0||_c
* VeRA / DVoRA:   as above with Λ_b B Λ_d A as the update
* full FT:        W_t is stored as is (PEFT ``modules_to_save`` in ``adapter_model.safetensors``,
                  or ``<path>.weight`` in ``trainable_extras.safetensors``)

The layer classes themselves do the merge, so this is the same arithmetic as training and
``vlmtune merge``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vlmtune.adapters.peft_io import (
    EXTRAS_NAME,
    VERA_A_KEY,
    WEIGHTS_NAME,
    adapter_tensors_by_path,
    build_peft_layers,
    outside_layers,
    read_meta,
    read_peft_config,
)
from vlmtune.core.errors import AdapterError
from vlmtune.core.io import read_safetensors


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
        extras = read_safetensors(folder / EXTRAS_NAME)
        for path in base:
            if f"{path}.weight" in extras:
                out[path] = extras[f"{path}.weight"].float()
    for path, layer in outside_layers(folder, {p: _linear(w) for p, w in base.items()}).items():  # DVoRA
        out[path] = layer.merged_linear().weight.detach()
    if not (folder / WEIGHTS_NAME).is_file():
        if out:
            return out
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME} or {EXTRAS_NAME}; is this an adapter folder?")
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    for path in base:  # modules_to_save (a trained projector): stored as is
        if f"base_model.model.{path}.weight" in tensors:
            out[path] = tensors[f"base_model.model.{path}.weight"].float()
    found = adapter_tensors_by_path(tensors)
    cfg = read_peft_config(folder)
    if cfg.get("peft_type") == "VERA" and VERA_A_KEY not in tensors and any(p not in base for p in found):
        raise AdapterError(
            f"{folder}: the VeRA projection was not saved; pass the base weights of every adapted layer "
            "so it can be regenerated from projection_prng_key"
        )
    bases = {path: _linear(base[path]) for path in sorted(found) if path in base}
    if not bases:
        return out
    where = folder / WEIGHTS_NAME
    layers = build_peft_layers(bases, found, cfg, read_meta(folder).get("modules") or {}, where, tensors)
    for path, layer in layers.items():
        for name, value in found[path].items():
            if name in layer._adapter_tensors():  # a LoRA layer's identity magnitude is derived: skip it
                layer.load_adapter_tensor(name, value.float(), where=f"{where}: module {path!r}")
        out[path] = layer.merged_linear().weight.detach()
    return out
