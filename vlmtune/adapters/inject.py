"""Attach adapters per tower, freeze the rest, and merge them back into plain layers.

A pipeline names its towers by module path prefix, e.g. for LLaVA
``{"language": ["model.language_model"], "vision": ["model.vision_tower"],
"projector": ["model.multi_modal_projector"]}``. Targets are resolved inside one tower only, so
``q_proj`` for the language tower never touches the CLIP ``q_proj`` of the vision tower.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.dylora import DyLoraLinear, RankSampler
from vlmtune.adapters.granularity import MagnitudeOnlyLinear
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.vera import DVoraLinear, VeraLinear, VeraProjection
from vlmtune.core.adapter_spec import WHOLE_TOWER_METHODS, AdapterSpec, expand_targets
from vlmtune.core.errors import AdapterError

LayerFactory = Callable[..., nn.Module]  # (base: nn.Linear, spec[, shared]) -> wrapper
TowerHook = Callable[[nn.Module, nn.Module, AdapterSpec, str], None]
SharedBuilder = Callable[[list[nn.Linear], list[AdapterSpec]], Any]


def _vera_kwargs(s: AdapterSpec) -> dict:
    return {"dropout": s.dropout, "d_initial": float(s.options.get("d_initial", 0.1))}


# Methods that wrap single ``nn.Linear`` layers.
LAYER_METHODS: dict[str, LayerFactory] = {
    "lora": lambda base, s: LoraLinear(base, s.r, s.alpha, s.dropout, s.rslora),
    "dora": lambda base, s: DoraLinear(base, s.r, s.alpha, s.dropout, s.rslora, s.detach_norm),
    "dylora": lambda base, s: DyLoraLinear(base, s.r, s.alpha, s.dropout, s.rslora),
    "vera": lambda base, s, proj: VeraLinear(base, proj, **_vera_kwargs(s)),
    "dvora": lambda base, s, proj: DVoraLinear(base, proj, **_vera_kwargs(s), detach_norm=s.detach_norm),
}
# Layer methods whose layers share model-wide state: method -> family; one state per family,
# built from every layer of that family in the model (all towers), passed as the factory's 3rd arg.
METHOD_FAMILY: dict[str, str] = {"vera": "vera", "dvora": "vera"}
SHARED_BUILDERS: dict[str, SharedBuilder] = {}
# Methods with a per-output-feature magnitude, which accept ``magnitude_only`` targets (DoRA §5.6).
MAGNITUDE_METHODS = ("dora", "dvora")
# Methods that change a whole tower (prompts, bottleneck adapters, positional inserts):
# ``hook(model, tower_module, spec, tower_name)`` attaches and marks its own parameters trainable.
TOWER_METHODS: dict[str, TowerHook] = {}
# Optional ``check(model, prefixes, spec, tower_name)`` run after a tower method's hooks (e.g. to
# raise when its targets matched nothing under any prefix).
TOWER_CHECKS: dict[str, Callable[[nn.Module, list[str], AdapterSpec, str], None]] = {}


def register_layer_method(
    name: str, factory: LayerFactory, family: str | None = None, shared: SharedBuilder | None = None
) -> None:
    """Register ``factory(base, spec)``; with ``family``/``shared``, ``factory(base, spec, state)``."""
    LAYER_METHODS[name] = factory
    if family is not None:
        METHOD_FAMILY[name] = family
        if shared is not None:
            SHARED_BUILDERS[family] = shared


def register_tower_method(name: str, hook: TowerHook) -> None:
    TOWER_METHODS[name] = hook


def known_methods() -> list[str]:
    return sorted([*LAYER_METHODS, *TOWER_METHODS, *WHOLE_TOWER_METHODS])


def is_weight_adapter(module: nn.Module) -> bool:
    """A wrapper of one ``nn.Linear`` whose update folds into its weight (LoRA, DoRA, VeRA...)."""
    return isinstance(module, LoraLinear) or getattr(module, "weight_adapter", False)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) for every weight-adapter wrapper in ``model`` (LoRA, DoRA, DyLoRA, VeRA,
    DVoRA, magnitude-only DoRA). Bottleneck adapters and prompts are not listed: they add layers."""
    for name, module in model.named_modules():
        if is_weight_adapter(module):
            yield name, module


def tower_modules(model: nn.Module, prefixes: list[str]) -> Iterator[tuple[str, str, nn.Module]]:
    """(full path, path relative to its tower prefix, module) for modules under ``prefixes``."""
    for name, module in model.named_modules():
        for prefix in prefixes:
            if name.startswith(prefix + "."):
                yield name, name[len(prefix) + 1 :], module
                break
            if name == prefix:  # a tower that is itself one layer (lm_head, Mllama's projector)
                yield name, name.rsplit(".", 1)[-1], module
                break


def _matches(rel_path: str, names: list[str]) -> bool:
    leaf = rel_path.rsplit(".", 1)[-1]
    for name in names:
        if name.startswith("re:"):
            if re.fullmatch(name[3:], rel_path):
                return True
        elif leaf == name:
            return True
    return False


def resolve_targets(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> list[str]:
    """Full paths of the ``nn.Linear`` layers in a tower that ``spec.targets`` names. Every entry of the
    list must match something (a typo such as ``qproj`` beside ``q_proj`` is an error naming it and the
    closest leaf names, not silently dropped); an alias matches when one of its expansions does."""
    linears = [(full, rel) for full, rel, m in tower_modules(model, prefixes) if isinstance(m, nn.Linear)]
    leaves = sorted({rel.rsplit(".", 1)[-1] for _, rel in linears})
    found = [full for full, rel in linears if _matches(rel, spec.target_names())]
    if not found:
        raise AdapterError(
            f"adapters.{tower}.targets={spec.targets} matched no linear layer under {prefixes}; "
            f"linear layers there are named: {', '.join(leaves) or '(none)'}"
        )
    for target in spec.targets:
        if not any(_matches(rel, expand_targets([target])) for _, rel in linears):
            close = difflib.get_close_matches(target.removeprefix("re:"), leaves, n=3, cutoff=0.5)
            raise AdapterError(
                f"adapters.{tower}.targets: '{target}' matches no linear layer under {prefixes}"
                + (f"; did you mean {', '.join(close)}?" if close else f"; they are named: {', '.join(leaves)}")
            )
    return found


def set_trainable(model: nn.Module, path: str) -> None:
    """Train the module or parameter at ``path`` (a tower prefix may name a bare parameter, e.g. LLaVA-NeXT's
    ``model.image_newline`` or BLIP-2's ``query_tokens``)."""
    try:
        model.get_submodule(path).requires_grad_(True)
    except AttributeError:
        model.get_parameter(path).requires_grad_(True)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def attach(
    model: nn.Module,
    towers: dict[str, list[str]],
    specs: dict[str, AdapterSpec],
) -> dict[str, str]:
    """Freeze ``model``, then attach each tower's adapter. Returns {module path: method}.

    Unknown tower names or methods raise :class:`AdapterError` naming the key.
    """
    model.requires_grad_(False)
    attached: dict[str, str] = {}
    plans: list[tuple[str, AdapterSpec, list[str], list[str]]] = []  # tower, spec, paths, magnitude-only
    for tower, spec in specs.items():
        if spec is None or spec.method == "frozen":
            continue
        if tower not in towers:
            raise AdapterError(
                f"adapters.{tower}: this model has no tower '{tower}' (towers: {', '.join(towers)})"
            )
        prefixes = towers[tower]
        if spec.magnitude_only and spec.method not in MAGNITUDE_METHODS:
            raise AdapterError(
                f"adapters.{tower}.magnitude_only needs a method with a magnitude "
                f"({', '.join(MAGNITUDE_METHODS)}), not '{spec.method}'"
            )
        if spec.method == "full":
            for p in prefixes:
                set_trainable(model, p)
            attached.update({p: "full" for p in prefixes})
        elif spec.method in LAYER_METHODS:
            mag = resolve_magnitude_only(model, prefixes, spec, tower)
            paths = [] if not spec.targets and mag else resolve_targets(model, prefixes, spec, tower)
            plans.append((tower, spec, [p for p in paths if p not in mag], mag))
        elif spec.method in TOWER_METHODS:
            for p in prefixes:
                TOWER_METHODS[spec.method](model, model.get_submodule(p), spec, tower)
                attached[p] = spec.method
            if spec.method in TOWER_CHECKS:
                TOWER_CHECKS[spec.method](model, prefixes, spec, tower)
        else:
            raise AdapterError(
                f"adapters.{tower}.method='{spec.method}' is unknown; choose one of: {', '.join(known_methods())}"
            )
    shared = _build_shared(model, plans)
    for _tower, spec, paths, mag in plans:
        factory = LAYER_METHODS[spec.method]
        family = METHOD_FAMILY.get(spec.method)
        for path in paths:
            base = model.get_submodule(path)
            layer = factory(base, spec, shared[family]) if family else factory(base, spec)
            replace_module(model, path, layer)
            attached[path] = spec.method
        for path in mag:
            replace_module(model, path, MagnitudeOnlyLinear(model.get_submodule(path), spec.alpha))
            attached[path] = f"{spec.method}:magnitude"
        if spec.method == "dylora":
            _install_rank_sampler(model, spec)
    for tower, spec in specs.items():
        if spec is not None and spec.method != "frozen":
            _unfreeze_extras(model, towers[tower], spec)
    return attached


def resolve_magnitude_only(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> list[str]:
    """Full paths of the linear layers that ``spec.magnitude_only`` names (DoRA §5.6)."""
    if not spec.magnitude_only:
        return []
    names = expand_targets(spec.magnitude_only)
    found = [
        full
        for full, rel, m in tower_modules(model, prefixes)
        if isinstance(m, nn.Linear) and _matches(rel, names)
    ]
    if not found:
        raise AdapterError(
            f"adapters.{tower}.magnitude_only={spec.magnitude_only} matched no linear layer under {prefixes}"
        )
    return found


def _build_shared(
    model: nn.Module, plans: list[tuple[str, AdapterSpec, list[str], list[str]]]
) -> dict[str, Any]:
    """One shared state per method family, from all its layers in every tower (VeRA's A/B pair)."""
    shared: dict[str, Any] = {}
    for family in {METHOD_FAMILY[s.method] for _, s, _, _ in plans if s.method in METHOD_FAMILY}:
        members = [(t, s, p) for t, s, p, _ in plans if METHOD_FAMILY.get(s.method) == family]
        bases = [model.get_submodule(path) for _, _, paths in members for path in paths]
        shared[family] = SHARED_BUILDERS[family](bases, [s for _, s, _ in members])
    return shared


def build_vera_projection(bases: list[nn.Linear], specs: list[AdapterSpec]) -> VeraProjection:
    """The shared pair sized for the largest adapted layer (PEFT ``VeraModel._find_dim``)."""
    keys = {
        (s.r, int(s.options.get("projection_prng_key", 0)), bool(s.options.get("save_projection", True)))
        for s in specs
    }
    if len(keys) > 1:
        raise AdapterError(
            "adapters: all VeRA/DVoRA towers share one projection, so r, options.projection_prng_key and "
            f"options.save_projection must be equal across towers (got {sorted(keys)})"
        )
    r, seed, save = keys.pop()
    in_max = max(b.in_features for b in bases)
    out_max = max(b.out_features for b in bases)
    proj = VeraProjection(r, in_max, out_max, seed=seed, save_projection=save)
    return proj.to(bases[0].weight.device)


SHARED_BUILDERS["vera"] = build_vera_projection


def _install_rank_sampler(model: nn.Module, spec: AdapterSpec) -> None:
    """DyLoRA: one rank per training forward for every DyLoRA layer (a pre-hook on the root)."""
    old = getattr(model, "_vlmtune_rank_sampler", None)
    if old is not None:
        old[1].remove()
    seed = spec.options.get("seed")
    sampler = RankSampler(int(spec.options.get("r_min", 1)), spec.r, None if seed is None else int(seed))
    handle = model.register_forward_pre_hook(sampler)
    object.__setattr__(model, "_vlmtune_rank_sampler", (sampler, handle))


def _unfreeze_extras(model: nn.Module, prefixes: list[str], spec: AdapterSpec) -> None:
    """Biases and norm layers trained beside the adapter (VL-Adapter / DoRA VL-BART setup)."""
    if not (spec.trainable_bias or spec.trainable_norms):
        return
    for _, _, module in tower_modules(model, prefixes):
        if spec.trainable_norms and _is_norm(module):
            module.requires_grad_(True)
        bias = getattr(module, "bias", None)
        if spec.trainable_bias and isinstance(bias, nn.Parameter):
            bias.requires_grad_(True)


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or type(module).__name__.endswith("RMSNorm")


def merge(model: nn.Module) -> nn.Module:
    """Fold every mergeable adapter into its base layer and restore plain ``nn.Linear`` modules.

    DyLoRA layers merge at their ``eval_rank`` (``set_dylora_rank``). Bottleneck adapters and soft
    prompts add computation that no weight can hold: they raise :class:`AdapterError`.
    """
    extra = [
        n
        for n, m in model.named_modules()
        if getattr(m, "adapter_module", False) and not is_weight_adapter(m)
    ]
    if extra:
        raise AdapterError(
            f"{type(model).__name__}.{extra[0]}: {type(model.get_submodule(extra[0])).__name__} adds layers "
            "that cannot be merged into the base weights; save the adapter folder instead"
        )
    for path, layer in list(adapter_layers(model)):
        if isinstance(layer, DyLoraLinear):
            layer.set_rank(layer.eval_rank)
        replace_module(model, path, layer.merged_linear())
    return model
