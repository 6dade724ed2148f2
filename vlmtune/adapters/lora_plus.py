"""Optimizer parameter groups, with LoRA+ (Hayou et al., ICML 2024) learning rates.

LoRA+ trains B with a larger learning rate than A: ``lr_B = ratio * lr_A`` (the paper suggests
ratio ~ 16). Groups (empty ones dropped)::

    lora_A   A matrices and every other matrix (>= 2-D)     lr          weight_decay
    lora_B   B matrices (LoRA, DoRA, DyLoRA)                 lr * ratio  weight_decay
    no_decay 1-D tensors: biases, norms, DoRA magnitudes,    lr          0
             VeRA scaling vectors, soft prompts' none
"""

from __future__ import annotations

from torch import nn

from vlmtune.adapters.inject import tower_modules
from vlmtune.core.adapter_spec import AdapterSpec


def _group_of(name: str, p: nn.Parameter) -> str:
    if ".lora_B." in f".{name}":
        return "lora_B"
    return "no_decay" if p.ndim < 2 else "lora_A"


def adapter_param_groups(
    model: nn.Module,
    lr: float,
    lora_plus_ratio: float = 1.0,
    weight_decay: float = 0.0,
    towers: dict[str, list[str]] | None = None,
    specs: dict[str, AdapterSpec] | None = None,
) -> list[dict]:
    """``torch.optim`` param groups over the trainable parameters of ``model``.

    Each group is ``{"params", "lr", "weight_decay", "name"}``. With ``towers`` and ``specs``, a
    tower's ``spec.lr`` and ``spec.lora_plus_ratio`` (when not 1.0) override ``lr`` and
    ``lora_plus_ratio`` for the parameters under that tower (group names get ``/tower``).
    """
    if lora_plus_ratio <= 0:
        raise ValueError(f"lora_plus_ratio must be > 0, got {lora_plus_ratio}")
    owner = _tower_of_params(model, towers or {}, specs or {})
    groups: dict[tuple[str, str], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = _group_of(name, p)
        tower, spec = owner.get(id(p), ("", None))
        base_lr = spec.lr if spec is not None and spec.lr is not None else lr
        ratio = spec.lora_plus_ratio if spec is not None and spec.lora_plus_ratio != 1.0 else lora_plus_ratio
        key = (kind, tower)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": base_lr * ratio if kind == "lora_B" else base_lr,
                "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
                "name": f"{kind}/{tower}" if tower else kind,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def _tower_of_params(
    model: nn.Module, towers: dict[str, list[str]], specs: dict[str, AdapterSpec]
) -> dict[int, tuple[str, AdapterSpec]]:
    """id(param) -> (tower, spec) for towers whose spec overrides lr or the LoRA+ ratio."""
    owner: dict[int, tuple[str, AdapterSpec]] = {}
    for tower, spec in specs.items():
        if spec is None or tower not in towers or (spec.lr is None and spec.lora_plus_ratio == 1.0):
            continue
        roots = [model.get_submodule(prefix) for prefix in towers[tower]]
        for module in [*roots, *(m for _, _, m in tower_modules(model, towers[tower]))]:
            for p in module.parameters(recurse=False):
                owner.setdefault(id(p), (tower, spec))
    return owner
