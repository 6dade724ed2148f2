"""LoRA+ and per-tower learning rates in ``train.optim.param_groups``: B at ratio * lr, 1-D tensors
without weight decay, per-tower overrides with one unset rule (None), so a tower can set the ratio
back to 1 while the run's ratio is larger."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import AdapterSpec, attach
from vlmtune.core.config import TrainConfig
from vlmtune.train.optim import param_groups


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        self.vis = nn.Sequential(nn.Linear(8, 8))


TOWERS = {"language": ["lm"], "vision": ["vis"]}


def groups_of(specs: dict[str, AdapterSpec], **train) -> dict[str, dict]:
    model = Toy()
    attach(model, TOWERS, specs)
    groups = {g["name"]: g for g in param_groups(model, TOWERS, TrainConfig(**train), specs)}
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable  # every tensor in one group
    torch.optim.AdamW(list(groups.values()))  # accepted by torch (extra "name" key is fine)
    return groups


def test_b_matrices_get_ratio_times_lr_and_1d_tensors_no_decay() -> None:
    specs = {
        "language": AdapterSpec(method="dora", r=2, targets=["re:0"], trainable_norms=True),
        "vision": AdapterSpec(method="lora", r=2, targets=["re:0"]),
    }
    groups = groups_of(specs, lr=1e-4, lora_plus_ratio=16, weight_decay=0.1)
    expected = {
        "language.lora": (1e-4, 0.1, 1),  # A
        "language.lora_B": (1.6e-3, 0.1, 1),
        "language.lora.no_decay": (1e-4, 0.0, 1),  # DoRA magnitude
        "language.params.no_decay": (1e-4, 0.0, 2),  # LayerNorm weight and bias
        "vision.lora": (1e-4, 0.1, 1),
        "vision.lora_B": (1.6e-3, 0.1, 1),
    }
    assert set(groups) == set(expected)
    for name, (lr, decay, n) in expected.items():
        g = groups[name]
        assert (g["lr"], g["weight_decay"], len(g["params"])) == (pytest.approx(lr), decay, n), name


@pytest.mark.parametrize(("vision_ratio", "vision_b_lr"), [(None, 2e-3), (4.0, 4e-3), (1.0, 1e-3)])
def test_tower_lr_and_ratio_override_and_none_is_the_only_unset(vision_ratio, vision_b_lr) -> None:
    specs = {
        "language": AdapterSpec(method="lora", r=2, targets=["re:0"]),
        "vision": AdapterSpec(method="lora", r=2, targets=["re:0"], lr=1e-3, lora_plus_ratio=vision_ratio),
    }
    lrs = {name: g["lr"] for name, g in groups_of(specs, lr=1e-4, lora_plus_ratio=2.0).items()}
    assert lrs == pytest.approx(
        {"language.lora": 1e-4, "language.lora_B": 2e-4, "vision.lora": 1e-3, "vision.lora_B": vision_b_lr}
    )


def test_nonpositive_tower_ratio_is_a_config_error() -> None:
    from vlmtune.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"adapters.language.lora_plus_ratio' must be > 0"):
        load_config("llava-lora", ["adapters.language.lora_plus_ratio=0"])
