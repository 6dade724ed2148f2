"""The Q-Former PIN base ("shapes-tiny-blip2-pin"): a frozen tiny BLIP-2 that writes boxes but whose
vision pathway carries no position, in the spirit of ``shapes-tiny-pin`` (:mod:`.shapes_tiny_pin`).

PIN (Dorkenwald et al., CVPR 2024) reports its localisation results on frozen BLIP-2: a language model
that writes coordinates, behind a Q-Former whose query outputs have lost where things are. A random tiny
BLIP-2 writes nothing, so this base is trained in one stage from random weights:

    vision     a ViT (64 px, 8 px patches -> 64 tokens) with its position embeddings set to zero and
               frozen (the rest of it trains): its features say what a patch shows, never where
               (attention is order-free)
    stage 0d   vision, Q-Former, query tokens, projection and LM (Llama-style, 2 layers) trained on the
               single-shape ``shapes:locate`` images with the ``pin-loc`` grounding prompt, while a fixed
               2-D sinusoidal position code (:func:`.shapes_tiny_pin.position_code`, scaled to the
               features' mean norm) is added to the vision output before the Q-Former. The Q-Former's
               cross-attention ignores token order, so the code is the only "where" it ever sees.

The code is a training scaffold: the saved base has none. ``blip2-pin`` on this base trains a PIN (an MLP
over a 1-D sinusoid, added at the same seam) with everything else frozen.

The random ViT is initialised with ``initializer_range=0.02``: ``Blip2VisionConfig``'s default, 1e-10,
gives a vision output of norm ~2e-5 after its LayerNorm (near-constant tokens), so the Q-Former read no
image and the code, scaled to that norm, vanished: v1 of this base localised no better than a constant box
(mIoU 0.07-0.10 with or without the code, whatever the queries, learning rate or steps).

Measured (README, PIN localisation; 500 held-out images; built in 2m32s on 2 cores): the saved base
scores mIoU 0.002 (its boxes miss), 0.78 with the scaffold code put back; ``blip2-pin`` (750 steps,
58,560 PIN parameters, the rest frozen) brings it to 0.77.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vlmtune.presets.registry import ASSETS

IMAGE, PATCH, QUERIES = 64, 8, 16


def write_random_blip2(out: Path, seed: int = 0) -> Path:
    """A random tiny BLIP-2 (ViT 64-d / Q-Former 64-d, 16 queries / Llama 128-d, 2 layers each) with the
    shapes tokenizer of ``shapes-tiny-pin`` and a 64 px BLIP image processor, saved to ``out``; the vision
    position embeddings are zero (see the module docstring)."""
    import transformers as T

    shapes = T.AutoTokenizer.from_pretrained(ASSETS / "shapes-tiny-pin")
    specials = {k: getattr(shapes, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    # the same vocabulary without LLaVA's image_token attribute (a plain string the BLIP processor cannot use)
    tok = T.PreTrainedTokenizerFast(tokenizer_object=shapes.backend_tokenizer, **specials)
    proc = T.Blip2Processor(
        image_processor=T.BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}),
        tokenizer=tok,
        num_query_tokens=QUERIES,
    )
    tok = proc.tokenizer  # the processor adds <image>
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    text = T.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=len(tok), max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)  # fmt: skip
    cfg = T.Blip2Config(
        vision_config=dict(small, image_size=IMAGE, patch_size=PATCH, initializer_range=0.02),
        qformer_config=dict(small, encoder_hidden_size=64, cross_attention_frequency=1, vocab_size=32),
        text_config=text.to_dict(),
        num_query_tokens=QUERIES,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = T.Blip2ForConditionalGeneration(cfg)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, cfg.qformer_config.initializer_range)  # LAVIS' initialisation
        model.vision_model.embeddings.position_embedding.zero_()
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@contextmanager
def coded_vision_output(model: nn.Module, code: torch.Tensor) -> Iterator[None]:
    """While active, the Q-Former reads ``vision output + code`` (code (N, D) in patch order; the CLS
    token, first, gets none). Removed on exit."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = kwargs["encoder_hidden_states"]
        added = torch.cat([torch.zeros_like(code[:1]), code]).to(x)
        return args, {**kwargs, "encoder_hidden_states": x + added}

    handle = model.qformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def locate_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0d: Q-Former + LM trained, vision frozen, on ``shapes:locate`` (grounding prompt -> box)."""
    from vlmtune.core.adapter_spec import AdapterSpec
    from vlmtune.core.config import RunConfig

    cfg = RunConfig(recipe="shapes-tiny-blip2-pin")
    cfg.model.pipeline, cfg.model.name_or_path, cfg.model.dtype = "blip2", str(model_dir), "float32"
    cfg.adapters.language = AdapterSpec(method="full")
    cfg.adapters.qformer = AdapterSpec(method="full")
    cfg.adapters.vision = AdapterSpec(method="full")  # but its zero position embeddings stay frozen
    cfg.data.train, cfg.data.max_length, cfg.data.shapes_size = "shapes:locate", 96, 8000
    t = cfg.train
    t.seed, t.max_steps, t.batch_size, t.lr = seed, steps, 32, 1e-3
    t.warmup_ratio, t.schedule, t.log_every, t.weight_decay = 0.05, "cosine", 50, 0.0
    return cfg


def build_shapes_tiny_blip2_pin(
    out_dir: str | Path, steps: int = 1000, seed: int = 0, quiet: bool = True
) -> Path:
    """Write ``shapes-tiny-blip2-pin`` to ``out_dir`` (module docstring)."""
    from vlmtune.data.records import load_records
    from vlmtune.models.qformer import QFormerPipeline
    from vlmtune.presets.shapes_tiny_pin import position_code
    from vlmtune.recipes import fit, seeded_pipeline

    with tempfile.TemporaryDirectory(prefix="shapes-tiny-blip2-pin-") as work:
        cfg = locate_config(write_random_blip2(Path(work) / "random", seed), steps, seed)
        pipe = seeded_pipeline(cfg, QFormerPipeline)  # cfg.train.seed == seed
        pipe.model.vision_model.embeddings.position_embedding.requires_grad_(False)  # position-free
        records = load_records(cfg.data.train, split="train", n_images=cfg.data.shapes_size)
        code = position_code(IMAGE // PATCH, pipe.model.config.vision_config.hidden_size)
        with torch.no_grad():  # as loud as the features (post-LayerNorm: norm ~ sqrt(D))
            pixels = pipe.collate(records[:64], train=False)["pixel_values"]
            norm = pipe.model.vision_model(pixel_values=pixels).last_hidden_state.norm(dim=-1).mean()
        scaled = code * norm / code.norm(dim=-1).mean()
        fit(
            pipe,
            cfg,
            records,
            Path(work) / "run0d",
            quiet,
            around=lambda p, _: coded_vision_output(p.model, scaled),
        )
        return pipe.save_merged(Path(out_dir))


if __name__ == "__main__":  # python -m vlmtune.presets.shapes_tiny_blip2_pin OUT_DIR [STEPS]
    import sys

    build_shapes_tiny_blip2_pin(sys.argv[1], *(int(a) for a in sys.argv[2:3]), quiet=False)
