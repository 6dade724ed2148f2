"""The fused LoRA/DoRA step (``lowrank_linear``): gradients, dropout, dtypes, memory, merge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import DoraLinear, LoraLinear
from vlmtune.adapters.dora import row_norm_lowrank
from vlmtune.adapters.lora import drop_mask


def make(cls, out_f: int = 24, in_f: int = 16, r: int = 4, bias: bool = True, dropout: float = 0.0, **kw):
    torch.manual_seed(3)
    layer = cls(nn.Linear(in_f, out_f, bias=bias), r=r, alpha=2 * r, dropout=dropout, **kw)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        if cls is DoraLinear:
            layer.lora_magnitude_vector.mul_(torch.rand(out_f) + 0.5)
    return layer


def reference(layer, x: torch.Tensor, dropout: float, seed: int):
    """The same step in plain autograd ops on cloned leaves; dropout mask from the same RNG draw."""
    a = layer.lora_A.weight.detach().clone().requires_grad_()
    b = layer.lora_B.weight.detach().clone().requires_grad_()
    w0, bias = layer.base_layer.weight.detach(), layer.base_layer.bias
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    xd = x.masked_fill(drop_mask(x, dropout), 0) / (1 - dropout) if dropout > 0 else x
    z = x @ w0.T + layer.scaling * (xd @ a.T) @ b.T
    leaves = {"x": x, "A": a, "B": b, "bias": bias}
    if isinstance(layer, DoraLinear):
        m = layer.lora_magnitude_vector.detach().clone().requires_grad_()
        v = w0 + layer.scaling * b @ a
        z = m / v.norm(dim=1).detach() * z
        leaves["m"] = m
    y = z if bias is None else z + bias
    return y, leaves


def grads(layer, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
    got = {"x": x.grad, "A": layer.lora_A.weight.grad, "B": layer.lora_B.weight.grad, "bias": None}
    if layer.base_layer.bias is not None:
        got["bias"] = layer.base_layer.bias.grad
    if isinstance(layer, DoraLinear):
        got["m"] = layer.lora_magnitude_vector.grad
    return got


@pytest.mark.parametrize("cls", [LoraLinear, DoraLinear])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_step_matches_plain_autograd(cls, dropout: float, bias: bool) -> None:
    layer = make(cls, bias=bias, dropout=dropout)
    layer.base_layer.bias is not None and layer.base_layer.bias.requires_grad_(True)
    x = torch.randn(2, 5, 16, requires_grad=True)  # (batch, tokens, in): leading dims kept
    g = torch.randn(2, 5, 24)
    torch.manual_seed(11)
    y = layer(x)
    y.backward(g)
    ref, leaves = reference(layer, x, dropout, seed=11)
    ref.backward(g)
    assert y.shape == (2, 5, 24)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for name, got in grads(layer, x).items():
        if leaves[name] is None:
            continue
        torch.testing.assert_close(got, leaves[name].grad, rtol=1e-5, atol=1e-5, msg=name)


def test_dropout_acts_on_low_rank_branch_only() -> None:
    """With B = 0 and m = ||W0||, train-mode DoRA with dropout is exactly the base layer."""
    torch.manual_seed(0)
    layer = DoraLinear(nn.Linear(16, 8), r=4, alpha=8, dropout=0.5).train()
    x = torch.randn(6, 16)
    torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=1e-6, atol=1e-6)


def test_fast_norm_is_exact_in_float64() -> None:
    torch.manual_seed(0)
    w0, a, b = torch.randn(40, 32, dtype=torch.float64), torch.randn(6, 32, dtype=torch.float64), None
    b = torch.randn(40, 6, dtype=torch.float64)
    dense = (w0 + 0.7 * b @ a).norm(dim=1)
    fast = row_norm_lowrank(w0.pow(2).sum(1), w0, a, b, 0.7)
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, dense, rtol=1e-12, atol=1e-12)


def test_bf16_weights_train_step_against_fp32_reference() -> None:
    layer = make(DoraLinear, out_f=64, in_f=96, r=8)
    x = torch.randn(32, 96)
    g = torch.randn(32, 64)
    ref, leaves = reference(layer, x, 0.0, seed=0)
    ref.backward(g)
    layer16 = layer.to(torch.bfloat16)
    assert layer16.base_sq_norm().dtype == torch.float32  # recomputed: W0 changed storage and dtype
    x16 = x.to(torch.bfloat16).requires_grad_()
    y = layer16(x16)
    y.backward(g.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.detach(), rtol=2e-2, atol=5e-2)
    for name, got in grads(layer16, x16).items():
        if name == "bias":
            continue
        want = leaves[name].grad
        err = (got.float() - want).norm() / want.norm()
        assert err < 2e-2, f"{name}: relative error {err:.2e} in bf16"


def test_bf16_norm_accumulates_in_fp32() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(64, 512)
    a, b = torch.randn(8, 512) * 0.05, torch.randn(64, 8) * 0.05
    dense = (w0 + 2.0 * b @ a).norm(dim=1)
    w16, a16, b16 = w0.bfloat16(), a.bfloat16(), b.bfloat16()
    fast = row_norm_lowrank(w16.float().pow(2).sum(1), w16, a16, b16, 2.0)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, dense, rtol=1e-2, atol=1e-2)


def test_autocast_bf16_runs_in_bf16_and_matches() -> None:
    layer = make(DoraLinear, dropout=0.0)
    x = torch.randn(4, 16, requires_grad=True)
    ref = layer(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert layer.lora_A.weight.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=5e-2)


def test_base_norm_cache_follows_in_place_writes_to_w0() -> None:
    layer = make(DoraLinear)
    first = layer.base_sq_norm().clone()
    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)
    torch.testing.assert_close(layer.base_sq_norm(), 4.0 * first)


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd saves for backward in one forward (x itself excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() != x.untyped_storage().data_ptr() and not isinstance(t, nn.Parameter):
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dora_saves_one_output_sized_tensor_more_than_lora(dropout: float) -> None:
    n, d_in, d_out, r = 64, 48, 40, 4
    x = torch.randn(n, d_in, requires_grad=True)
    lora = make(LoraLinear, out_f=d_out, in_f=d_in, r=r, dropout=dropout).train()
    dora = make(DoraLinear, out_f=d_out, in_f=d_in, r=r, dropout=dropout).train()
    base_saved = saved_bytes(lora, x)
    mask = n * d_in if dropout else 0  # bool dropout mask; no dropped copy of x is kept
    assert base_saved <= 4 * n * r + mask + 4 * 2 * (d_in + d_out) * r  # u = A x (+ tiny weight views)
    extra = saved_bytes(dora, x) - base_saved
    assert extra <= 4 * n * d_out + 2 * 4 * d_out  # z for dm; (out,) vectors m / ||W'|| and ||W'||


def test_merged_layer_runs_only_the_base_ops() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    layer = make(DoraLinear, dropout=0.1).train()
    x = torch.randn(3, 16)
    layer.merge()
    with Ops() as merged_ops:
        y = layer(x)
    with Ops() as base_ops:
        ref = layer.base_layer(x)
    assert merged_ops.ops == base_ops.ops
    torch.testing.assert_close(y, ref, rtol=0, atol=0)


def test_eval_norm_is_cached_until_a_weight_changes(monkeypatch) -> None:
    import vlmtune.adapters.dora.layer as dora_mod

    calls = []
    real = dora_mod.row_norm_lowrank
    monkeypatch.setattr(dora_mod, "row_norm_lowrank", lambda *a: calls.append(1) or real(*a))
    layer = make(DoraLinear).eval()
    x = torch.randn(3, 16)
    with torch.no_grad():
        first = layer(x)
        torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
        assert len(calls) == 1  # the second forward reused the norm
        layer.lora_A.weight.add_(0.1)  # an optimizer-style in-place update
        fresh = make(DoraLinear).eval()
        fresh.lora_A.weight.copy_(layer.lora_A.weight)
        torch.testing.assert_close(layer(x), fresh(x), rtol=1e-6, atol=1e-6)
    assert len(calls) == 3
    layer.train()
    layer(x)
    layer(x)
    assert len(calls) == 5  # training forwards always recompute


@pytest.mark.slow
def test_adapter_benchmark_smoke(capsys, monkeypatch) -> None:
    """benchmarks/adapters.py runs end to end at toy sizes and prints JSON rows plus the ratio table."""
    import importlib.util
    import json
    from pathlib import Path

    pytest.importorskip("peft")
    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))  # for its sibling helpers (harness)
    threads = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("benchmark_adapters", bench_dir / "adapters.py")
    adapters = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapters)
    args = "--device cpu --linear-hidden 32 --linear-tokens 8 --hidden 64 --mlp 96 --heads 2 --tokens 8"
    try:
        assert adapters.main([*args.split(), "--ranks", "4", "--dropouts", "0.1", "--repeats", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{") and "variant" in line]
    assert {r["variant"] for r in rows} >= {"base", "vlmtune-dora", "peft-dora", "vlmtune-dora-merged"}
    assert {r["shape"] for r in rows} == {"linear", "stack"}
    assert all(r["step_ms"] > 0 for r in rows)
    peak = {(r["shape"], r["variant"]): r["peak_mb"] for r in rows}
    assert peak["stack", "vlmtune-dora"] < peak["stack", "peft-dora"]
    assert "| linear | 4 | 0.1 |" in out and "acceptance (issue #9)" in out


def test_drop_mask_drops_with_rate_p():
    torch.manual_seed(0)
    x = torch.randn(512, 256)
    mask = drop_mask(x, 0.25)
    assert mask.dtype == torch.bool and mask.shape == x.shape
    assert abs(mask.float().mean().item() - 0.25) < 0.01  # 131072 draws: std 0.0012
    assert not drop_mask(x, 0.0).any()
