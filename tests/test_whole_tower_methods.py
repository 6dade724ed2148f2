"""Whole-tower methods on family towers given as several prefixes (new-user report 5, item 4).

A family tower is split into sub-prefixes (LLaVA's vision tower: embeddings, pre-norm, the layers up to the
feature layer, post-norm; Qwen2-VL's: patch_embed, blocks; its language tower: model.language_model,
lm_head). BitFit trains the biases under all the prefixes together (refused only when none has one); VPT
goes on the ViT holding the prefixes, its prompts under the first prefix; a tower that is no supported ViT
(Qwen2-VL's packed-patch encoder) is refused in one line naming it.
"""

from __future__ import annotations

import pytest
import torch
from toy_models import llava_run

from vlmtune.adapters import AdapterError, load_adapter, save_adapter


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def under(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(q + ".") for q in prefixes)


FROZEN = ["adapters.language.method=frozen", "adapters.projector.method=frozen"]


@pytest.mark.parametrize(
    "name,tower",
    [("qwen2_vl", "vision"), ("llava", "vision"), ("qwen2_vl", "language")],
)
def test_bitfit_trains_the_biases_of_every_prefix_of_the_tower(name, tower, family_folder):
    others = [o for o in ["language", "vision", "projector"] if o != tower]
    overrides = [f"adapters.{o}.method=frozen" for o in others]
    cfg, pipe = llava_run(f"model.name_or_path={family_folder(name)}", *overrides,
                          f"adapters.{tower}.method=bitfit", f"adapters.{tower}.alpha=null")  # fmt: skip
    prefixes = pipe.towers[tower]
    assert len(prefixes) > 1, prefixes  # the case the report is about
    biases = {n for n, _ in pipe.model.named_parameters() if n.endswith(".bias") and under(n, prefixes)}
    assert len(biases) >= 4, biases
    assert trainable(pipe.model) == biases


def test_bitfit_on_a_tower_without_biases_is_refused_in_one_line(family_folder):
    with pytest.raises(AdapterError) as e:  # Llama: no bias in any layer of the language tower
        llava_run(f"model.name_or_path={family_folder('llava')}", *FROZEN[1:], "adapters.language.method=bitfit",
                  "adapters.language.alpha=null")  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and "adapters.language.method=bitfit" in msg and "model.language_model" in msg, msg


@pytest.mark.parametrize("deep", [False, True])
def test_vpt_on_a_split_llava_vision_tower(deep, family_folder, tmp_path):
    base = f"model.name_or_path={family_folder('llava')}"
    vpt = ["adapters.vision.method=vpt", "adapters.vision.alpha=null", "adapters.vision.options.length=3",
           f"adapters.vision.options.deep={str(deep).lower()}", "model.dtype=float32"]  # fmt: skip
    cfg, pipe = llava_run(base, *FROZEN, *vpt)
    prefixes = pipe.towers["vision"]
    assert len(prefixes) > 1, prefixes
    names = trainable(pipe.model)
    assert names == {f"{prefixes[0]}.vpt.prompts"}, names
    prompts = pipe.model.get_submodule(f"{prefixes[0]}.vpt").prompts
    assert prompts.shape[1:] == (3, pipe.model.config.vision_config.hidden_size)

    record = {"id": "q0", "task": "vqa", "image": str(tmp_path / "0.png"), "question": "What is it?",
              "answers": ["red"]}  # fmt: skip
    from PIL import Image

    Image.new("RGB", (40, 48), (200, 30, 30)).save(tmp_path / "0.png")
    batch = pipe.collate([record], train=False)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        with_prompts = pipe.model.eval()(**inputs).logits
        _, plain = llava_run(base, *FROZEN, "adapters.vision.method=frozen", "model.dtype=float32")
        without = plain.model.eval()(**inputs).logits
    assert with_prompts.shape == without.shape
    assert (with_prompts - without).abs().max() > 1e-4  # the prompts reach the image tokens

    save_adapter(pipe.model, tmp_path / "a", cfg.adapters.specs())
    _, fresh = llava_run(base, *FROZEN, "adapters.vision.method=frozen", "model.dtype=float32")
    load_adapter(fresh.model, tmp_path / "a", fresh.towers)
    with torch.no_grad():
        assert torch.equal(fresh.model.eval()(**inputs).logits, with_prompts)


def test_vpt_on_a_vision_tower_that_is_no_supported_vit_says_so(family_folder):
    with pytest.raises(AdapterError) as e:
        llava_run(f"model.name_or_path={family_folder('qwen2_vl')}", *FROZEN, "adapters.vision.method=vpt",
                  "adapters.vision.alpha=null")  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("adapters.vision.method=vpt:"), msg
    assert "got Qwen2VisionTransformerPretrainedModel" in msg, msg
