"""DyLoRA: a rank-b slice is a LoRA of rank b; rank sampling per training forward; merge at a rank."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import (
    AdapterSpec,
    DyLoraLinear,
    LoraLinear,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    save_adapter,
    set_dylora_rank,
)


def random_dylora(r: int = 8, alpha: float = 16.0, rslora: bool = False) -> DyLoraLinear:
    torch.manual_seed(0)
    layer = DyLoraLinear(nn.Linear(16, 12), r=r, alpha=alpha, rslora=rslora)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("rslora", [False, True])
def test_rank_b_slice_equals_lora_of_rank_b(b: int, rslora: bool) -> None:
    layer = random_dylora(rslora=rslora)
    layer.set_rank(b)
    lora = LoraLinear(layer.base_layer, r=b, alpha=16.0, rslora=rslora)
    with torch.no_grad():
        lora.lora_A.weight.copy_(layer.lora_A.weight[:b])
        lora.lora_B.weight.copy_(layer.lora_B.weight[:, :b])
    x = torch.randn(5, 16)
    assert layer.scaling == lora.scaling == pytest.approx(16.0 / (b**0.5 if rslora else b))
    torch.testing.assert_close(layer(x), lora(x), rtol=1e-6, atol=1e-6)
    # gradients only reach the first b components
    layer(x).sum().backward()
    assert layer.lora_B.weight.grad[:, b:].abs().sum() == 0
    assert layer.lora_B.weight.grad[:, :b].abs().sum() > 0


def test_different_ranks_give_different_outputs() -> None:
    layer = random_dylora()
    x = torch.randn(3, 16)
    outs = []
    for b in (2, 8):
        layer.set_rank(b)
        outs.append(layer(x))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.v_proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v_proj(torch.tanh(self.q_proj(x)))


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Toy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


TOWERS = {"language": ["block"]}


def test_training_forward_samples_one_rank_for_all_layers() -> None:
    model = Wrapper()
    spec = AdapterSpec(method="dylora", r=8, targets=["q_proj", "v_proj"], options={"min_rank": 2, "seed": 0})
    attach(model, TOWERS, {"language": spec})
    layers = [m for _, m in adapter_layers(model)]
    x = torch.randn(2, 16)
    seen = set()
    model.train()
    for _ in range(40):
        model(x)
        ranks = {layer.rank for layer in layers}
        assert len(ranks) == 1
        seen |= ranks
    assert seen == set(range(2, 9))
    model.eval()
    model(x)
    assert all(layer.rank == 8 for layer in layers)
    set_dylora_rank(model, 3)
    model(x)
    assert all(layer.rank == 3 for layer in layers)


def test_merge_at_chosen_rank_and_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = Wrapper()
    spec = AdapterSpec(method="dylora", r=8, alpha=8, targets=["q_proj", "v_proj"])
    attach(model, TOWERS, {"language": spec})
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_B.weight.normal_()
    model.train()
    model(torch.randn(1, 16))  # leaves a sampled rank behind
    model.eval()
    save_adapter(model, tmp_path / "a", specs={"language": spec})
    x = torch.randn(3, 16)
    set_dylora_rank(model, 4)
    expected = model(x)
    torch.manual_seed(0)
    fresh = load_adapter(Wrapper(), tmp_path / "a", towers=TOWERS)
    assert all(isinstance(m, DyLoraLinear) and m.r == 8 for _, m in adapter_layers(fresh))
    fresh.eval()
    set_dylora_rank(fresh, 4)
    torch.testing.assert_close(fresh(x), expected)
    model.train()
    model(x)  # training forward samples another rank; merge must still use eval_rank 4
    merge(model)
    assert not list(adapter_layers(model))
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
