"""PIN module on a tiny LLaVA built from configs, the pin-loc metric, and VPT inside LLaVA."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from toy_models import LLAVA_TOWERS as TOWERS
from toy_models import N_PATCHES, inputs, tiny_llava

from vlmtune.adapters import AdapterError, AdapterSpec, attach
from vlmtune.adapters.pin import PositionalInsert, sinusoid_table
from vlmtune.adapters.vpt import vit_layout
from vlmtune.eval.pin_loc import box_iou, gt_box, parse_prediction, score_pin_loc


def test_sinusoid_table() -> None:
    t = sinusoid_table(5, 8)
    assert t.shape == (5, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 1.0] * 4))
    assert t[3, 0].item() == pytest.approx(math.sin(3.0)) and t[3, 3].item() == pytest.approx(
        math.cos(3 * 0.1)
    )


def test_paper_size_is_about_1_2m_parameters() -> None:
    pin = PositionalInsert(dim=1024)  # 64 -> 512 -> 768 -> 1024 (CLIP ViT-L/14 width, OpenFlamingo-3B)
    assert sum(p.numel() for p in pin.parameters()) == 1_217_280


def test_pin_only_trainable_starts_exact_and_is_input_agnostic() -> None:
    base = tiny_llava()
    model = copy.deepcopy(base)
    spec = AdapterSpec(method="pin", options={"hidden": [16, 24]})
    attach(model, TOWERS, {"projector": spec})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.multi_modal_projector.pin.") for n in trainable)
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).logits, base(**batch).logits, rtol=0, atol=0
        )  # zero-init out
        torch.nn.init.normal_(model.model.multi_modal_projector.pin.out.weight, std=0.5)
    seen = {}
    model.model.multi_modal_projector.linear_1.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("x", a[0])
    )
    base.model.multi_modal_projector.linear_1.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("ref", a[0])
    )
    out = model(**batch).logits
    with torch.no_grad():
        ref = base(**batch).logits
    delta = seen["x"] - seen["ref"]  # (B, 16, 32): the same insert for both images, different per position
    assert delta.shape == (2, N_PATCHES, 32)
    torch.testing.assert_close(delta[0], delta[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(delta[0], model.model.multi_modal_projector.pin(N_PATCHES), rtol=0, atol=1e-5)
    assert (delta[0, 0] - delta[0, 5]).abs().max() > 1e-3
    assert (out - ref).abs().max() > 1e-4
    out.sum().backward()
    assert model.model.multi_modal_projector.pin.mlp[0].weight.grad.abs().sum() > 0


def test_pin_rejects_vision_tower_and_bad_options() -> None:
    with pytest.raises(AdapterError, match="attach it to the projector tower"):
        attach(tiny_llava(), TOWERS, {"vision": AdapterSpec(method="pin")})
    with pytest.raises(AdapterError, match="options.hidden must be"):
        attach(tiny_llava(), TOWERS, {"projector": AdapterSpec(method="pin", options={"hidden": [0]})})


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_in_llava_keeps_image_token_count(deep: bool) -> None:
    """Prompt outputs never reach the projector: 16 image tokens still match 16 features."""
    base = tiny_llava()
    model = copy.deepcopy(base)
    attach(model, TOWERS, {"vision": AdapterSpec(method="vpt", options={"length": 3, "deep": deep})})
    assert vit_layout(model.model.vision_tower).num_prefix == 1
    with torch.no_grad():
        out, ref = model(**inputs()).logits, base(**inputs()).logits
    assert out.shape == ref.shape and (out - ref).abs().max() > 1e-5


def test_box_iou_and_parsing() -> None:
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0 and box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    assert parse_prediction("it is at [0.50, 0.1,0.2,0.40].") == [0.2, 0.1, 0.5, 0.4]
    assert parse_prediction("a red circle") is None
    record = {
        "boxes": [{"label": "red circle", "bbox": [8, 16, 24, 32]}],
        "meta": {"width": 64, "height": 64},
    }
    assert gt_box(record) == [0.125, 0.25, 0.375, 0.5]


def test_miou_overall_medium_large() -> None:
    rows = [
        {"prediction": [0.0, 0.0, 0.5, 0.5], "box": [0.0, 0.0, 0.5, 0.5]},  # large, IoU 1
        {"prediction": [0.0, 0.0, 0.5, 0.25], "box": [0.0, 0.0, 0.5, 0.5]},  # large, IoU 0.5
        {"prediction": None, "box": [0.0, 0.0, 0.1, 0.1]},  # medium (1% of the image), unparsed: 0
        {"prediction": [0.0, 0.0, 0.05, 0.05], "box": [0.0, 0.0, 0.05, 0.05]},  # 0.25%: small, only in mIoU
    ]
    m = score_pin_loc(rows)
    assert m["mIoU"] == pytest.approx(2.5 / 4) and m["mIoU_L"] == pytest.approx(0.75) and m["mIoU_M"] == 0.0
    assert (m["count"], m["count_M"], m["count_L"], m["parsed"]) == (4, 1, 2, 0.75)
    assert score_pin_loc(rows[:1])["mIoU_M"] is None


class _FixedAnswers:
    """A stand-in pipeline whose generate returns fixed texts (runner plumbing only)."""

    model = None

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def collate(self, records, train=True):
        return {"n": len(records)}

    def generate(self, batch, max_new_tokens=16, num_beams=1):
        return [self.texts.pop(0) for _ in range(batch["n"])]


def test_pin_loc_benchmark_through_the_runner() -> None:
    from vlmtune.eval.runner import run_benchmark

    meta = {"width": 64, "height": 64}
    records = [
        {
            "id": "a",
            "task": "grounding",
            "boxes": [{"label": "red circle", "bbox": [0, 0, 32, 32]}],
            "meta": meta,
        },
        {
            "id": "b",
            "task": "grounding",
            "boxes": [{"label": "blue square", "bbox": [32, 32, 64, 64]}],
            "meta": meta,
        },
    ]
    pipe = _FixedAnswers(["[0.00,0.00,0.50,0.50]", "a blue square"])
    m = run_benchmark(pipe, "pin-loc", records, progress=False)
    assert m["mIoU"] == pytest.approx(0.5) and m["parsed"] == 0.5 and m["count_L"] == 2
