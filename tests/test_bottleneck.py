"""Bottleneck adapters: Houlsby serial and He et al. parallel, identity at init, save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import (
    AdapterError,
    AdapterSpec,
    BottleneckAdapter,
    attach,
    load_adapter,
    merge,
    param_report,
    save_adapter,
)


class Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.o_proj = nn.Linear(d, d)

    def forward(self, x):
        return self.o_proj(x), None  # HF attention modules return tuples


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(d, hidden)
        self.down_proj = nn.Linear(hidden, d)

    def forward(self, x):
        return self.down_proj(torch.relu(self.up_proj(x)))


class Layer(nn.Module):
    def __init__(self, d: int = 16, hidden: int = 40) -> None:
        super().__init__()
        self.self_attn = Attn(d)
        self.mlp = MLP(d, hidden)

    def forward(self, x):
        x = x + self.self_attn(x)[0]
        return x + self.mlp(x)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Layer(), Layer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


TOWERS = {"language": ["layers"]}


def randomize(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                m.adapter_up.weight.normal_()
                m.adapter_up.bias.normal_()


def test_houlsby_serial_placement_and_equation() -> None:
    base = Toy()
    model = Toy()
    attach(model, TOWERS, {"language": AdapterSpec(method="houlsby", r=4, targets=["o", "down"])})
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BottleneckAdapter)]
    assert wrapped == [f"layers.{i}.{p}" for i in range(2) for p in ("self_attn.o_proj", "mlp.down_proj")]
    randomize(model)
    a = model.layers[0].mlp.down_proj
    h = torch.randn(5, 40)
    y = a.base_layer(h)
    expected = y + a.adapter_up(torch.relu(a.adapter_down(y)))
    torch.testing.assert_close(a(h), expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_" in n for n in trainable)
    row = param_report(model, TOWERS)[0]
    assert row.trainable == row.adapter == 4 * (16 * 4 + 4 + 4 * 16 + 16)


def test_parallel_adapter_on_ffn_block() -> None:
    model = Toy()
    spec = AdapterSpec(method="parallel", r=8, targets=["mlp"], options={"scaling": 4.0})
    attach(model, TOWERS, {"language": spec})
    a = model.layers[1].mlp
    assert (
        isinstance(a, BottleneckAdapter)
        and a.adapter_down.in_features == 16
        and a.adapter_up.out_features == 16
    )
    randomize(model)
    x = torch.randn(3, 16)
    expected = a.base_layer(x) + 4.0 * a.adapter_up(torch.relu(a.adapter_down(x)))
    torch.testing.assert_close(a(x), expected)


def test_save_load_roundtrip_and_no_merge(tmp_path) -> None:
    model = Toy()
    spec = AdapterSpec(method="bottleneck", r=4, targets=["o", "mlp"], options={"placement": "parallel"})
    attach(model, TOWERS, {"language": spec})
    randomize(model)
    x = torch.randn(2, 16)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs={"language": spec})
    fresh = load_adapter(Toy(), tmp_path / "a", towers=TOWERS)
    torch.testing.assert_close(fresh(x), expected)
    with pytest.raises(AdapterError, match="cannot be merged"):
        merge(model)


def test_unmatched_targets_error() -> None:
    with pytest.raises(AdapterError, match="matched no module"):
        attach(Toy(), TOWERS, {"language": AdapterSpec(method="houlsby", r=4, targets=["nope"])})
