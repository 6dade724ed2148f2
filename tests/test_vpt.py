"""VPT on tiny timm / transformers CLIP / open_clip ViTs built from configs (no downloads)."""

from __future__ import annotations

import copy

import open_clip
import pytest
import timm.models.vision_transformer as tvit
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vlmtune.adapters import AdapterError, AdapterSpec, attach
from vlmtune.adapters.vpt import add_vpt, vit_layout, vpt_init_bound

DEPTH, DIM, LENGTH = 3, 32, 4


def tiny_timm(reg_tokens: int = 0) -> nn.Module:
    return tvit.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=2,
        num_classes=5,
        reg_tokens=reg_tokens,
    )


def tiny_clip() -> nn.Module:
    cfg = CLIPVisionConfig(
        hidden_size=DIM,
        intermediate_size=64,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return CLIPVisionModel(cfg)


def tiny_open_clip() -> nn.Module:
    return open_clip.transformer.VisionTransformer(
        image_size=32, patch_size=8, width=DIM, layers=DEPTH, heads=2, mlp_ratio=2.0, output_dim=16
    )


def features(kind: str, tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if kind.startswith("timm"):
        return tower.forward_features(x)
    if kind == "clip":
        return tower(pixel_values=x).last_hidden_state
    return tower(x)


BUILDERS = {
    "timm": tiny_timm,
    "timm-reg": lambda: tiny_timm(2),
    "clip": tiny_clip,
    "open_clip": tiny_open_clip,
}


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    holder = nn.Module()
    holder.tower = BUILDERS[kind]().eval()
    return holder


def vpt(holder: nn.Module, length: int = LENGTH, deep: bool = False) -> dict[str, str]:
    spec = AdapterSpec(method="vpt", options={"length": length, "deep": deep})
    return attach(holder, {"vision": ["tower"]}, {"vision": spec})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("deep", [False, True])
def test_only_prompts_trainable(kind: str, deep: bool) -> None:
    holder = build(kind)
    vpt(holder, deep=deep)
    trainable = {n: p.numel() for n, p in holder.named_parameters() if p.requires_grad}
    assert list(trainable) == ["tower.vpt.prompts"]
    assert trainable["tower.vpt.prompts"] == LENGTH * DIM * (DEPTH if deep else 1)


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("deep", [False, True])
def test_zero_length_equals_base(kind: str, deep: bool, images: torch.Tensor) -> None:
    base = build(kind)
    adapted = copy.deepcopy(base)
    vpt(adapted, length=0, deep=deep)
    with torch.no_grad():
        ref = features(kind, base.tower, images)
        out = features(kind, adapted.tower, images)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_prompts_change_output_keep_shape_and_get_grad(kind: str, images: torch.Tensor) -> None:
    base = build(kind)
    adapted = copy.deepcopy(base)
    vpt(adapted, deep=True)
    with torch.no_grad():
        ref = features(kind, base.tower, images)
    out = features(kind, adapted.tower, images)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() > 1e-4
    out.pow(2).mean().backward()
    grad = adapted.tower.vpt.prompts.grad
    assert grad is not None and bool((grad.abs().sum(dim=(1, 2)) > 0).all())  # every layer's set learns


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_deep_prompts_at_layer_i_are_layer_i(kind: str, images: torch.Tensor) -> None:
    holder = build(kind)
    vpt(holder, deep=True)
    layout = vit_layout(holder.tower)
    seen: dict[int, torch.Tensor] = {}
    for i, block in enumerate(layout.blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].detach()))
    with torch.no_grad():
        features(kind, holder.tower, images)
    s, prompts = layout.num_prefix, holder.tower.vpt.prompts
    for i in range(DEPTH):
        got = seen[i][:, s : s + LENGTH]
        torch.testing.assert_close(got, prompts[i].expand_as(got), rtol=0, atol=0)
        others = [j for j in range(DEPTH) if j != i]
        assert all(not torch.allclose(got[0], prompts[j]) for j in others)


@pytest.mark.parametrize("kind", ["timm", "clip"])
def test_shallow_carries_prompt_outputs(kind: str, images: torch.Tensor) -> None:
    """Block i > 0 receives block i-1's prompt outputs (eq. 5), not the learned prompts again."""
    holder = build(kind)
    vpt(holder, deep=False)
    layout = vit_layout(holder.tower)
    inputs, raw_out = {}, {}
    for i, block in enumerate(layout.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
        block.register_forward_hook(
            lambda m, a, o, i=i: raw_out.__setitem__(i, (o[0] if isinstance(o, tuple) else o).detach()),
            prepend=True,  # runs before VPT strips the prompts
        )
    with torch.no_grad():
        features(kind, holder.tower, images)
    s = layout.num_prefix
    torch.testing.assert_close(inputs[0][:, s : s + LENGTH], holder.tower.vpt.prompts[0].expand(2, -1, -1))
    for i in range(1, DEPTH):
        torch.testing.assert_close(inputs[i][:, s : s + LENGTH], raw_out[i - 1][:, s : s + LENGTH])


def _manual_timm(tower: nn.Module, prompts: torch.Tensor, deep: bool, x: torch.Tensor) -> torch.Tensor:
    """VPT eqs. 5 / 7 written out on a plain timm ViT."""
    x = tower.norm_pre(tower.patch_drop(tower._pos_embed(tower.patch_embed(x))))
    s, n, b = tower.num_prefix_tokens, prompts.shape[1], x.shape[0]
    x = torch.cat([x[:, :s], prompts[0].expand(b, -1, -1), x[:, s:]], 1)
    for i, blk in enumerate(tower.blocks):
        if deep and i > 0:
            x = torch.cat([x[:, :s], prompts[i].expand(b, -1, -1), x[:, s + n :]], 1)
        x = blk(x)
    return tower.norm(torch.cat([x[:, :s], x[:, s + n :]], 1))


@pytest.mark.parametrize("deep", [False, True])
def test_timm_matches_paper_equations(deep: bool, images: torch.Tensor) -> None:
    base = build("timm-reg")
    adapted = copy.deepcopy(base)
    vpt(adapted, deep=deep)
    with torch.no_grad():
        want = _manual_timm(base.tower, adapted.tower.vpt.prompts, deep, images)
        got = adapted.tower.forward_features(images)
        logits = adapted.tower(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert logits.shape == (2, 5)


def test_intermediates_and_hidden_states_have_base_shapes(images: torch.Tensor) -> None:
    t = build("timm")
    vpt(t, deep=False)
    with torch.no_grad():
        final, inter = t.tower.forward_intermediates(images)  # NCHW reshape fails if prompts leak
    assert final.shape == (2, 17, DIM) and all(y.shape == (2, DIM, 4, 4) for y in inter)
    c = build("clip")
    vpt(c, deep=True)
    with torch.no_grad():
        out = c.tower(pixel_values=images, output_hidden_states=True)
    assert len(out.hidden_states) == DEPTH + 1
    assert all(h.shape == (2, 17, DIM) for h in out.hidden_states)
    o = build("open_clip")
    vpt(o, deep=True)
    with torch.no_grad():
        res = o.tower.forward_intermediates(images)
    assert all(y.shape == (2, DIM, 4, 4) for y in res["image_intermediates"])


def test_init_range_and_dropout() -> None:
    assert vpt_init_bound(16, 768) == pytest.approx(0.0625)
    holder = build("timm")
    prompts = add_vpt(holder.tower, length=50, deep=True, dropout=0.5)
    bound = vpt_init_bound(8, DIM)
    p = prompts.prompts.detach()
    assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound  # uniform over the full range
    assert abs(p.std().item() - bound / 3**0.5) < 0.1 * bound
    prompts.train()
    assert (prompts.layer_prompts(1) == 0).float().mean() > 0.3  # dropout active in train mode
    prompts.eval()
    assert torch.equal(prompts.layer_prompts(1), p[1])


def test_bad_options_raise_one_line() -> None:
    holder = build("timm")
    with pytest.raises(AdapterError, match="options: unknown VPT option"):
        attach(holder, {"vision": ["tower"]}, {"vision": AdapterSpec(method="vpt", options={"lenght": 3})})
    with pytest.raises(AdapterError, match="options.length must be"):
        attach(holder, {"vision": ["tower"]}, {"vision": AdapterSpec(method="vpt", options={"length": -1})})
    holder.tower2 = nn.Linear(2, 2)
    with pytest.raises(AdapterError, match="VPT supports"):
        attach(holder, {"vision": ["tower2"]}, {"vision": AdapterSpec(method="vpt")})
