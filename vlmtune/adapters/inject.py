"""Attach adapters per tower, freeze the rest, and merge them back into plain layers.

A pipeline names its towers by module path prefix, e.g. for LLaVA
``{"language": ["model.language_model"], "vision": ["model.vision_tower"],
"projector": ["model.multi_modal_projector"]}``. Targets are resolved inside one tower only, so
``q_proj`` for the language tower never touches the CLIP ``q_proj`` of the vision tower.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from torch import nn

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.spec import WHOLE_TOWER_METHODS, AdapterSpec

LayerFactory = Callable[[nn.Linear, AdapterSpec], nn.Module]
TowerHook = Callable[[nn.Module, nn.Module, AdapterSpec, str], None]

# Methods that wrap single ``nn.Linear`` layers.
LAYER_METHODS: dict[str, LayerFactory] = {
    "lora": lambda base, s: LoraLinear(base, s.r, s.alpha, s.dropout, s.rslora),
    "dora": lambda base, s: DoraLinear(base, s.r, s.alpha, s.dropout, s.rslora, s.detach_norm),
}
# Methods that change a whole tower (prompts, bottleneck adapters, positional inserts):
# ``hook(model, tower_module, spec, tower_name)`` attaches and marks its own parameters trainable.
TOWER_METHODS: dict[str, TowerHook] = {}


class AdapterError(ValueError):
    """A user-facing problem with an adapter spec or checkpoint (one line, names the key/module)."""


def register_layer_method(name: str, factory: LayerFactory) -> None:
    LAYER_METHODS[name] = factory


def register_tower_method(name: str, hook: TowerHook) -> None:
    TOWER_METHODS[name] = hook


def known_methods() -> list[str]:
    return sorted([*LAYER_METHODS, *TOWER_METHODS, *WHOLE_TOWER_METHODS])


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """(path, layer) for every low-rank adapter wrapper in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def tower_modules(model: nn.Module, prefixes: list[str]) -> Iterator[tuple[str, str, nn.Module]]:
    """(full path, path relative to its tower prefix, module) for modules under ``prefixes``."""
    for name, module in model.named_modules():
        for prefix in prefixes:
            if name.startswith(prefix + "."):
                yield name, name[len(prefix) + 1 :], module
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
    """Full paths of the ``nn.Linear`` layers in a tower that ``spec.targets`` names."""
    names = spec.target_names()
    found = [
        full
        for full, rel, module in tower_modules(model, prefixes)
        if isinstance(module, nn.Linear) and _matches(rel, names)
    ]
    if not found:
        leaves = sorted(
            {
                rel.rsplit(".", 1)[-1]
                for _, rel, m in tower_modules(model, prefixes)
                if isinstance(m, nn.Linear)
            }
        )
        raise AdapterError(
            f"adapters.{tower}.targets={spec.targets} matched no linear layer under {prefixes}; "
            f"linear layers there are named: {', '.join(leaves) or '(none)'}"
        )
    return found


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
    for tower, spec in specs.items():
        if spec is None or spec.method == "frozen":
            continue
        if tower not in towers:
            raise AdapterError(
                f"adapters.{tower}: this model has no tower '{tower}' (towers: {', '.join(towers)})"
            )
        prefixes = towers[tower]
        if spec.method == "full":
            for p in prefixes:
                model.get_submodule(p).requires_grad_(True)
            attached.update({p: "full" for p in prefixes})
        elif spec.method in LAYER_METHODS:
            factory = LAYER_METHODS[spec.method]
            for path in resolve_targets(model, prefixes, spec, tower):
                replace_module(model, path, factory(model.get_submodule(path), spec))
                attached[path] = spec.method
        elif spec.method in TOWER_METHODS:
            for p in prefixes:
                TOWER_METHODS[spec.method](model, model.get_submodule(p), spec, tower)
                attached[p] = spec.method
        else:
            raise AdapterError(
                f"adapters.{tower}.method='{spec.method}' is unknown; choose one of: {', '.join(known_methods())}"
            )
        _unfreeze_extras(model, prefixes, spec)
    return attached


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
    """Fold every mergeable adapter into its base layer and restore plain ``nn.Linear`` modules."""
    for path, layer in list(adapter_layers(model)):
        replace_module(model, path, layer.merged_linear())
    return model
