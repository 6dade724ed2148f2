"""The random BLIP-2 that ``shapes-tiny-blip2-pin`` is trained from (vlmtune.presets.shapes_tiny_blip2_pin).

Regression: ``Blip2VisionConfig`` initialises its weights with ``initializer_range=1e-10``; a ViT built
that way outputs ~0 (norm 1.8e-5 after its LayerNorm), so the Q-Former read no image and the position
code, scaled to that norm, vanished too: the base wrote one constant box for every image.
"""

from __future__ import annotations

import torch
import transformers as T

from vlmtune.presets.shapes_tiny_blip2_pin import IMAGE, coded_vision_output, write_random_blip2


def test_random_blip2_vision_output_is_layer_normed_and_image_dependent(tmp_path):
    model = T.Blip2ForConditionalGeneration.from_pretrained(write_random_blip2(tmp_path / "m"))
    assert not model.vision_model.embeddings.position_embedding.any()  # position-free
    pixels = torch.rand(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.vision_model(pixel_values=pixels).last_hidden_state  # (4, 65, 64)
    width = model.config.vision_config.hidden_size
    assert torch.allclose(feats.norm(dim=-1), torch.full(feats.shape[:2], width**0.5), rtol=0.01)
    assert (feats[0] - feats[1]).norm(dim=-1).mean() > 1.0  # two images, different features


def test_coded_vision_output_adds_the_code_after_the_cls_token(tmp_path):
    model = T.Blip2ForConditionalGeneration.from_pretrained(write_random_blip2(tmp_path / "m"))
    pixels = torch.rand(1, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    code = torch.randn(64, model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(1))
    seen = []
    with torch.no_grad():
        with coded_vision_output(model, code):  # hooks run in order: capture after the code is added
            model.qformer.register_forward_pre_hook(
                lambda m, a, k: seen.append(k["encoder_hidden_states"]), with_kwargs=True
            )
            model.get_image_features(pixel_values=pixels)
        model.get_image_features(pixel_values=pixels)
    coded, plain = seen
    assert torch.equal(coded[0, 0], plain[0, 0])  # CLS untouched
    assert torch.allclose(coded[0, 1:] - plain[0, 1:], code, atol=1e-5)  # in patch order; gone on exit
