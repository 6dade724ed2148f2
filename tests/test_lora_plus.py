"""LoRA+ parameter groups: B at ratio * lr, 1-D tensors without weight decay, per-tower overrides."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import AdapterSpec, adapter_param_groups, attach


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.vis = nn.Sequential(nn.Linear(8, 8))


TOWERS = {"language": ["lm"], "vision": ["vis"]}


def test_lora_plus_groups() -> None:
    model = Toy()
    specs = {
        "language": AdapterSpec(method="dora", r=2, targets=["re:0"], trainable_norms=True),
        "vision": AdapterSpec(method="lora", r=2, targets=["re:0"]),
    }
    attach(model, TOWERS, specs)
    groups = {
        g["name"]: g for g in adapter_param_groups(model, lr=1e-4, lora_plus_ratio=16, weight_decay=0.1)
    }
    assert set(groups) == {"lora_A", "lora_B", "no_decay"}
    assert groups["lora_B"]["lr"] == pytest.approx(1.6e-3) and groups["lora_B"]["weight_decay"] == 0.1
    assert groups["lora_A"]["lr"] == 1e-4 and len(groups["lora_A"]["params"]) == 2
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert len(groups["no_decay"]["params"]) == 3  # DoRA magnitude, LayerNorm weight and bias
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable
    torch.optim.AdamW(list(groups.values()))  # accepted by torch (extra "name" key is fine)


def test_per_tower_lr_and_ratio_override() -> None:
    model = Toy()
    specs = {
        "language": AdapterSpec(method="lora", r=2, targets=["re:0"]),
        "vision": AdapterSpec(method="lora", r=2, targets=["re:0"], lr=1e-3, lora_plus_ratio=4.0),
    }
    attach(model, TOWERS, specs)
    groups = adapter_param_groups(model, lr=1e-4, lora_plus_ratio=2.0, towers=TOWERS, specs=specs)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"lora_A": 1e-4, "lora_B": 2e-4, "lora_A/vision": 1e-3, "lora_B/vision": 4e-3}
    )
