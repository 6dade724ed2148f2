"""Adapter folders in Hugging Face PEFT's format (peft 0.21), written and read through the registry.

    adapter_config.json           PEFT ``LoraConfig`` (peft_type LORA) or ``VeraConfig`` (VERA), with
                                  ``base_model_name_or_path`` = the model folder or hub id that was
                                  loaded and ``modules_to_save`` = the fully trained modules
    adapter_model.safetensors     base_model.model.<path>.<tensor> for every adapted layer (tensor names
                                  from its method's :class:`~vlmtune.adapters.method.PeftLayer`),
                                  base_model.model.<param> for the modules_to_save (projector...),
                                  base_model.vera_A / vera_B (VeRA, save_projection)
    vlmtune_adapter.json          vlmtune's own description: tower specs, the method of every adapted
                                  module, the base as given (a preset name stays a name) and its
                                  folder, and ``base`` (the caller's ``base_info``, e.g. a fingerprint)
    trainable_extras.safetensors  other trained tensors no PEFT file can hold (prompts, bottleneck
                                  adapters, a lone bias, a second adapter family, DVoRA layers) by
                                  model key, + base_model.vera_A / vera_B for DVoRA (save_projection)

The PEFT file holds one family: VeRA when every weight adapter is VeRA, else LoRA. Layers PEFT cannot
represent (DVoRA: PEFT 0.21 has no DVoRA, a ``VeraConfig`` would load it as plain VeRA and ignore its
magnitude) stay out of ``target_modules``; their tensors go to ``trainable_extras.safetensors`` and are
listed under ``not_in_peft``. A folder of such layers only has ``target_modules: []``, which PEFT
refuses to load; vlmtune rebuilds them from ``vlmtune_adapter.json`` (``layout`` when saved with tower
specs) and regenerates VeRA's shared pair from its seed.

**Mixed LoRA and DoRA layers** (e.g. DoRA on the language tower, LoRA on the vision tower): PEFT has
one model-wide ``use_dora``. The folder sets it when any layer is DoRA and gives every plain LoRA
layer the magnitude ``m = ||W0 + s B A||_c`` (computed at save time, fp32, detached). PEFT's DoRA
forward is ``y = W0 x + b + (m/||W0 + s B A||_c - 1) W0 x + (m/||W0 + s B A||_c) s B A drop(x)``
(its norm is detached), so with that ``m`` the ratio is 1 and the layer computes exactly
``W0 x + b + s B A drop(x)``: LoRA, in eval and in train mode, with or without dropout and bias
(further training in PEFT moves ``m`` and makes it DoRA, as PEFT would). vlmtune reads such a layer
back as LoRA (``vlmtune_adapter.json`` names its method) after checking that its magnitude still is
that norm; a plain PEFT reader sees DoRA with ratio 1, the same function.

**Mixed rsLoRA** (rsLoRA on one tower only): PEFT's ``use_rslora`` is model-wide too. It is true only
when every low-rank layer is rsLoRA; otherwise the folder writes false and each rsLoRA layer gets
``alpha_pattern`` = alpha * sqrt(r), so PEFT's ``alpha / r`` is rsLoRA's ``alpha / sqrt(r)`` (LoRA
and DoRA layers alike). ``vlmtune_adapter.json`` keeps each tower's own ``rslora`` and alpha.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vlmtune.adapters import registry
from vlmtune.adapters.attach import adapter_layers, attach
from vlmtune.adapters.lora.layer import lora_scaling
from vlmtune.adapters.method import PeftLayer, PeftLayerInfo
from vlmtune.adapters.report import adapter_param_ids
from vlmtune.adapters.targets import base_linear, replace_module
from vlmtune.adapters.vera.layer import VeraLinear, VeraProjection, shared_projection
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError
from vlmtune.core.io import atomic_write_json, atomic_write_safetensors, read_safetensors

PEFT_PREFIX = "base_model.model."
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "vlmtune_adapter.json"
EXTRAS_NAME = "trainable_extras.safetensors"
VERA_A_KEY, VERA_B_KEY = "base_model.vera_A", "base_model.vera_B"
MAGNITUDE = "lora_magnitude_vector"
FORMAT = "vlmtune-adapter/2"


# ---------------------------------------------------------------- which layers go into the PEFT file
def peft_type(layer: nn.Module) -> str | None:
    p = registry.peft_layer_of(layer)
    return None if p is None else p.peft_type


def peft_family(model: nn.Module) -> str:
    """The PEFT type of the file: ``VERA`` only when every weight adapter is VeRA, else ``LORA``
    (layers without a PEFT type, e.g. DVoRA, are in neither: see the module docstring)."""
    types = {peft_type(layer) for _, layer in adapter_layers(model)}
    return "VERA" if types == {"VERA"} else "LORA"


def _peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    fam = peft_family(model)
    return {p: layer for p, layer in adapter_layers(model) if peft_type(layer) == fam}


def model_uses_dora(model: nn.Module) -> bool:
    """Whether the PEFT file needs ``use_dora`` (some layer of its family carries a magnitude)."""
    return any(registry.peft_layer_of(layer).dora for layer in _peft_layers(model).values())


@torch.no_grad()
def identity_magnitude(layer: nn.Module) -> torch.Tensor:
    """``||W0 + s B A||_c`` (out,) in fp32 at the saved rank: the DoRA magnitude that makes PEFT's DoRA
    forward equal this LoRA layer (module docstring). Computed like PEFT (dense, ``linalg.norm``)."""
    a, b = layer.lora_A.weight.float(), layer.lora_B.weight.float()
    w = layer.base_layer.weight.float() + lora_scaling(layer.r, layer.alpha, layer.rslora) * (b @ a)
    return torch.linalg.norm(w, dim=1).to(layer.lora_A.weight.dtype)


def _derived_magnitude(layer: nn.Module, use_dora: bool) -> bool:
    """Whether ``layer`` writes an identity magnitude: a LoRA-type layer in a ``use_dora`` LORA file."""
    p = registry.peft_layer_of(layer)
    return use_dora and p.peft_type == "LORA" and not p.dora


def peft_shapes(model: nn.Module, use_dora: bool) -> dict[str, tuple[int, ...]]:
    """{PEFT key: shape} of the adapter tensors the PEFT file holds for ``model`` (no VeRA pair)."""
    out: dict[str, tuple[int, ...]] = {}
    for path, layer in _peft_layers(model).items():
        for name, t in layer._adapter_tensors().items():
            out[f"{PEFT_PREFIX}{path}.{name}"] = tuple(t.shape)
        if _derived_magnitude(layer, use_dora):
            out[f"{PEFT_PREFIX}{path}.{MAGNITUDE}"] = (layer.out_features,)
    return out


def vera_projection(model: nn.Module) -> VeraProjection | None:
    for _, layer in adapter_layers(model):
        if isinstance(layer, VeraLinear):
            return layer.vera_projection
    return None


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT-keyed adapter tensors of every layer of the file's family (+ VeRA's shared pair if saved,
    + the identity magnitude of LoRA layers under ``use_dora``)."""
    use_dora = model_uses_dora(model)
    out: dict[str, torch.Tensor] = {}
    for path, layer in _peft_layers(model).items():
        out.update(layer.adapter_state(PEFT_PREFIX + path))
        if _derived_magnitude(layer, use_dora):
            out[f"{PEFT_PREFIX}{path}.{MAGNITUDE}"] = identity_magnitude(layer)
    proj = vera_projection(model)
    if peft_family(model) == "VERA" and proj is not None and proj.save_projection:
        out[VERA_A_KEY] = proj.vera_A.detach().contiguous()
        out[VERA_B_KEY] = proj.vera_B.detach().contiguous()
    return out


# ---------------------------------------------------------------- trained non-adapter modules
def modules_to_save(model: nn.Module) -> list[str]:
    """Full paths of the outermost modules whose every parameter trains and that hold no adapter
    (a trained projector, a norm layer): PEFT ``modules_to_save``. A path is kept only when PEFT's
    suffix match (``name.endswith(entry)``) finds exactly that module; a ModuleList / ModuleDict is
    listed by its items (PEFT cannot wrap a container)."""
    adapter_ids = adapter_param_ids(model)
    names = [n for n, _ in model.named_modules(remove_duplicate=False)]
    chosen: list[str] = []
    for name, module in model.named_modules():
        params = list(module.parameters())
        if (
            not name
            or isinstance(module, nn.ModuleList | nn.ModuleDict)  # peft wraps no containers: their items
            or not params
            or not all(p.requires_grad and id(p) not in adapter_ids for p in params)
            or any(name.startswith(c + ".") for c in chosen)
            or any(getattr(m, "adapter_module", False) for m in module.modules())
            or sum(n.endswith(name) for n in names) != 1
        ):
            continue
        chosen.append(name)
    return chosen


def resolve_modules_to_save(model: nn.Module, entries: list[str]) -> list[str]:
    """Full paths of the modules a PEFT ``modules_to_save`` list names, matched as PEFT does
    (``name.endswith(entry)``; ``multi_modal_projector`` in a folder written by PEFT), outermost only."""
    found: list[str] = []
    for name, _ in model.named_modules():
        if (
            name
            and any(name.endswith(e) for e in entries)
            and not any(name.startswith(f + ".") for f in found)
        ):
            found.append(name)
    return found


def _params_under(model: nn.Module, paths: list[str]) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if any(n.startswith(q + ".") for q in paths)}


def extras_state_dict(model: nn.Module, saved: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Trainable tensors neither in the PEFT file's adapter layers nor under ``saved`` (modules_to_save)."""
    in_peft = {id(t) for layer in _peft_layers(model).values() for t in layer._adapter_tensors().values()}
    in_peft |= {id(p) for p in _params_under(model, saved or []).values()}
    out = {
        name: p.detach() for name, p in model.named_parameters() if p.requires_grad and id(p) not in in_peft
    }
    proj = vera_projection(model)
    if out and peft_family(model) != "VERA" and proj is not None and proj.save_projection:
        out[VERA_A_KEY], out[VERA_B_KEY] = proj.vera_A.contiguous(), proj.vera_B.contiguous()  # DVoRA's pair
    return out


# ---------------------------------------------------------------- configs
def peft_config(model: nn.Module, base_name_or_path: str | None, saved: list[str] | None = None) -> dict:
    """A PEFT ``LoraConfig`` or ``VeraConfig`` dict describing the adapted layers by full path."""
    if peft_family(model) == "VERA":
        return vera_config(model, base_name_or_path, saved)
    layers = _peft_layers(model)
    use_rslora = file_uses_rslora(layers)
    peft_alphas = {p: peft_alpha(layer, use_rslora) for p, layer in layers.items()}
    ranks = Counter(layer.r for layer in layers.values())
    alphas = Counter(peft_alphas.values())
    r = ranks.most_common(1)[0][0] if ranks else 8
    alpha = alphas.most_common(1)[0][0] if alphas else 8
    first = next((layer for layer in layers.values() if hasattr(layer, "lora_A")), None)
    dropout = getattr(getattr(first, "lora_dropout", None), "p", 0.0)
    return {
        **_common_config(base_name_or_path, layers, saved),
        "target_modules": _target_modules(model, layers),
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "rank_pattern": {p: layer.r for p, layer in layers.items() if layer.r != r},
        "alpha_pattern": {p: a for p, a in peft_alphas.items() if a != alpha},
        "use_dora": model_uses_dora(model),
        "use_rslora": use_rslora,
        "init_lora_weights": True,
    }


def file_uses_rslora(layers: dict[str, nn.Module]) -> bool:
    """PEFT's one model-wide ``use_rslora``: true only when every low-rank layer of the file is rsLoRA
    (a magnitude-only layer has no low-rank branch and no say); mixed files write false and give the
    rsLoRA layers an equivalent ``alpha_pattern`` entry (:func:`peft_alpha`)."""
    flags = {bool(layer.rslora) for layer in layers.values() if hasattr(layer, "lora_A")}
    return flags == {True}


def peft_alpha(layer: nn.Module, use_rslora: bool) -> float:
    """The ``lora_alpha`` that gives ``layer`` its own scaling under the file's ``use_rslora``: PEFT
    scales by ``alpha / r`` (``alpha / sqrt(r)`` with use_rslora), so an rsLoRA layer in a plain file
    writes ``alpha * sqrt(r)`` (scale ``alpha / sqrt(r)``, Kalajdzievski 2023 eq. 3); a plain layer in
    an rsLoRA file ``alpha / sqrt(r)``. Layers without a low-rank branch keep their alpha."""
    rslora = bool(getattr(layer, "rslora", False))
    if not hasattr(layer, "lora_A") or rslora == use_rslora:
        return layer.alpha
    return layer.alpha * math.sqrt(layer.r) if rslora else layer.alpha / math.sqrt(layer.r)


def vera_config(model: nn.Module, base_name_or_path: str | None, saved: list[str] | None = None) -> dict:
    """A PEFT ``VeraConfig`` dict (peft_type VERA)."""
    layers = _peft_layers(model)
    first = next(iter(layers.values()))
    proj = first.vera_projection
    return {
        **_common_config(base_name_or_path, layers, saved),
        "peft_type": "VERA",
        "r": proj.r,
        "projection_prng_key": proj.seed,
        "save_projection": proj.save_projection,
        "vera_dropout": getattr(first.vera_dropout, "p", 0.0),
        "d_initial": first.d_initial,
        "init_weights": True,
    }


def _target_modules(model: nn.Module, layers: dict[str, nn.Module]) -> list[str] | str:
    """The file's adapted paths; when it has none but the model has layers PEFT cannot hold (DVoRA), a
    regex matching no module that PEFT quotes when it refuses the folder (``Target modules ... not found``)
    instead of silently loading nothing."""
    outside = sorted({_label(layer) for p, layer in adapter_layers(model) if p not in layers})
    if layers or not outside:
        return sorted(layers)
    return f"(no PEFT layers: {' and '.join(outside)} layers exist only in vlmtune; load this folder with vlmtune)"


def _label(layer: nn.Module) -> str:
    method = registry.method_of(layer)
    return layer.method if method is None else method.display


def _common_config(base_name_or_path: str | None, layers: dict, saved: list[str] | None) -> dict:
    return {
        "task_type": None,
        "base_model_name_or_path": base_name_or_path,
        "target_modules": sorted(layers),
        "modules_to_save": saved or None,
        "fan_in_fan_out": False,
        "bias": "none",
        "layers_to_transform": None,
        "layers_pattern": None,
        "inference_mode": True,
        "revision": None,
    }


def loadable_base(model: nn.Module, given: str | None) -> str | None:
    """The base others can load: the folder or hub id the model was loaded from
    (``config._name_or_path``, e.g. a preset's resolved folder), else what was given."""
    loaded = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(loaded) if loaded else given


# ---------------------------------------------------------------- save
def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    specs: dict[str, AdapterSpec] | None = None,
    base_name_or_path: str | None = None,
    base_info: dict | None = None,
) -> Path:
    """Write a PEFT-compatible adapter folder (atomically, file by file).

    ``base_name_or_path``: the base as the user named it (a preset name, a folder, a hub id); PEFT's
    config records the loadable form (:func:`loadable_base`). ``base_info``: any JSON-able dict (e.g.
    the base fingerprint) stored under ``"base"`` in ``vlmtune_adapter.json`` (:func:`read_base_info`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    saved = modules_to_save(model)
    params = _params_under(model, saved)
    tensors = {**lora_state_dict(model), **{PEFT_PREFIX + n: p.detach() for n, p in params.items()}}
    atomic_write_safetensors(tensors, out / WEIGHTS_NAME)
    loadable = loadable_base(model, base_name_or_path)
    atomic_write_json(peft_config(model, loadable, saved), out / CONFIG_NAME)
    extras = extras_state_dict(model, saved)
    if extras:
        atomic_write_safetensors(extras, out / EXTRAS_NAME)
    elif (out / EXTRAS_NAME).is_file():
        (out / EXTRAS_NAME).unlink()  # a stale file from an earlier save would load wrong tensors
    meta: dict = {
        "format": FORMAT,
        "base_model_name_or_path": base_name_or_path,
        "base_model_path": loadable,
        "modules": {p: _method_name(layer) for p, layer in adapter_layers(model)},
    }
    if specs:
        meta["specs"] = {t: asdict(s) for t, s in specs.items() if s is not None}
    else:  # no tower specs given: describe the attached layers themselves (groups of equal settings)
        towers, derived = derived_layout(model)
        meta["towers"], meta["specs"] = towers, {t: asdict(s) for t, s in derived.items()}
    if extras:  # what PeftModel.from_pretrained will not restore (vlmtune's load_adapter does)
        meta["not_in_peft"] = sorted(extras)
    outside = {p for p, _ in adapter_layers(model)} - set(_peft_layers(model))
    if specs and outside:  # layers the PEFT file does not describe: rebuilt from here without towers
        towers, derived = derived_layout(model, outside)
        meta["layout"] = {"towers": towers, "specs": {t: asdict(s) for t, s in derived.items()}}
    if base_info is not None:
        meta["base"] = base_info
    atomic_write_json(meta, out / META_NAME)
    return out


def _method_name(layer: nn.Module) -> str:
    method = registry.method_of(layer)
    return layer.method if method is None else method.name


def read_meta(folder: str | Path) -> dict:
    """``vlmtune_adapter.json`` of an adapter folder ({} for a folder written by plain PEFT)."""
    path = Path(folder) / META_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def not_in_peft_summary(folder: str | Path) -> str | None:
    """What ``PeftModel.from_pretrained`` will not see in a vlmtune folder (``not_in_peft``), in words:
    ``4 VeRA layers (path, path, ... (4 in all)); 1 other tensor (name)``; None when peft sees everything.
    The layers are counted by method from ``modules``; VeRA's shared pair belongs to its layers."""
    meta = read_meta(folder)
    keys = [k for k in meta.get("not_in_peft") or [] if k not in (VERA_A_KEY, VERA_B_KEY)]
    if not keys:
        return None
    modules = meta.get("modules") or {}
    layers: dict[str, list[str]] = {}
    others: list[str] = []
    for key in keys:
        path = key.rsplit(".", 1)[0]
        while path and path not in modules:
            path = path.rpartition(".")[0]
        if path:
            label = (
                registry.METHODS[modules[path]].display
                if modules[path] in registry.METHODS
                else modules[path]
            )
            layers.setdefault(label, [])
            if path not in layers[label]:
                layers[label].append(path)
        else:
            others.append(key)
    parts = [f"{len(paths)} {label} layer(s) ({_first(paths, 2)})" for label, paths in layers.items()]
    if others:
        parts.append(f"{len(others)} other tensor(s) ({_first(others, 2)})")
    return "; ".join(parts)


def not_in_peft_line(folder: str | Path) -> str | None:
    """The one line ``vlmtune train`` prints after saving (and ``vlmtune info`` shows) when peft would load
    the folder without some of its trained tensors; None when it loads all of them."""
    missing = not_in_peft_summary(folder)
    if missing is None:
        return None
    return (
        f"not in peft: {missing} are in {EXTRAS_NAME}, which PeftModel.from_pretrained does not read "
        "(it loads the rest without them); vlmtune merge / eval / load_adapter load all"
    )


def read_base_info(folder: str | Path) -> dict | None:
    """The ``base_info`` dict :func:`save_adapter` stored (``"base"`` in ``vlmtune_adapter.json``), or None."""
    return read_meta(folder).get("base")


def layer_spec(layer: nn.Module) -> tuple[AdapterSpec, str]:
    """The :class:`AdapterSpec` that rebuilds ``layer`` and the spec list its leaf name goes in
    (``targets``, or ``magnitude_only`` for a magnitude-only DoRA layer)."""
    name = _method_name(layer)
    if registry.peft_layer_of(layer).tensors == frozenset({MAGNITUDE}):
        return AdapterSpec(method=name, alpha=layer.alpha), "magnitude_only"
    dropout = getattr(layer, "lora_dropout", None) or getattr(layer, "vera_dropout", None)
    spec = AdapterSpec(
        method=name,
        r=int(getattr(layer, "r", 8)),
        alpha=getattr(layer, "alpha", None),
        dropout=float(getattr(dropout, "p", 0.0)),
        rslora=bool(getattr(layer, "rslora", False)),
        detach_norm=bool(getattr(layer, "detach_norm", True)),
    )
    method = registry.method_of(layer)
    if method is not None and method.layer_options is not None:
        spec.options = method.layer_options(layer)
    return spec, "targets"


def derived_layout(
    model: nn.Module, only: set[str] | None = None
) -> tuple[dict[str, list[str]], dict[str, AdapterSpec]]:
    """({group: module paths}, {group: spec}) rebuilding every attached weight adapter of ``model``
    (those at the paths in ``only`` when given): each group is one set of equal settings, its "tower"
    prefixes are the layers' own paths."""
    groups: dict[str, tuple[AdapterSpec, str, list[str]]] = {}
    for path, layer in adapter_layers(model):
        if only is not None and path not in only:
            continue
        spec, field_name = layer_spec(layer)
        key = json.dumps([asdict(spec), field_name], sort_keys=True)
        groups.setdefault(key, (spec, field_name, []))[2].append(path)
    towers: dict[str, list[str]] = {}
    specs: dict[str, AdapterSpec] = {}
    for i, (spec, field_name, paths) in enumerate(groups.values()):
        setattr(spec, field_name, sorted({p.rsplit(".", 1)[-1] for p in paths}))
        towers[f"layers{i}"], specs[f"layers{i}"] = paths, spec
    return towers, specs


# ---------------------------------------------------------------- load
def read_peft_config(folder: Path) -> dict:
    cfg_path = Path(folder) / CONFIG_NAME
    if not cfg_path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_NAME}; is this an adapter folder?")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{cfg_path}: line {e.lineno}: not valid JSON ({e.msg})") from None


def unsupported_peft_features(cfg: dict, keys: list[str]) -> list[str]:
    """The PEFT features an ``adapter_config.json`` and its tensor ``keys`` use that vlmtune has no layer
    for: LoRA on embeddings (``lora_embedding_A/B``), ``lora_bias=True`` (``lora_B.bias``) and
    ``bias="lora_only"/"all"`` (trained base biases)."""
    found = []
    embedded = sorted(
        {k[len(PEFT_PREFIX) :].split(".lora_embedding_")[0] for k in keys if ".lora_embedding_" in k}
    )
    if embedded:
        found.append(f"LoRA on embedding layers (lora_embedding_A/B on {_first(embedded, 2)})")
    if cfg.get("lora_bias") or any(k.endswith(".lora_B.bias") for k in keys):
        found.append("lora_bias=True (a trained bias on lora_B)")
    if cfg.get("bias") not in (None, "none"):
        found.append(f'bias="{cfg["bias"]}" (trained biases of the base layers)')
    return found


def check_peft_features(folder: str | Path, keys: list[str] | None = None) -> None:
    """Refuse, in one line, a folder written by PEFT with a feature vlmtune does not support
    (:func:`unsupported_peft_features`); ``keys``: the tensor names when already read."""
    folder = Path(folder)
    if keys is None:
        from safetensors import safe_open

        try:
            with safe_open(str(folder / WEIGHTS_NAME), "pt") as f:
                keys = list(f.keys())
        except Exception:  # unreadable (truncated): read_safetensors reports it in one line when loading
            return
    found = unsupported_peft_features(read_peft_config(folder), keys)
    if found:
        raise AdapterError(
            f"{folder}: written by peft with {'; '.join(found)}, which vlmtune does not support; retrain "
            "without it, or merge it with peft (merge_and_unload) and use the merged model"
        )


def _adapter_leaf_names() -> set[str]:
    return {name for m in registry.METHODS.values() for p in m.peft for name in p.tensors}


def adapter_tensors_by_path(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module path: {leaf: tensor}} for the adapter tensors of a PEFT file (not the modules_to_save)."""
    leaves = _adapter_leaf_names()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            continue
        rest = key[len(PEFT_PREFIX) :]
        for leaf in leaves:
            if rest.endswith("." + leaf):
                out.setdefault(rest[: -len(leaf) - 1], {})[leaf] = value
                break
    return out


def build_peft_layers(
    bases: dict[str, nn.Linear],
    found: dict[str, dict[str, torch.Tensor]],
    cfg: dict,
    recorded: dict[str, str],
    where: Path,
    tensors: dict[str, torch.Tensor],
) -> dict[str, nn.Module]:
    """{path: adapter layer} around ``bases`` (unloaded), each of the class its tensors describe
    (``recorded``: vlmtune's {path: method}; else the registry's PEFT mapping)."""
    kind = cfg.get("peft_type", "LORA")
    if kind not in ("LORA", "VERA"):
        raise AdapterError(f"{where}: peft_type={kind} is not supported (LORA or VERA)")
    shared = _shared_projection(cfg, bases, tensors, where) if kind == "VERA" else None
    layers: dict[str, nn.Module] = {}
    for path, base in bases.items():
        leaves = set(found[path])
        p: PeftLayer | None = registry.peft_layer_for(
            kind, leaves, bool(cfg.get("use_dora")), recorded.get(path)
        )
        if p is None:
            raise AdapterError(
                f"{where}: module '{path}' has tensors {', '.join(sorted(leaves))}, which form no {kind} layer"
                + (" with use_dora" if cfg.get("use_dora") else "")
            )
        shapes = {k: tuple(v.shape) for k, v in found[path].items()}
        try:
            layers[path] = p.from_peft(base, PeftLayerInfo(path, cfg, shapes, shared))
        except KeyError as e:  # the tensor that gives the layer's size (lora_A: the rank) is not there
            raise AdapterError(
                f"{where}: 1 adapter tensor(s) missing: {PEFT_PREFIX}{path}.{e.args[0]}; the folder is incomplete"
            ) from None
    return layers


def _shared_projection(
    cfg: dict, bases: dict[str, nn.Linear], tensors: dict[str, torch.Tensor], where: Path
) -> VeraProjection:
    saved = (
        (tensors[VERA_A_KEY], tensors[VERA_B_KEY])
        if VERA_A_KEY in tensors and VERA_B_KEY in tensors
        else None
    )
    if not bases:
        raise AdapterError(f"{where}: no vera_lambda_* tensors; is this a VeRA adapter?")
    shapes = [(b.out_features, b.in_features) for b in bases.values()]
    proj = shared_projection(
        int(cfg.get("r", 256)),
        int(cfg.get("projection_prng_key", 0)),
        shapes,
        bool(cfg.get("save_projection", True)),
        saved,
        str(where),
    )
    return proj.to(next(iter(bases.values())).weight.device)


def load_adapter(
    model: nn.Module, adapter_dir: str | Path, towers: dict[str, list[str]] | None = None
) -> nn.Module:
    """Attach and load an adapter folder written by vlmtune or by PEFT onto ``model`` (in place).

    Raises :class:`AdapterError` (one line) when the folder is incomplete, holds tensors this model
    does not have or of another shape, naming the first few keys.
    """
    folder = Path(adapter_dir)
    if not (folder / WEIGHTS_NAME).is_file():
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME}; is this an adapter folder?")
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    check_peft_features(folder, list(tensors))
    cfg = read_peft_config(folder)
    meta = read_meta(folder)
    legacy = _split_legacy_outside(tensors, meta.get("modules") or {})
    specs = {t: _saved_spec(s) for t, s in (meta.get("specs") or {}).items()}
    if specs and "towers" in meta:  # saved without tower specs: the layers' own paths
        for paths in meta["towers"].values():
            for path in paths:
                base_linear(model, path, folder / META_NAME)
        attach(model, meta["towers"], specs)
    elif specs and towers is not None:
        attach(model, towers, specs)
    else:
        if legacy and not towers:
            raise AdapterError(
                f"{folder}: written by an older vlmtune with DVoRA layers in {WEIGHTS_NAME}; load it with "
                "the towers it was trained with (load_adapter(..., towers=...) or the run folder)"
            )
        model.requires_grad_(False)
        layout = meta.get("layout")
        if layout:  # layers outside the PEFT file (DVoRA), saved with tower specs
            attach(model, layout["towers"], {t: _saved_spec(s) for t, s in layout["specs"].items()})
        _attach_from_peft(model, folder, tensors, cfg, meta.get("modules") or {})
    saved = resolve_modules_to_save(model, cfg.get("modules_to_save") or [])
    check_tensors(model, tensors, folder, bool(cfg.get("use_dora")), saved)
    _load_peft_tensors(model, tensors, folder, saved)
    if (folder / EXTRAS_NAME).is_file():
        _load_extras(model, read_safetensors(folder / EXTRAS_NAME), folder)
    if legacy:
        _load_extras(model, legacy, folder)
    return model


def _split_legacy_outside(
    tensors: dict[str, torch.Tensor], recorded: dict[str, str]
) -> dict[str, torch.Tensor]:
    """Remove from ``tensors`` (in place) and return by model key the tensors of layers without a PEFT
    type (DVoRA) that folders written before they left the PEFT file hold in it (``recorded``: vlmtune's
    {path: method}). VeRA's saved pair stays: it loads into the shared projection."""
    outside = {path for path, name in recorded.items() if not _has_peft_type(name)}
    moved: dict[str, torch.Tensor] = {}
    for path, found in adapter_tensors_by_path(tensors).items():
        if path in outside:
            for leaf in found:
                moved[f"{path}.{leaf}"] = tensors.pop(f"{PEFT_PREFIX}{path}.{leaf}")
    return moved


def _has_peft_type(method: str) -> bool:
    m = registry.METHODS.get(method)
    return m is None or all(p.peft_type is not None for p in m.peft)


def outside_layers(folder: str | Path, bases: dict[str, nn.Linear]) -> dict[str, nn.Module]:
    """{path: loaded layer} around ``bases`` (unloaded ``nn.Linear`` at some paths) for the layers of a
    vlmtune folder that have no PEFT type (DVoRA), from ``trainable_extras.safetensors``; VeRA's shared
    pair must be saved there (``save_projection``), since a subset of bases cannot regenerate it."""
    folder = Path(folder)
    recorded = read_meta(folder).get("modules") or {}
    paths = sorted(p for p, name in recorded.items() if p in bases and not _has_peft_type(name))
    if not paths:
        return {}
    where = folder / EXTRAS_NAME
    extras = read_safetensors(where) if where.is_file() else {}
    if VERA_A_KEY not in extras or VERA_B_KEY not in extras:
        raise AdapterError(f"{where}: no saved VeRA projection for the DVoRA layers (save_projection=false?)")
    a, b = extras[VERA_A_KEY], extras[VERA_B_KEY]
    proj = shared_projection(a.shape[0], 0, [(b.shape[0], a.shape[1])], True, (a, b), str(where))
    layers: dict[str, nn.Module] = {}
    for path in paths:
        p = registry.METHODS[recorded[path]].peft[0]
        found = {leaf: extras[f"{path}.{leaf}"] for leaf in p.tensors if f"{path}.{leaf}" in extras}
        if len(found) != len(p.tensors):
            raise AdapterError(
                f"{where}: {path}: needs {', '.join(sorted(p.tensors))}; the folder is incomplete"
            )
        shapes = {k: tuple(v.shape) for k, v in found.items()}
        layer = p.from_peft(bases[path], PeftLayerInfo(path, {}, shapes, proj))
        for leaf, value in found.items():
            layer.load_adapter_tensor(leaf, value, where=f"{where}: module {path!r}")
        layers[path] = layer
    return layers


def _saved_spec(fields: dict) -> AdapterSpec:
    """A spec from ``vlmtune_adapter.json``; folders written before alpha could be unset recorded the
    ignored default 16 for methods without alpha (VeRA, DVoRA): read as unset."""
    spec = AdapterSpec(**fields)
    method = registry.METHODS.get(spec.method)
    if method is not None and not method.uses_alpha:
        spec.alpha = None
    return spec


def _attach_from_peft(
    model: nn.Module, folder: Path, tensors: dict[str, torch.Tensor], cfg: dict, recorded: dict[str, str]
) -> None:
    """Wrap the layers named in a PEFT state dict (LORA or VERA), sizes from the tensors."""
    weights = folder / WEIGHTS_NAME
    found = adapter_tensors_by_path(tensors)
    bases = {path: base_linear(model, path, weights) for path in sorted(found)}
    for path, layer in build_peft_layers(bases, found, cfg, recorded, weights, tensors).items():
        replace_module(model, path, layer)


def _first(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def check_tensors(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    folder: Path,
    use_dora: bool = False,
    saved: list[str] | None = None,
) -> None:
    """Refuse a PEFT file whose tensors are not exactly those of the attached layers and the
    ``saved`` modules: missing, unexpected or mis-shaped keys are one :class:`AdapterError` line
    naming the first few."""
    shared = (VERA_A_KEY, VERA_B_KEY)  # the VeRA pair is checked by VeraProjection.load
    want = peft_shapes(model, use_dora)
    want.update({PEFT_PREFIX + n: tuple(p.shape) for n, p in _params_under(model, saved or []).items()})
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


def _load_peft_tensors(
    model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path, saved: list[str]
) -> None:
    """Copy the checked tensors in: adapter tensors into their layers, the rest into the saved modules."""
    where = folder / WEIGHTS_NAME
    if VERA_A_KEY in tensors or VERA_B_KEY in tensors:
        proj = vera_projection(model)
        if proj is None or VERA_A_KEY not in tensors or VERA_B_KEY not in tensors:
            raise AdapterError(f"{where}: has a VeRA projection but this model has no complete VeRA layers")
        proj.load(tensors[VERA_A_KEY], tensors[VERA_B_KEY], where=str(where))
    layers = dict(adapter_layers(model))
    magnitudes: dict[str, torch.Tensor] = {}
    for path, found in adapter_tensors_by_path(tensors).items():
        for leaf, value in found.items():
            if leaf == MAGNITUDE and MAGNITUDE not in layers[path]._adapter_tensors():
                magnitudes[path] = value  # a LoRA layer's identity magnitude: checked once A, B are in
            else:
                layers[path].load_adapter_tensor(leaf, value, where=f"{where}: module {path!r}")
    params = _params_under(model, saved)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[PEFT_PREFIX + name].to(p.dtype))
    for path, value in magnitudes.items():
        _check_identity_magnitude(layers[path], value, f"{where}: module {path!r}")


def _check_identity_magnitude(layer: nn.Module, value: torch.Tensor, where: str) -> None:
    """A LoRA layer's saved magnitude must still be ``||W0 + s B A||_c``; another value means it was
    trained as DoRA (e.g. in PEFT) after vlmtune saved it, and reading it as LoRA would be wrong."""
    want = identity_magnitude(layer).float()
    err = ((value.float() - want).abs() / want.abs().clamp_min(1e-12)).max().item()
    if err > 1e-4:
        raise AdapterError(
            f"{where}: is LoRA in {META_NAME} but its {MAGNITUDE} is not ||W0 + s B A|| (max relative "
            f"difference {err:.1e}): it was trained as DoRA after saving; remove {META_NAME} to load it as DoRA"
        )


def _load_extras(model: nn.Module, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    params = dict(model.named_parameters())
    pair = [tensors.pop(k) for k in (VERA_A_KEY, VERA_B_KEY) if k in tensors]
    if pair:  # VeRA's shared pair of layers outside the PEFT file (DVoRA)
        proj = vera_projection(model)
        if proj is None or len(pair) != 2:
            raise AdapterError(
                f"{folder / EXTRAS_NAME}: has a VeRA projection but this model has no VeRA layers"
            )
        proj.load(*pair, where=str(folder / EXTRAS_NAME))
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
