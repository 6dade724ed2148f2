"""Adapter folders in Hugging Face PEFT's format.

    adapter_config.json           PEFT ``LoraConfig`` (peft_type LORA, use_dora, r, lora_alpha, ...)
    adapter_model.safetensors     base_model.model.<path>.lora_A.weight / lora_B.weight
                                  / lora_magnitude_vector (DoRA)
    vlmtune_adapter.json          vlmtune's own description (towers, methods, full specs)
    trainable_extras.safetensors  other trained tensors (projector, biases, prompts) by model key

``peft.PeftModel.from_pretrained(base, folder)`` loads a LoRA or DoRA folder written here, and
:func:`load_adapter` reads folders written by PEFT.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.inject import AdapterError, adapter_layers, attach
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.spec import AdapterSpec
from vlmtune.utils.io import atomic_write_json, atomic_write_safetensors

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "vlmtune_adapter.json"
EXTRAS_NAME = "trainable_extras.safetensors"


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT-keyed tensors of every LoRA/DoRA layer."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in adapter_layers(model):
        key = PEFT_PREFIX + path
        out.update(layer.adapter_state(key))
    return out


def extras_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors outside low-rank adapter layers, under their model keys."""
    in_adapters = {id(p) for _, layer in adapter_layers(model) for p in layer.parameters()}
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if p.requires_grad and id(p) not in in_adapters
    }


def peft_config(model: nn.Module, base_name_or_path: str | None) -> dict:
    """A ``LoraConfig`` dict describing the adapted layers by their full paths."""
    layers = dict(adapter_layers(model))
    ranks = Counter(layer.r for layer in layers.values())
    alphas = Counter(layer.alpha for layer in layers.values())
    r = ranks.most_common(1)[0][0] if ranks else 8
    alpha = alphas.most_common(1)[0][0] if alphas else 8
    first = next(iter(layers.values()), None)
    dropout = getattr(getattr(first, "lora_dropout", None), "p", 0.0)
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_name_or_path,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(layers),
        "rank_pattern": {p: layer.r for p, layer in layers.items() if layer.r != r},
        "alpha_pattern": {p: layer.alpha for p, layer in layers.items() if layer.alpha != alpha},
        "use_dora": any(isinstance(layer, DoraLinear) for layer in layers.values()),
        "use_rslora": bool(first is not None and first.rslora),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
        "revision": None,
    }


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    specs: dict[str, AdapterSpec] | None = None,
    base_name_or_path: str | None = None,
) -> Path:
    """Write a PEFT-compatible adapter folder (atomically, file by file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_safetensors(lora_state_dict(model), out / WEIGHTS_NAME)
    atomic_write_json(peft_config(model, base_name_or_path), out / CONFIG_NAME)
    extras = extras_state_dict(model)
    if extras:
        atomic_write_safetensors(extras, out / EXTRAS_NAME)
    meta = {
        "format": "vlmtune-adapter/1",
        "base_model_name_or_path": base_name_or_path,
        "specs": {t: asdict(s) for t, s in (specs or {}).items() if s is not None},
    }
    atomic_write_json(meta, out / META_NAME)
    return out


def load_adapter(
    model: nn.Module,
    adapter_dir: str | Path,
    towers: dict[str, list[str]] | None = None,
) -> nn.Module:
    """Attach and load an adapter folder written by vlmtune or by PEFT onto ``model`` (in place).

    Raises :class:`AdapterError` (one line) when the folder is incomplete or a tensor does not fit
    the base model, naming the module.
    """
    folder = Path(adapter_dir)
    if not (folder / WEIGHTS_NAME).is_file():
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME}; is this an adapter folder?")
    tensors = load_file(str(folder / WEIGHTS_NAME))
    meta_path = folder / META_NAME
    if meta_path.is_file() and towers is not None:
        meta = json.loads(meta_path.read_text())
        specs = {t: AdapterSpec(**s) for t, s in meta["specs"].items()}
        attach(model, towers, specs)
    else:
        _attach_from_peft(model, folder, tensors)
    _load_lora_tensors(model, tensors, folder)
    if (folder / EXTRAS_NAME).is_file():
        _load_extras(model, load_file(str(folder / EXTRAS_NAME)), folder)
    return model


def _attach_from_peft(model: nn.Module, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Wrap the layers named in a PEFT state dict, with rank from the tensors and alpha from the config."""
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_NAME}; is this an adapter folder?")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type={cfg.get('peft_type')} is not supported (LORA only)")
    model.requires_grad_(False)
    paths = sorted({k[len(PEFT_PREFIX) :].rsplit(".lora_A.", 1)[0] for k in tensors if ".lora_A." in k})
    for path in paths:
        try:
            base = model.get_submodule(path)
        except AttributeError:
            raise AdapterError(
                f"{folder / WEIGHTS_NAME}: module '{path}' does not exist in this base model"
            ) from None
        if not isinstance(base, nn.Linear):
            raise AdapterError(
                f"{folder / WEIGHTS_NAME}: module '{path}' is {type(base).__name__}, not nn.Linear"
            )
        r = tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"].shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, path, cfg.get("lora_alpha", 8))
        cls = DoraLinear if cfg.get("use_dora") else LoraLinear
        layer = cls(base, r, alpha, cfg.get("lora_dropout", 0.0), cfg.get("use_rslora", False))
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)


def _pattern_value(patterns: dict, path: str, default):
    import re

    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _load_lora_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    layers = dict(adapter_layers(model))
    for key, value in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise AdapterError(f"{folder / WEIGHTS_NAME}: unexpected key '{key}' (not a PEFT LoRA key)")
        path, _, leaf = key[len(PEFT_PREFIX) :].partition(".lora_")
        if path not in layers:
            raise AdapterError(
                f"{folder / WEIGHTS_NAME}: '{path}' has adapter weights but is not adapted in this model; "
                "was the adapter trained with other targets?"
            )
        layers[path].load_adapter_tensor("lora_" + leaf, value, where=f"{folder / WEIGHTS_NAME}: module {path!r}")


def _load_extras(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key not in params:
            raise AdapterError(f"{folder / EXTRAS_NAME}: '{key}' is not a parameter of this model")
        target = params[key]
        if target.shape != value.shape:
            raise AdapterError(
                f"{folder / EXTRAS_NAME}: '{key}' has shape {tuple(value.shape)} but the model expects "
                f"{tuple(target.shape)}; the adapter was trained on a different base model"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
