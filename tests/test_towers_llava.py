"""Per-tower targeting on a real transformers LLaVA (tiny config, random weights)."""

from __future__ import annotations

from torch import nn
from toy_models import LLAVA_TOWERS as TOWERS
from toy_models import tiny_llava

from vlmtune.adapters import AdapterSpec, LoraLinear, adapter_layers, attach, param_report


def test_language_q_v_only_touches_language_model() -> None:
    model = tiny_llava(text_layers=2)
    vision_before = {n: type(m) for n, m in model.model.vision_tower.named_modules()}
    attached = attach(
        model, TOWERS, {"language": AdapterSpec(method="lora", r=4, targets=["q_proj", "v_proj"])}
    )
    paths = [p for p, _ in adapter_layers(model)]
    assert sorted(paths) == sorted(attached) and len(paths) == 4  # 2 layers x (q, v)
    assert all(p.startswith("model.language_model.layers.") for p in paths)
    assert {n: type(m) for n, m in model.model.vision_tower.named_modules()} == vision_before
    assert not any(isinstance(m, LoraLinear) for m in model.model.vision_tower.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n and n.startswith("model.language_model.") for n in trainable)


def test_report_counts_per_tower() -> None:
    model = tiny_llava(text_layers=2)
    attach(
        model,
        TOWERS,
        {
            "language": AdapterSpec(method="dora", r=4, targets=["q", "v"]),
            "vision": AdapterSpec(method="lora", r=2, targets=["q"]),
            "projector": AdapterSpec(method="full"),
        },
    )
    rows = {r.name: r for r in param_report(model, TOWERS)}
    # language: 2 layers x 2 modules x (A 4x32 + B 32x4 + m 32); vision: 2 layers x (A 2x32 + B 32x2)
    assert rows["language"].trainable == 2 * 2 * (4 * 32 + 32 * 4 + 32)
    assert rows["vision"].trainable == 2 * (2 * 32 + 32 * 2)
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert rows["projector"].trainable == projector == rows["projector"].total
    base_total = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    assert rows["total"].total == base_total
    assert rows["total"].trainable == rows["language"].trainable + rows["vision"].trainable + projector
    assert abs(rows["total"].percent - 100 * rows["total"].trainable / base_total) < 1e-9
    assert isinstance(model.model.vision_tower, nn.Module)


def test_report_shows_no_share_for_a_tower_without_base_parameters() -> None:
    """A tower made only of inserted modules (the Q-Former PIN seam) has 0 base parameters: '-' not a huge %."""
    from vlmtune.adapters.report import ParamCount, format_report

    lines = format_report(
        [ParamCount("qformer", 58_560, 0, 58_560), ParamCount("total", 58_560, 700_096, 58_560)]
    )
    assert lines.splitlines()[1].split() == ["qformer", "58,560", "0", "-"]
    assert lines.splitlines()[2].split() == ["total", "58,560", "700,096", "8.3646%"]
