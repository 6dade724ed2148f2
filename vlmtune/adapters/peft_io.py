"""Adapter folders in Hugging Face PEFT's format.

    adapter_config.json           PEFT ``LoraConfig`` (peft_type LORA, use_dora, r, lora_alpha, ...)
                                  or ``VeraConfig`` (peft_type VERA, r, projection_prng_key, ...)
    adapter_model.safetensors     LORA: base_model.model.<path>.lora_A.weight / lora_B.weight
                                        / lora_magnitude_vector (DoRA, magnitude-only DoRA)
                                  VERA: base_model.model.<path>.vera_lambda_b / vera_lambda_d
                                        [/ lora_magnitude_vector: DVoRA, vlmtune only]
                                        + base_model.vera_A / base_model.vera_B (save_projection)
    vlmtune_adapter.json          vlmtune's own description (towers, methods, full specs)
    trainable_extras.safetensors  other trained tensors (projector, biases, prompts, bottleneck
                                  adapters, a second adapter family) by model key

The PEFT file holds one family: VeRA when every weight adapter is VeRA/DVoRA, else LoRA (LoRA,
DoRA, DyLoRA at ``r_max``, magnitude-only DoRA). ``peft.PeftModel.from_pretrained(base, folder)``
loads LoRA, DoRA and VeRA folders written here, and :func:`load_adapter` reads folders written by
PEFT.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.granularity import MagnitudeOnlyLinear
from vlmtune.adapters.inject import adapter_layers, attach
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.vera import DVoraLinear, VeraLinear, VeraProjection
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError
from vlmtune.core.io import atomic_write_json, atomic_write_safetensors

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "vlmtune_adapter.json"
EXTRAS_NAME = "trainable_extras.safetensors"
VERA_A_KEY, VERA_B_KEY = "base_model.vera_A", "base_model.vera_B"
_LEAF = re.compile(
    r"^(.*)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|vera_lambda_b|vera_lambda_d)$"
)


def family(layer: nn.Module) -> str:
    """``vera`` for VeRA/DVoRA layers, ``lora`` for the rest."""
    return "vera" if isinstance(layer, VeraLinear) else "lora"


def peft_family(model: nn.Module) -> str:
    """The family written to the PEFT file: ``vera`` only when every weight adapter is VeRA."""
    families = {family(layer) for _, layer in adapter_layers(model)}
    return "vera" if families == {"vera"} else "lora"


def _peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    fam = peft_family(model)
    return {p: layer for p, layer in adapter_layers(model) if family(layer) == fam}


def vera_projection(model: nn.Module) -> VeraProjection | None:
    for _, layer in adapter_layers(model):
        if isinstance(layer, VeraLinear):
            return layer.vera_projection
    return None


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT-keyed tensors of every layer of the PEFT family (+ VeRA's shared pair if saved)."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in _peft_layers(model).items():
        out.update(layer.adapter_state(PEFT_PREFIX + path))
    proj = vera_projection(model)
    if peft_family(model) == "vera" and proj is not None and proj.save_projection:
        out[VERA_A_KEY] = proj.vera_A.detach().contiguous()
        out[VERA_B_KEY] = proj.vera_B.detach().contiguous()
    return out


def extras_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors not in the PEFT file, under their model keys."""
    in_peft = {id(t) for layer in _peft_layers(model).values() for t in layer._adapter_tensors().values()}
    return {
        name: p.detach() for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_peft
    }


def peft_config(model: nn.Module, base_name_or_path: str | None) -> dict:
    """A PEFT ``LoraConfig`` or ``VeraConfig`` dict describing the adapted layers by full path."""
    if peft_family(model) == "vera":
        return vera_config(model, base_name_or_path)
    layers = _peft_layers(model)
    ranks = Counter(layer.r for layer in layers.values())
    alphas = Counter(layer.alpha for layer in layers.values())
    r = ranks.most_common(1)[0][0] if ranks else 8
    alpha = alphas.most_common(1)[0][0] if alphas else 8
    first = next((layer for layer in layers.values() if isinstance(layer, LoraLinear)), None)
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
        "use_dora": any(isinstance(layer, DoraLinear | MagnitudeOnlyLinear) for layer in layers.values()),
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


def vera_config(model: nn.Module, base_name_or_path: str | None) -> dict:
    """A PEFT ``VeraConfig`` dict (peft_type VERA)."""
    layers = _peft_layers(model)
    first = next(iter(layers.values()))
    proj = first.vera_projection
    return {
        "peft_type": "VERA",
        "task_type": None,
        "base_model_name_or_path": base_name_or_path,
        "r": proj.r,
        "target_modules": sorted(layers),
        "projection_prng_key": proj.seed,
        "save_projection": proj.save_projection,
        "vera_dropout": getattr(first.vera_dropout, "p", 0.0),
        "d_initial": first.d_initial,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "init_weights": True,
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
    meta: dict = {"format": "vlmtune-adapter/1", "base_model_name_or_path": base_name_or_path}
    if specs:
        meta["specs"] = {t: asdict(s) for t, s in specs.items() if s is not None}
    else:  # no tower specs given: describe the attached layers themselves (groups of equal settings)
        towers, derived = derived_layout(model)
        meta["towers"], meta["specs"] = towers, {t: asdict(s) for t, s in derived.items()}
    atomic_write_json(meta, out / META_NAME)
    return out


def layer_spec(layer: nn.Module) -> tuple[AdapterSpec, str]:
    """The :class:`AdapterSpec` that rebuilds ``layer`` and the spec list its leaf name goes in
    (``targets``, or ``magnitude_only`` for a magnitude-only DoRA layer)."""
    if isinstance(layer, MagnitudeOnlyLinear):
        return AdapterSpec(method="dora", alpha=layer.alpha), "magnitude_only"
    dropout = getattr(layer, "lora_dropout", None) or getattr(layer, "vera_dropout", None)
    spec = AdapterSpec(
        method=layer.method,
        r=int(getattr(layer, "r", 8)),
        alpha=float(getattr(layer, "alpha", 16.0)),
        dropout=float(getattr(dropout, "p", 0.0)),
        rslora=bool(getattr(layer, "rslora", False)),
        detach_norm=bool(getattr(layer, "detach_norm", True)),
    )
    if isinstance(layer, VeraLinear):
        proj = layer.vera_projection
        spec.options = {
            "projection_prng_key": proj.seed,
            "save_projection": proj.save_projection,
            "d_initial": layer.d_initial,
        }
    return spec, "targets"


def derived_layout(model: nn.Module) -> tuple[dict[str, list[str]], dict[str, AdapterSpec]]:
    """({group: module paths}, {group: spec}) rebuilding every attached weight adapter of ``model``:
    each group is one set of equal settings, its "tower" prefixes are the layers' own paths."""
    groups: dict[str, tuple[AdapterSpec, str, list[str]]] = {}
    for path, layer in adapter_layers(model):
        spec, field_name = layer_spec(layer)
        key = json.dumps([asdict(spec), field_name], sort_keys=True)
        groups.setdefault(key, (spec, field_name, []))[2].append(path)
    towers: dict[str, list[str]] = {}
    specs: dict[str, AdapterSpec] = {}
    for i, (spec, field_name, paths) in enumerate(groups.values()):
        setattr(spec, field_name, sorted({p.rsplit(".", 1)[-1] for p in paths}))
        towers[f"layers{i}"], specs[f"layers{i}"] = paths, spec
    return towers, specs


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
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    specs = {t: AdapterSpec(**s) for t, s in (meta.get("specs") or {}).items()}
    if specs and "towers" in meta:  # saved without tower specs: the layers' own paths
        for paths in meta["towers"].values():
            for path in paths:
                _base_linear(model, path, meta_path)
        attach(model, meta["towers"], specs)
    elif specs and towers is not None:
        attach(model, towers, specs)
    else:
        _attach_from_peft(model, folder, tensors)
    check_tensors(model, tensors, folder)
    _load_peft_tensors(model, tensors, folder)
    if (folder / EXTRAS_NAME).is_file():
        _load_extras(model, load_file(str(folder / EXTRAS_NAME)), folder)
    return model


def read_peft_config(folder: Path) -> dict:
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_NAME}; is this an adapter folder?")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def _base_linear(model: nn.Module, path: str, where: Path) -> nn.Linear:
    try:
        base = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"{where}: module '{path}' does not exist in this base model") from None
    if not isinstance(base, nn.Linear):
        raise AdapterError(f"{where}: module '{path}' is {type(base).__name__}, not nn.Linear")
    return base


def _set(model: nn.Module, path: str, layer: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def _attach_from_peft(model: nn.Module, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Wrap the layers named in a PEFT state dict (LORA or VERA), sizes from the tensors."""
    cfg = read_peft_config(folder)
    kind = cfg.get("peft_type", "LORA")
    if kind not in ("LORA", "VERA"):
        raise AdapterError(f"{folder / CONFIG_NAME}: peft_type={kind} is not supported (LORA or VERA)")
    model.requires_grad_(False)
    weights = folder / WEIGHTS_NAME
    by_path: dict[str, set[str]] = {}
    for key in tensors:
        m = _LEAF.match(key[len(PEFT_PREFIX) :]) if key.startswith(PEFT_PREFIX) else None
        if m:
            by_path.setdefault(m.group(1), set()).add(m.group(2))
    if kind == "VERA":
        _attach_vera_from_peft(model, cfg, tensors, by_path, weights)
        return
    for path, leaves in sorted(by_path.items()):
        base = _base_linear(model, path, weights)
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, path, cfg.get("lora_alpha", 8))
        if "lora_A.weight" not in leaves:
            if "lora_magnitude_vector" in leaves:  # magnitude-only DoRA (granularity)
                _set(model, path, MagnitudeOnlyLinear(base, alpha))
                continue
            raise AdapterError(f"{weights}: module '{path}' has no lora_A.weight")
        r = tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"].shape[0]
        cls = DoraLinear if cfg.get("use_dora") else LoraLinear
        _set(model, path, cls(base, r, alpha, cfg.get("lora_dropout", 0.0), cfg.get("use_rslora", False)))


def _attach_vera_from_peft(
    model: nn.Module, cfg: dict, tensors: dict[str, torch.Tensor], by_path: dict[str, set[str]], weights: Path
) -> None:
    """VeRA layers around one shared pair: saved (``vera_A``/``vera_B``) or regenerated from the seed."""
    bases = {path: _base_linear(model, path, weights) for path in sorted(by_path)}
    if not bases:
        raise AdapterError(f"{weights}: no vera_lambda_* tensors; is this a VeRA adapter?")
    r = int(cfg.get("r", 256))
    in_max = max(b.in_features for b in bases.values())
    out_max = max(b.out_features for b in bases.values())
    if VERA_A_KEY in tensors:
        in_max, out_max = tensors[VERA_A_KEY].shape[1], tensors[VERA_B_KEY].shape[0]
    seed = int(cfg.get("projection_prng_key", 0))
    proj = VeraProjection(r, in_max, out_max, seed, bool(cfg.get("save_projection", True)))
    proj = proj.to(next(iter(bases.values())).weight.device)
    kw = {"dropout": cfg.get("vera_dropout", 0.0), "d_initial": cfg.get("d_initial", 0.1)}
    for path, base in bases.items():
        cls = DVoraLinear if "lora_magnitude_vector" in by_path[path] else VeraLinear
        _set(model, path, cls(base, proj, **kw))


def _pattern_value(patterns: dict, path: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Refuse a PEFT file whose tensors are not exactly those of the attached layers: missing,
    unexpected or mis-shaped keys are one :class:`AdapterError` line naming the first few."""
    shared = (VERA_A_KEY, VERA_B_KEY)  # the VeRA pair is checked by VeraProjection.load
    want = {k: tuple(v.shape) for k, v in lora_state_dict(model).items() if k not in shared}
    got = {k: tuple(v.shape) for k, v in tensors.items() if k not in shared}
    missing = sorted(want.keys() - got.keys())
    if missing:
        raise AdapterError(
            f"{folder}: {len(missing)} adapter tensor(s) missing from {WEIGHTS_NAME}: {_first(missing)}; "
            "the folder is incomplete or was written for other targets"
        )
    unexpected = sorted(got.keys() - want.keys())
    if unexpected:
        raise AdapterError(
            f"{folder}: {len(unexpected)} unexpected tensor(s) in {WEIGHTS_NAME}: {_first(unexpected)}; "
            "not adapted in this model (was the adapter trained with other targets?)"
        )
    wrong = sorted(k for k in want if want[k] != got[k])
    if wrong:
        shown = [f"{k} {got[k]} (model needs {want[k]})" for k in wrong]
        raise AdapterError(
            f"{folder}: {len(wrong)} tensor(s) in {WEIGHTS_NAME} with the wrong shape: {_first(shown)}; "
            "the adapter was trained on a base model with other sizes or another rank"
        )


def _load_peft_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    where = folder / WEIGHTS_NAME
    layers = dict(adapter_layers(model))
    if VERA_A_KEY in tensors or VERA_B_KEY in tensors:
        proj = vera_projection(model)
        if proj is None or VERA_A_KEY not in tensors or VERA_B_KEY not in tensors:
            raise AdapterError(f"{where}: has a VeRA projection but this model has no complete VeRA layers")
        proj.load(tensors[VERA_A_KEY], tensors[VERA_B_KEY], where=str(where))
    for key, value in tensors.items():
        if key in (VERA_A_KEY, VERA_B_KEY):
            continue
        m = _LEAF.match(key[len(PEFT_PREFIX) :]) if key.startswith(PEFT_PREFIX) else None
        if m is None:
            raise AdapterError(f"{where}: unexpected key '{key}' (not a PEFT LoRA/VeRA key)")
        path, leaf = m.groups()
        if path not in layers:
            raise AdapterError(
                f"{where}: '{path}' has adapter weights but is not adapted in this model; "
                "was the adapter trained with other targets?"
            )
        layers[path].load_adapter_tensor(leaf, value, where=f"{where}: module {path!r}")


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
