"""Towers that differ in rsLoRA in one PEFT folder (new-user report 5, item 1).

PEFT has one model-wide ``use_rslora``. When the adapted layers disagree the folder writes
``use_rslora: false`` and gives each rsLoRA layer ``alpha_pattern`` = alpha * sqrt(r), so that PEFT's
scale ``alpha / r`` equals rsLoRA's ``alpha / sqrt(r)``; DoRA layers use the same scaling in PEFT.
Checked: PEFT's logits equal vlmtune's, and vlmtune reads the folder back exactly (with its tower specs
and as a plain PEFT folder).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from toy_models import LLAVA_TOWERS, inputs, perturb_trainable, tiny_llava

from vlmtune.adapters import AdapterSpec, adapter_layers, attach, load_adapter, save_adapter

peft = pytest.importorskip("peft")
TOL = 1e-5

CASES = {  # the tester's two repros: rsLoRA on the language tower (DoRA vision), on the vision tower only
    "language-rslora-lora+vision-dora": (
        AdapterSpec(method="lora", r=4, alpha=8, targets=["q_proj", "v_proj"], rslora=True),
        AdapterSpec(method="dora", r=4, alpha=8, targets=["q_proj", "v_proj"]),
    ),
    "vision-rslora-lora": (
        AdapterSpec(method="lora", r=4, alpha=8, targets=["q_proj", "v_proj"]),
        AdapterSpec(method="lora", r=2, alpha=8, targets=["q_proj", "v_proj"], rslora=True),
    ),
    "both-rslora-dora": (
        AdapterSpec(method="dora", r=4, alpha=8, targets=["q_proj", "v_proj"], rslora=True),
        AdapterSpec(method="dora", r=2, alpha=8, targets=["q_proj", "v_proj"], rslora=True),
    ),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def trained_llava(language: AdapterSpec, vision: AdapterSpec):
    model = tiny_llava()
    specs = {"language": language, "vision": vision}
    attach(model, LLAVA_TOWERS, specs)
    perturb_trainable(model, 0.3)
    return model.eval(), specs


@pytest.mark.parametrize("case", sorted(CASES))
def test_towers_differing_in_rslora_load_in_peft_and_vlmtune_with_the_same_logits(case, tmp_path):
    model, specs = trained_llava(*CASES[case])
    with torch.no_grad():
        expected = model(**inputs()).logits
        assert rel(tiny_llava()(**inputs()).logits, expected) > 1e-2, "the adapters change nothing"
    save_adapter(model, tmp_path / "a", specs)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    mixed = len({s.rslora for s in specs.values()}) == 2
    assert cfg["use_rslora"] is (not mixed)
    for path, layer in adapter_layers(model):
        want = layer.alpha * math.sqrt(layer.r) if mixed and layer.rslora else layer.alpha
        assert cfg["alpha_pattern"].get(path, cfg["lora_alpha"]) == pytest.approx(want), path

    loaded = peft.PeftModel.from_pretrained(tiny_llava(), tmp_path / "a").eval()
    with torch.no_grad():
        diff = rel(loaded(**inputs()).logits, expected)
    assert diff < TOL, f"peft logits differ by {diff:.2e} (relative)"

    for towers in (LLAVA_TOWERS, None):  # vlmtune's specs; the folder as PEFT describes it
        ours = load_adapter(tiny_llava(), tmp_path / "a", towers).eval()
        with torch.no_grad():
            diff = rel(ours(**inputs()).logits, expected)
        assert diff < TOL, f"vlmtune read-back (towers={towers is not None}) differs by {diff:.2e}"
    meta = json.loads((tmp_path / "a" / "vlmtune_adapter.json").read_text())
    assert {t: s["rslora"] for t, s in meta["specs"].items()} == {t: s.rslora for t, s in specs.items()}
