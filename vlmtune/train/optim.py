"""Optimizer parameter groups (per-tower learning rates, LoRA+) and warmup schedules.

Learning rates, per trainable tensor:
  adapters / language tower   train.lr
  projector tower             train.projector_lr   (0 = train.lr)
  vision tower                train.vision_lr      (0 = train.lr)
  qformer tower               train.qformer_lr     (0 = train.lr; BLIP-2 / InstructBLIP)
  ``adapters.<tower>.lr``     overrides the above for that tower
  ``lora_B``                  x LoRA+ ratio (Hayou et al., 2024: lr_B = ratio * lr_A), from
                              ``adapters.<tower>.lora_plus_ratio`` or else ``train.lora_plus_ratio``
A per-tower value is unset when it is None (null in YAML); any number, 1.0 included, is used as given.
No weight decay on biases, norms, DoRA magnitudes and other 1-D tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.config import TrainConfig


def tower_of(name: str, towers: dict[str, list[str]]) -> str:
    for tower, prefixes in towers.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return tower
    return "other"


# towers with their own ``train.<key>`` learning rate; 0 there means unset (train.lr)
TOWER_LR_KEYS = {"projector": "projector_lr", "vision": "vision_lr", "qformer": "qformer_lr"}


def base_lr(tower: str, train: TrainConfig, spec: AdapterSpec | None) -> float:
    if spec is not None and spec.lr is not None:
        return spec.lr
    own = getattr(train, TOWER_LR_KEYS[tower]) if tower in TOWER_LR_KEYS else 0.0
    return own if own > 0 else train.lr


def param_groups(
    model: nn.Module,
    towers: dict[str, list[str]],
    train: TrainConfig,
    specs: dict[str, AdapterSpec] | None = None,
) -> list[dict]:
    """Trainable parameters grouped by (tower, lora_B or not, decay or not), each with its ``lr``.

    Groups carry a ``name`` (e.g. ``language.lora_B``) used in logs.
    """
    specs = specs or {}
    groups: dict[tuple[str, str, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tower = tower_of(name, towers)
        spec = specs.get(tower)
        lr = base_lr(tower, train, spec)
        kind = "params"
        if ".lora_B." in name:
            kind = "lora_B"
            ratio = spec.lora_plus_ratio if spec is not None else None
            lr *= train.lora_plus_ratio if ratio is None else ratio
        elif ".lora_" in name:
            kind = "lora"
        decay = p.ndim >= 2 and train.weight_decay > 0
        key = (tower, kind, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{tower}.{kind}" + ("" if decay or train.weight_decay == 0 else ".no_decay"),
                "params": [],
                "lr": lr,
                "weight_decay": train.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


def build_optimizer(groups: list[dict], train: TrainConfig) -> torch.optim.Optimizer:
    if not groups:
        from vlmtune.core.config import ConfigError

        raise ConfigError("nothing to train: every tower is frozen (set adapters.<tower>.method)")
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=0.9)
    if train.optimizer.startswith("paged_"):  # QLoRA's paged optimizers (CUDA + bitsandbytes)
        from vlmtune.models.qlora import paged_optimizer

        return paged_optimizer(groups, train.optimizer, train.lr)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.999), eps=1e-8)


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``s`` (0-based).

    warmup: (s + 1) / warmup; then cosine 0.5 (1 + cos(pi t)), linear 1 - t, or constant 1,
    with t = (s - warmup) / (total - warmup) in [0, 1].
    """

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if schedule == "linear":
            return 1.0 - t
        return 1.0

    return f


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(train.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train.schedule, total_steps, warmup))
