"""vlmtune LoRA/DoRA against peft 0.21 on the same random weights (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from toy_models import TARGETS, TOWERS, Toy, assert_close, peft_twins

from vlmtune.adapters import (
    AdapterSpec,
    DoraLinear,
    LoraLinear,
    adapter_layers,
    attach,
    load_adapter,
    save_adapter,
)

peft = pytest.importorskip("peft")

RTOL = 1e-5


def make_pair(use_dora: bool, r: int = 4, alpha: float = 8.0, rslora: bool = False):
    """The same random base + adapter weights in a peft model and a vlmtune model."""
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=TARGETS,
        use_dora=use_dora,
        use_rslora=rslora,
        init_lora_weights=False,
    )
    method = "dora" if use_dora else "lora"
    spec = AdapterSpec(method=method, r=r, alpha=alpha, targets=TARGETS, rslora=rslora)
    _, ours, ref, pairs = peft_twins(cfg, spec)
    for _, layer, src in pairs:
        with torch.no_grad():
            layer.lora_A.weight.copy_(src.lora_A["default"].weight)
            layer.lora_B.weight.copy_(src.lora_B["default"].weight)
            if use_dora:
                layer.lora_magnitude_vector.copy_(src.lora_magnitude_vector["default"].weight)
    return ours, ref


def grads(model: nn.Module, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        for k in keys:
            if k in name:
                clean = (
                    name.replace("base_model.model.", "")
                    .replace(".default", "")
                    .replace("vector.weight", "vector")
                )
                out[clean] = p.grad
    return out


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("rslora", [False, True])
def test_forward_and_gradients_match_peft(use_dora: bool, rslora: bool) -> None:
    ours, ref = make_pair(use_dora, rslora=rslora)
    x = torch.randn(3, 5, 32)
    y_ours, y_ref = ours(x), ref(x)
    assert_close(y_ours, y_ref)
    w = torch.randn_like(y_ref)
    (y_ours * w).sum().backward()
    (y_ref * w).sum().backward()
    keys = ("lora_A", "lora_B", "lora_magnitude_vector")
    g_ours, g_ref = grads(ours, keys), grads(ref, keys)
    assert g_ours.keys() == g_ref.keys() and len(g_ours) == (3 if use_dora else 2) * 8
    for name in g_ref:
        assert_close(g_ours[name], g_ref[name])


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_weights_match_peft(use_dora: bool) -> None:
    ours, ref = make_pair(use_dora)
    merged_ref = ref.merge_and_unload()
    from vlmtune.adapters import merge

    merge(ours)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), merged_ref.named_parameters(), strict=True):
        assert n1 == n2
        assert_close(p1, p2)


@pytest.mark.parametrize("use_dora", [False, True])
def test_eval_mode_with_dropout_matches_peft(use_dora: bool) -> None:
    """Dropout placement differs from peft only in training mode."""
    torch.manual_seed(0)
    base = Toy()
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.3,
        target_modules=TARGETS,
        use_dora=use_dora,
        init_lora_weights=False,
    )
    ref = peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    ours = copy.deepcopy(base)
    attach(
        ours,
        TOWERS,
        {
            "language": AdapterSpec(
                method="dora" if use_dora else "lora", r=4, alpha=8, dropout=0.3, targets=TARGETS
            )
        },
    )
    ours.eval()
    tmp = {k.replace("base_model.model.", ""): v for k, v in peft.get_peft_model_state_dict(ref).items()}
    for path, layer in adapter_layers(ours):
        layer.load_adapter_tensor("lora_A.weight", tmp[f"{path}.lora_A.weight"])
        layer.load_adapter_tensor("lora_B.weight", tmp[f"{path}.lora_B.weight"])
        if use_dora:
            layer.load_adapter_tensor("lora_magnitude_vector", tmp[f"{path}.lora_magnitude_vector"])
    x = torch.randn(4, 32)
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize("use_dora", [False, True])
def test_vlmtune_folder_loads_in_peft(tmp_path, use_dora: bool) -> None:
    ours, _ = make_pair(use_dora)
    x = torch.randn(2, 7, 32)
    expected = ours(x)
    save_adapter(ours, tmp_path / "adapter", specs=None, base_name_or_path="toy")
    torch.manual_seed(0)
    fresh = Toy()  # same seed -> same base weights
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert_close(loaded(x), expected)


@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_folder_loads_in_vlmtune(tmp_path, use_dora: bool) -> None:
    _, ref = make_pair(use_dora, r=6, alpha=3.0)
    x = torch.randn(2, 7, 32)
    expected = ref(x)
    ref.save_pretrained(tmp_path / "peft")
    torch.manual_seed(0)
    fresh = Toy()
    load_adapter(fresh, tmp_path / "peft")
    layers = dict(adapter_layers(fresh))
    assert len(layers) == 8 and all(
        isinstance(m, DoraLinear if use_dora else LoraLinear) for m in layers.values()
    )
    assert all(m.r == 6 and m.scaling == 0.5 for m in layers.values())
    assert_close(fresh(x), expected)
