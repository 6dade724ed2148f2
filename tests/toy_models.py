"""Toy models shared by the adapter tests (imported as ``from toy_models import ...``).

``Toy``: two residual blocks of four linears of different shapes (q/v 32->32, up 32->48, down 48->32),
so an adapter shared across layers (VeRA's projection) is sliced differently per layer.
``tiny_llava``: a random LLaVA (CLIP 2 layers, Llama 1 layer, hidden 32, 32 px images, 16 image tokens)
with all three towers, and ``inputs`` for it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

TOWERS = {"language": ["layers"]}
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


class Block(nn.Module):
    def __init__(self, d: int = 32, hidden: int = 48) -> None:
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.up_proj = nn.Linear(d, hidden)
        self.down_proj = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q_proj(x) + self.v_proj(x)
        return self.down_proj(torch.tanh(self.up_proj(h)))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """Max error relative to ``b``'s largest entry."""
    err = (a - b).abs().max() / b.abs().max().clamp_min(1e-12)
    assert err <= rtol, f"max relative error {err:.3e} > {rtol}"


def peft_twins(
    peft_config, spec
) -> tuple[nn.Module, nn.Module, nn.Module, list[tuple[str, nn.Module, nn.Module]]]:
    """The same seeded :class:`Toy` as a peft model (``peft_config``) and a vlmtune model (``spec`` on the
    ``language`` tower): ``(base, ours, ref, [(path, our layer, peft's layer)])``, for the caller to copy
    peft's (random) adapter tensors into ours."""
    import copy

    import peft

    from vlmtune.adapters import adapter_layers, attach

    torch.manual_seed(0)
    base = Toy()
    ref = peft.get_peft_model(copy.deepcopy(base), peft_config)
    ours = copy.deepcopy(base)
    attach(ours, TOWERS, {"language": spec})
    ref_layers = dict(ref.named_modules())
    pairs = [(path, layer, ref_layers[f"base_model.model.{path}"]) for path, layer in adapter_layers(ours)]
    return base, ours, ref, pairs


LLAVA_TOWERS = {
    "language": ["model.language_model", "lm_head"],
    "vision": ["model.vision_tower"],
    "projector": ["model.multi_modal_projector"],
}
IMAGE_TOKEN, N_PATCHES = 5, 16


def perturb_trainable(model: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    """Add ``scale * N(0, 1)`` noise (seeded) to every trainable tensor, in place: adapters that start as
    an identity (LoRA's B = 0) then change the output, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def tiny_llava(text_layers: int = 1) -> LlavaForConditionalGeneration:
    """Seeded random tiny LLaVA (``text_layers`` Llama layers), in eval mode."""
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, image_seq_length=N_PATCHES,
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=0,
    )  # fmt: skip
    return LlavaForConditionalGeneration(cfg).eval()


def inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1] + [IMAGE_TOKEN] * N_PATCHES + [7, 8, 9]] * batch)
    g = torch.Generator().manual_seed(3)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=g),
    }


def llava_run(*overrides: str, recipe: str = "llava-dora"):
    """``(cfg, pipeline)`` of ``recipe`` with ``overrides`` (``model.name_or_path=`` a tiny folder): seeded,
    built and with the recipe's adapters attached, ready for ``Trainer``."""
    from vlmtune.core.config import load_config
    from vlmtune.models import build_pipeline
    from vlmtune.recipes import seeded_pipeline

    cfg = load_config(recipe, list(overrides))
    return cfg, seeded_pipeline(cfg, build_pipeline)


def write_vqa_records(folder, n: int, missing=frozenset(), question: str = "What color is it?"):
    """``folder/train.jsonl``: ``n`` vqa records ``rec-<i>`` on one 8x8 image ``red.png`` beside it (indices in
    ``missing`` point at ``gone.png``, which is not there)."""
    import json
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / "red.png")
    lines = [
        json.dumps(
            {
                "id": f"rec-{i}",
                "task": "vqa",
                "image": "gone.png" if i in missing else "red.png",
                "question": question,
                "answers": ["red"] * 10,
                "answer": "red",
            }
        )  # fmt: skip
        for i in range(n)
    ]
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
