"""The PIN base's stage 0d: position code, token scrambling, the build."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from vlmtune.presets import PRESETS
from vlmtune.presets.shapes_tiny_pin import (
    build_shapes_tiny_pin,
    feature_norm,
    position_code,
    scrambled_positions,
)


def test_position_code_is_a_2d_sinusoid() -> None:
    code = position_code(4, 18).reshape(4, 4, 18)
    assert torch.allclose(code.norm(dim=-1), torch.full((4, 4), math.sqrt(8)))  # dim // 4 = 4 frequencies
    assert torch.equal(code[..., 16:], torch.zeros(4, 4, 2))  # dim % 4 pads with zeros
    assert torch.equal(code[1, 0, :8], code[1, 3, :8]) and torch.equal(code[0, 2, 8:16], code[3, 2, 8:16])
    assert torch.allclose(code[2, 0, 0], torch.tensor(math.sin(2 * math.pi / 2)), atol=1e-6)  # r=2, w_0=pi/2
    flat = code.reshape(16, 18)
    assert torch.cdist(flat, flat).add(torch.eye(16)).min() > 0.1  # every patch has its own code
    with pytest.raises(ValueError, match="dim >= 4"):
        position_code(4, 3)


def test_scrambled_positions_adds_the_code_then_permutes_each_image() -> None:
    module = nn.Identity()
    x, code = torch.randn(3, 16, 8), torch.randn(16, 8)
    with scrambled_positions(module, code):
        torch.manual_seed(0)
        a = module(x)
        torch.manual_seed(0)
        b = module(x)
    assert torch.equal(a, b)  # reproducible under a seed
    orders = [[int(torch.nonzero((a[i] == row).all(-1))[0]) for row in x[i] + code] for i in range(3)]
    assert all(sorted(order) == list(range(16)) for order in orders)  # every token once, code added
    assert len({tuple(order) for order in orders} | {tuple(range(16))}) == 4  # own random order each
    assert torch.equal(module(x), x) and not module._forward_pre_hooks  # gone after the block


def test_build_trains_lm_and_projector_and_ships_no_code(model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    out = build_shapes_tiny_pin(tmp_path / "pin", steps=2, base=str(model_dir), n_images=40)
    before, after = load_file(model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(before) == set(after)  # a plain LLaVA folder: no PIN, no code
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"language_model", "multi_modal_projector"}  # the vision tower stays frozen
    assert "shapes-tiny-pin" in PRESETS["llava"]


def test_feature_norm_reads_the_projector_input(model_dir, shapes_cache) -> None:
    from vlmtune.core.config import load_config
    from vlmtune.data.records import load_records
    from vlmtune.models import build_pipeline

    pipe = build_pipeline(load_config("llava-pin", [f"model.name_or_path={model_dir}"]))
    records = load_records("shapes:locate", split="train", n_images=3, cache_dir=shapes_cache)
    with torch.no_grad():
        out = pipe.model.model.vision_tower(
            pixel_values=pipe.pixel_values(records), output_hidden_states=True
        )
    patches = out.hidden_states[-1][:, 1:]  # LLaVA "default": last layer, CLS dropped
    assert patches.shape[1] == pipe.num_image_tokens
    assert feature_norm(pipe, records) == pytest.approx(patches.norm(dim=-1).mean().item(), rel=1e-6)
    assert not pipe.model.model.multi_modal_projector._forward_pre_hooks
