"""Adapters refuse a base model whose target shapes differ, with one line naming the module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlmtune.adapters import AdapterError, AdapterSpec, attach, load_adapter, save_adapter

TOWERS = {"language": ["lm"]}


def lm(hidden: int) -> nn.Module:
    model = nn.Module()
    model.lm = nn.Module()
    model.lm.q_proj = nn.Linear(hidden, hidden)
    model.lm.v_proj = nn.Linear(hidden, hidden)
    return model


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_other_hidden_size_is_one_clear_line(tmp_path, method: str) -> None:
    torch.manual_seed(0)
    small = lm(16)
    spec = AdapterSpec(method=method, r=4, alpha=8, targets=["q", "v"])
    attach(small, TOWERS, {"language": spec})
    save_adapter(small, tmp_path / "adapter", specs={"language": spec}, base_name_or_path="lm-16")
    for towers in (TOWERS, None):  # with vlmtune metadata, and as a plain PEFT folder
        with pytest.raises(AdapterError) as err:
            load_adapter(lm(32), tmp_path / "adapter", towers=towers)
        msg = str(err.value)
        assert "\n" not in msg
        assert "lm.q_proj" in msg or "lm.v_proj" in msg, msg
        assert "shape" in msg and "different" in msg or "other sizes" in msg, msg


def test_adapter_for_missing_module_is_named(tmp_path) -> None:
    model = lm(16)
    attach(model, TOWERS, {"language": AdapterSpec(method="lora", r=2, targets=["q"])})
    save_adapter(model, tmp_path / "a")
    other = nn.Module()
    other.lm = nn.Module()
    other.lm.k_proj = nn.Linear(16, 16)
    with pytest.raises(AdapterError, match=r"module 'lm.q_proj' does not exist in this base model"):
        load_adapter(other, tmp_path / "a")


def test_not_an_adapter_folder(tmp_path) -> None:
    with pytest.raises(AdapterError, match="no adapter_model.safetensors"):
        load_adapter(lm(8), tmp_path)
