"""LoRA/DoRA against the paper equations, independent of peft."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import AdapterError, AdapterSpec, DoraLinear, LoraLinear, attach, merge
from vlmtune.adapters.dora import row_norm_lowrank


def random_dora(out_f: int = 24, in_f: int = 16, r: int = 4, bias: bool = True, **kw) -> DoraLinear:
    torch.manual_seed(1)
    layer = DoraLinear(nn.Linear(in_f, out_f, bias=bias), r=r, alpha=2 * r, **kw)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.lora_magnitude_vector.mul_(torch.rand(out_f) + 0.5)
    return layer


def dense_dora_weight(layer: DoraLinear) -> torch.Tensor:
    """DoRA eq. 5 with the dense matrix: m * V / ||V||_c, V = W0 + s B A (row norms)."""
    v = layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    return layer.lora_magnitude_vector[:, None] * v / v.norm(dim=1, keepdim=True)


def test_lora_starts_as_identity_and_matches_equation() -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = LoraLinear(base, r=4, alpha=8)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    expected = x @ (base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight).T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_rslora_scaling() -> None:
    layer = LoraLinear(nn.Linear(8, 8), r=16, alpha=8, rslora=True)
    assert layer.scaling == pytest.approx(8 / 4)


def test_dora_magnitude_initialised_to_row_norm() -> None:
    base = nn.Linear(16, 24)
    layer = DoraLinear(base, r=4, alpha=8)
    torch.testing.assert_close(layer.lora_magnitude_vector.detach(), base.weight.norm(dim=1))


@pytest.mark.parametrize("bias", [True, False])
def test_dora_forward_is_equation_5(bias: bool) -> None:
    layer = random_dora(bias=bias)
    x = torch.randn(3, 16)
    expected = x @ dense_dora_weight(layer).T + (layer.base_layer.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_lowrank_norm_is_exact() -> None:
    layer = random_dora(out_f=64, in_f=48, r=8)
    v = layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    fast = row_norm_lowrank(
        layer.base_sq_norm(), layer.base_layer.weight, layer.lora_A.weight, layer.lora_B.weight, layer.scaling
    )
    torch.testing.assert_close(fast, v.norm(dim=1), rtol=1e-6, atol=1e-6)


def test_detached_norm_gradient_matches_paper_section_4_3() -> None:
    """With the norm a constant C, dL/dV = (m / C) dL/dW'."""
    layer = random_dora()
    x = torch.randn(6, 16)
    layer(x).pow(2).sum().backward()
    ga, gb, gm = layer.lora_A.weight.grad, layer.lora_B.weight.grad, layer.lora_magnitude_vector.grad
    # reference through the dense weight with the norm detached
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    m = layer.lora_magnitude_vector.detach().clone().requires_grad_()
    v = layer.base_layer.weight + layer.scaling * b @ a
    w = m[:, None] * v / v.norm(dim=1, keepdim=True).detach()
    (x @ w.T + layer.base_layer.bias).pow(2).sum().backward()
    for got, ref in ((ga, a.grad), (gb, b.grad), (gm, m.grad)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_norm_gradient_switch() -> None:
    layer = random_dora(detach_norm=False)
    x = torch.randn(6, 16)
    layer(x).pow(2).sum().backward()
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    v = layer.base_layer.weight + layer.scaling * b @ a
    w = layer.lora_magnitude_vector.detach()[:, None] * v / v.norm(dim=1, keepdim=True)
    (x @ w.T + layer.base_layer.bias).pow(2).sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, a.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_one_step_changes_a_b_and_magnitude_then_merge_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("tower", nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)))
    attach(
        model,
        {"language": ["tower"]},
        {"language": AdapterSpec(method="dora", r=4, alpha=8, targets=["re:[02]"])},
    )
    layers = [m for m in model.modules() if isinstance(m, DoraLinear)]
    assert len(layers) == 2
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(10, 16)
    model(x).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed == set(before), f"unchanged: {set(before) - changed}"
    assert any("lora_magnitude_vector" in n for n in changed)
    model.eval()
    expected = model(x)
    merge(model)
    assert type(model.tower[0]) is nn.Linear and type(model.tower[2]) is nn.Linear
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [LoraLinear, DoraLinear])
def test_unmerge_restores_base_weight(cls) -> None:
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    w0 = base.weight.detach().clone()
    layer = cls(base, r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 16)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


def test_bf16_weights_against_fp32_reference() -> None:
    layer = random_dora(out_f=64, in_f=64, r=8)
    x = torch.randn(4, 64)
    ref = x @ dense_dora_weight(layer).T.detach() + layer.base_layer.bias.detach()
    layer16 = layer.to(torch.bfloat16)
    layer16._base_sq_norm = None
    out = layer16(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)


def test_targets_resolve_inside_one_tower_only() -> None:
    model = nn.Module()
    model.vision = nn.Module()
    model.vision.q_proj = nn.Linear(4, 4)
    model.language = nn.Module()
    model.language.q_proj = nn.Linear(4, 4)
    attached = attach(
        model,
        {"language": ["language"], "vision": ["vision"]},
        {"language": AdapterSpec(method="lora", targets=["q"])},
    )
    assert attached == {"language.q_proj": "lora"}
    assert type(model.vision.q_proj) is nn.Linear


def test_unknown_target_and_method_errors_name_the_key() -> None:
    model = nn.Module()
    model.language = nn.Module()
    model.language.q_proj = nn.Linear(4, 4)
    with pytest.raises(AdapterError, match=r"adapters.language.targets=\['nope'\].*q_proj"):
        attach(model, {"language": ["language"]}, {"language": AdapterSpec(method="lora", targets=["nope"])})
    with pytest.raises(AdapterError, match=r"adapters.language.method='lroa'"):
        attach(model, {"language": ["language"]}, {"language": AdapterSpec(method="lroa", targets=["q"])})


class FakeQuantLinear(nn.Module):
    """Stands in for a bitsandbytes 4-bit layer: integer weight, dequantised inside forward."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.scale = w.abs().max() / 127
        self.weight = nn.Parameter((w / self.scale).round().to(torch.int8), requires_grad=False)
        self.bias = None
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight.float() * self.scale).t()


def test_lora_on_a_quantised_base_keeps_the_adapter_math() -> None:
    torch.manual_seed(0)
    base = FakeQuantLinear(torch.randn(8, 16))
    layer = LoraLinear(base, r=4, alpha=8)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 16)
    expected = base(x) + 2.0 * x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()
    assert layer.lora_A.weight.grad is not None and base.weight.grad is None
    with pytest.raises(AdapterError, match="DoRA on a 4-bit"):
        DoraLinear(base, r=4, alpha=8)  # type: ignore[arg-type]
