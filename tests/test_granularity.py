"""DoRA tuning granularity (§5.6): magnitude-only modules have no A/B and compute m * W0 / ||W0||_c."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vlmtune.adapters import (
    AdapterError,
    AdapterSpec,
    DoraLinear,
    MagnitudeOnlyLinear,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    param_report,
    save_adapter,
)


class Block(nn.Module):
    def __init__(self, d: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.up_proj = nn.Linear(d, hidden)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.o_proj(self.q_proj(x) * torch.sigmoid(self.k_proj(x)) + self.v_proj(x))
        return x + self.down_proj(torch.relu(self.up_proj(h)))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


TOWERS = {"language": ["layers"]}
SPEC = AdapterSpec(method="dora", r=4, alpha=8, targets=["q", "k", "v"], magnitude_only=["o", "up", "down"])


def adapted(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy()
    attach(model, TOWERS, {"language": SPEC})
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_magnitude_vector.mul_(torch.rand_like(layer.lora_magnitude_vector) + 0.5)
            if isinstance(layer, DoraLinear):
                layer.lora_B.weight.normal_()
    return model


def test_magnitude_only_modules_have_no_lowrank_factors() -> None:
    model = adapted()
    layers = dict(adapter_layers(model))
    for path, layer in layers.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf in ("o_proj", "up_proj", "down_proj"):
            assert isinstance(layer, MagnitudeOnlyLinear)
            names = {n for n, _ in layer.named_parameters()}
            assert names == {"lora_magnitude_vector", "base_layer.weight"} | (
                {"base_layer.bias"} if layer.base_layer.bias is not None else set()
            )
            assert not hasattr(layer, "lora_A") and not hasattr(layer, "lora_B")
        else:
            assert isinstance(layer, DoraLinear)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # per block: q,k,v: A (4,16) + B (16,4) + m (16); o: 16; up: 24; down: 16
    assert trainable == 2 * (3 * (64 + 64 + 16) + 16 + 24 + 16)
    assert param_report(model, TOWERS)[0].trainable == trainable


def test_magnitude_only_is_rescaled_rows_and_merges() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    layer = MagnitudeOnlyLinear(base)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-5, atol=1e-6)  # m = ||W0||_c at init
    with torch.no_grad():
        layer.lora_magnitude_vector.mul_(torch.rand(24) + 0.5)
    w = layer.lora_magnitude_vector[:, None] * base.weight / base.weight.norm(dim=1, keepdim=True)
    expected = x @ w.T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    layer(x).sum().backward()
    assert layer.lora_magnitude_vector.grad.abs().sum() > 0 and base.weight.grad is None
    merged = layer.merged_linear()
    torch.testing.assert_close(merged(x), expected.detach(), rtol=1e-5, atol=1e-6)


def test_model_merge_and_save_load(tmp_path) -> None:
    model = adapted()
    x = torch.randn(3, 16)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs={"language": SPEC})
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["use_dora"] and cfg["rank_pattern"]["layers.0.o_proj"] == 1
    for towers in (TOWERS, None):
        fresh = load_adapter(_fresh(), tmp_path / "a", towers=towers)
        kinds = {type(m) for _, m in adapter_layers(fresh)}
        assert kinds == {DoraLinear, MagnitudeOnlyLinear}
        torch.testing.assert_close(fresh(x), expected)
    merge(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def _fresh() -> Toy:
    torch.manual_seed(0)
    return Toy()


def test_folder_loads_in_peft(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    model = adapted()
    x = torch.randn(3, 16)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs={"language": SPEC})
    loaded = peft.PeftModel.from_pretrained(_fresh(), tmp_path / "a")  # zero B where no A/B was saved
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_magnitude_only_needs_a_magnitude_method() -> None:
    spec = AdapterSpec(method="lora", targets=["q"], magnitude_only=["o"])
    with pytest.raises(AdapterError, match="magnitude_only"):
        attach(_fresh(), TOWERS, {"language": spec})
    spec = AdapterSpec(method="dora", targets=["q"], magnitude_only=["nope"])
    with pytest.raises(AdapterError, match="matched no linear layer"):
        attach(_fresh(), TOWERS, {"language": spec})
