"""Attach adapters per tower, freeze the rest, and merge them back into plain layers.

``attach(model, towers, specs)`` asks the registry for each tower's method, parses its typed options,
resolves its targets inside that tower only (:mod:`vlmtune.adapters.targets`) and wraps or hooks the
modules; layer methods of one family (VeRA/DVoRA) share one state built from all their layers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from vlmtune.adapters import registry
from vlmtune.adapters.dora.magnitude import MagnitudeOnlyLinear
from vlmtune.adapters.method import Method, parse_options
from vlmtune.adapters.report import adapter_module_paths
from vlmtune.adapters.targets import (
    replace_module,
    resolve_magnitude_only,
    resolve_targets,
    set_trainable,
    tower_modules,
)
from vlmtune.core.adapter_spec import WHOLE_TOWER_METHODS, AdapterSpec, lora_alpha
from vlmtune.core.errors import AdapterError


def is_weight_adapter(module: nn.Module) -> bool:
    """A wrapper of one ``nn.Linear`` whose update folds into its weight (LoRA, DoRA, VeRA...)."""
    return getattr(module, "weight_adapter", False)


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, layer) for every weight-adapter wrapper in ``model`` (LoRA, DoRA, DyLoRA, VeRA,
    DVoRA, magnitude-only DoRA). Bottleneck adapters and prompts are not listed: they add layers."""
    for name, module in model.named_modules():
        if is_weight_adapter(module):
            yield name, module


@dataclass
class _LayerPlan:
    """One tower's layer method: what to wrap (``paths``) and what gets a magnitude only (``mag``)."""

    method: Method
    spec: AdapterSpec
    options: Any
    paths: list[str]
    mag: list[str]


def attach(model: nn.Module, towers: dict[str, list[str]], specs: dict[str, AdapterSpec]) -> dict[str, str]:
    """Freeze ``model``, then attach each tower's adapter. Returns {module path: method}.

    Unknown tower names, methods or options raise :class:`AdapterError` naming the key.
    """
    model.requires_grad_(False)
    attached: dict[str, str] = {}
    plans: list[_LayerPlan] = []
    for tower, spec in specs.items():
        if spec is None or spec.method == "frozen":
            continue
        planned = _plan_tower(model, towers, tower, spec)
        if planned is None:  # full
            for p in towers[tower]:
                set_trainable(model, p)
            attached.update({p: "full" for p in towers[tower]})
        elif isinstance(planned, _LayerPlan):
            plans.append(planned)
        else:
            method, options = planned
            attached.update(_hook_tower(model, towers[tower], method, spec, options, tower))
    attached.update(_wrap_layers(model, plans))
    for tower, spec in specs.items():
        if spec is not None and spec.method != "frozen":
            _unfreeze_extras(model, towers[tower], spec)
    return attached


def check_specs(model: nn.Module, towers: dict[str, list[str]], specs: dict[str, AdapterSpec]) -> None:
    """Every check :func:`attach` makes (towers, methods, typed options, targets), leaving ``model`` as it is:
    the preflight runs it on the loaded base before any evaluation or training."""
    for tower, spec in specs.items():
        if spec is not None and spec.method != "frozen":
            _plan_tower(model, towers, tower, spec)


def check_methods(specs: dict[str, AdapterSpec]) -> None:
    """The checks that need no model (method names, typed options, alpha): before the base is loaded."""
    for tower, spec in specs.items():
        if spec is not None and spec.method not in WHOLE_TOWER_METHODS:
            _checked_options(registry.get(spec.method, tower), spec, tower)


def _plan_tower(
    model: nn.Module, towers: dict[str, list[str]], tower: str, spec: AdapterSpec
) -> _LayerPlan | tuple[Method, Any] | None:
    """What attaching ``spec`` to ``tower`` means: a layer plan, a tower method with its typed options, or
    None for ``full``; raises the one-line errors."""
    if tower not in towers:
        raise AdapterError(
            f"adapters.{tower}: this model has no tower '{tower}' (towers: {', '.join(towers)})"
        )
    if spec.method == "full":
        return None
    method = registry.get(spec.method, tower)
    options = _checked_options(method, spec, tower)
    if method.kind != "layer":
        return method, options
    prefixes = towers[tower]
    mag = resolve_magnitude_only(model, prefixes, spec, tower)
    paths = [] if not spec.targets and mag else resolve_targets(model, prefixes, spec, tower)
    return _LayerPlan(method, spec, options, [p for p in paths if p not in mag], mag)


def _checked_options(method: Method, spec: AdapterSpec, tower: str) -> Any:
    """The spec's typed options; one-line errors for options, an alpha the method has not, or
    ``magnitude_only`` on a method without a magnitude."""
    options = parse_options(method, spec, tower)
    if not method.uses_alpha and spec.alpha is not None:
        raise AdapterError(
            f"adapters.{tower}.alpha={spec.alpha}: {method.display} has no alpha (its scale is learned); "
            f"add adapters.{tower}.alpha=null (a recipe's alpha is for the LoRA family; typed, remove it)"
        )
    if spec.magnitude_only and not method.magnitude:
        magnitude_methods = [n for n, m in registry.METHODS.items() if m.magnitude]
        raise AdapterError(
            f"adapters.{tower}.magnitude_only needs a method with a magnitude "
            f"({', '.join(magnitude_methods)}), not '{spec.method}'"
        )
    return options


def _hook_tower(
    model: nn.Module, prefixes: list[str], method: Method, spec: AdapterSpec, options: Any, tower: str
) -> dict[str, str]:
    """Run a tower method's hook on every prefix of the tower (a ``whole_tower`` method: once, on the
    module holding them all), then its check once."""
    if method.whole_tower:
        whole = model.get_submodule(common_module_path(prefixes))
        method.hook(model, whole, spec, options, tower, prefixes=prefixes)
    else:
        for p in prefixes:
            method.hook(model, model.get_submodule(p), spec, options, tower)
    if method.check is not None:
        method.check(model, prefixes, spec, tower)
    placed = adapter_module_paths(model, prefixes) or prefixes  # BitFit adds no module: its tower
    return {p: method.name for p in placed}


def common_module_path(prefixes: list[str]) -> str:
    """The longest module path every prefix starts with, by whole names ("" for the model itself):
    ``[v.embeddings, v.encoder.layers.0, v.post_layernorm]`` -> ``v``."""
    parts = [p.split(".") for p in prefixes]
    common: list[str] = []
    for names in zip(*parts, strict=False):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return ".".join(common)


def _wrap_layers(model: nn.Module, plans: list[_LayerPlan]) -> dict[str, str]:
    shared = _build_shared(model, plans)
    attached: dict[str, str] = {}
    for plan in plans:
        state = shared.get(plan.method.family)
        for path in plan.paths:
            replace_module(
                model, path, plan.method.build(model.get_submodule(path), plan.spec, plan.options, state)
            )
            attached[path] = plan.method.name
        for path in plan.mag:
            replace_module(model, path, MagnitudeOnlyLinear(model.get_submodule(path), lora_alpha(plan.spec)))
            attached[path] = f"{plan.method.name}:magnitude"
        if plan.method.after_attach is not None:
            plan.method.after_attach(model, plan.spec, plan.options)
    return attached


def _build_shared(model: nn.Module, plans: list[_LayerPlan]) -> dict[str, Any]:
    """One shared state per method family, from all its layers in every tower (VeRA's A/B pair)."""
    shared: dict[str, Any] = {}
    for family in {p.method.family for p in plans if p.method.family}:
        members = [p for p in plans if p.method.family == family]
        bases = [model.get_submodule(path) for p in members for path in p.paths]
        shared[family] = members[0].method.shared(
            bases, [p.spec for p in members], [p.options for p in members]
        )
    return shared


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
    untie_adapted_weights(model)
    for path, layer in list(adapter_layers(model)):
        replace_module(model, path, layer.merged_linear())
    return model


def untie_adapted_weights(model: nn.Module) -> list[str]:
    """Give each adapter layer whose base weight is shared with another module (``lm_head`` tied to
    the input embeddings: PaliGemma, Gemma 3) its own copy, so that merging ``W0 + dW`` into it leaves
    the embeddings as they are, and set ``tie_word_embeddings=False`` in the model's config and its text
    config so that the saved folder keeps both tensors and reloads untied. Returns the untied paths."""
    owners = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    untied = []
    for path, layer in adapter_layers(model):
        weight = layer.base_layer.weight
        if owners[id(weight)] > 1:
            layer.base_layer.weight = nn.Parameter(
                weight.detach().clone(), requires_grad=weight.requires_grad
            )
            untied.append(path)
    config = getattr(model, "config", None)
    if untied and config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for c in {id(config): config, id(text): text}.values():
            if getattr(c, "tie_word_embeddings", False):
                c.tie_word_embeddings = False
    return untied
