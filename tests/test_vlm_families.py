"""The tiny family fixtures (tests/vlm_families.py) load like hub checkpoints and train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_families import FAMILIES

# model_type -> the top-level submodules of the loaded model (their tower map is built from these)
EXPECTED_MODULES = {
    "llava": {"language_model", "vision_tower", "multi_modal_projector"},
    "llava_next": {"language_model", "vision_tower", "multi_modal_projector"},
    "llava_onevision": {"language_model", "vision_tower", "multi_modal_projector"},
    "qwen2_vl": {"language_model", "visual"},
    "qwen2_5_vl": {"language_model", "visual"},
    "qwen3_vl": {"language_model", "visual"},
    "paligemma": {"language_model", "vision_tower", "multi_modal_projector"},
    "gemma3": {"language_model", "vision_tower", "multi_modal_projector"},
    "idefics3": {"text_model", "vision_model", "connector"},
    "smolvlm": {"text_model", "vision_model", "connector"},
    "mllama": {"language_model", "vision_model", "multi_modal_projector"},
    "internvl": {"language_model", "vision_tower", "multi_modal_projector"},
    "blip-2": {"language_model", "vision_model", "qformer", "language_projection"},
    "instructblip": {"language_model", "vision_model", "qformer", "language_projection"},
}


def _prompt(name: str, processor) -> str:
    if processor.chat_template:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "red."}]},
        ]
        return processor.apply_chat_template(messages, tokenize=False)
    # no chat template: BLIP processors prepend the query tokens, PaliGemma takes <image> + prefix
    return (
        "" if FAMILIES[name].model_type in ("blip-2", "instructblip") else "<image>"
    ) + "What color is it?"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_fixture_loads_through_auto_classes_and_trains(name, family_folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = family_folder(name)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert model.config.model_type == FAMILIES[name].model_type
    names = [n.split(".") for n, _ in model.named_modules() if n]
    modules = {p[1] if p[0] == "model" and len(p) > 1 else p[0] for p in names}
    assert EXPECTED_MODULES[FAMILIES[name].model_type] <= modules

    image = Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype("uint8"))
    batch = processor(text=[_prompt(name, processor)], images=[image], return_tensors="pt")
    batch.pop("labels", None)
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    vision = [p for n, p in model.named_parameters() if "vision" in n or "visual" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision), (
        "no gradient reached the vision tower"
    )


def _linear_leaves_under(model, prefixes: list[str]) -> set[str]:
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(name == p or name.startswith(p + ".") for p in prefixes)
    }


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_table_matches_the_loaded_model(name, family_folder):
    """Every tower prefix exists in the model, towers do not overlap, and every default target names a
    Linear inside its own tower (Q-Former families: the language targets of their language model)."""
    from transformers import AutoModelForImageTextToText

    from vlmtune.adapters.targets import resolve_targets
    from vlmtune.core.adapter_spec import AdapterSpec
    from vlmtune.models.families import FAMILIES as TABLE
    from vlmtune.models.families import QFORMER_TYPES, qformer_family

    model = AutoModelForImageTextToText.from_pretrained(family_folder(name))
    family = TABLE[model.config.model_type]
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    for tower, prefixes in family.towers.items():
        for prefix in prefixes:
            assert any(n == prefix or n.startswith(prefix + ".") for n in names), (tower, prefix)
    owners = {}
    for n in names:
        hits = [t for t, ps in family.towers.items() if any(n == p or n.startswith(p + ".") for p in ps)]
        assert len(hits) <= 1, (n, hits)
        owners[n] = hits
    if family.model_type in QFORMER_TYPES:  # language targets per language model; T5's are path patterns
        family = qformer_family(family.model_type, model.config.text_config.model_type)
    for tower, targets in family.targets.items():
        if family.model_type in QFORMER_TYPES:  # every entry must match a Linear of its tower
            resolve_targets(model, family.towers[tower], AdapterSpec(method="lora", targets=targets), tower)
        else:
            leaves = _linear_leaves_under(model, family.towers[tower])
            assert set(targets) <= leaves, (tower, set(targets) - leaves)


def test_unsupported_model_type_is_one_line_naming_the_supported_list():
    from vlmtune.models.families import UnsupportedFamily, family_for

    with pytest.raises(
        UnsupportedFamily, match=r"model_type 'fuyu' is not a supported VLM family; supported: .*llava"
    ):
        family_for("fuyu")
