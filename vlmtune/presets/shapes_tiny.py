"""The embedded tiny LLaVA ("shapes-tiny"): built offline from configs, pretrained on shapes.

    tokenizer   byte-level BPE trained with ``tokenizers`` on the rendered shapes conversations,
                saved as a ``PreTrainedTokenizerFast`` (<s> </s> <pad> <unk> <image>)
    vision      CLIP vision tower, 64 px images, 8 px patches (64 image tokens), 2 layers, hidden 128
    projector   LLaVA-1.5 MLP (Linear-GELU-Linear)
    language    Llama, 2 layers, hidden 128
    stage 0a    the vision tower alone learns per-patch shape labels and scene attributes
                (:mod:`vlmtune.presets.vision_pretrain`, a stand-in for CLIP's pretraining)
    stage 0b    language model + projector trained on shapes captions and question generation
                (VQG) over the frozen vision tower
    stage 0c    the same, on shapes chat: the VQA questions, with VQA's "Answer the question
                using a single word or phrase." instruction, answered by a talkative assistant
                that ignores it: the answer, then why ("red. The circle is red."). The base model
                knows the answers but not the short-answer format (exact-match VQA accuracy 0);
                stage 2 (``llava-dora``) teaches the format, as LLaVA-1.5's stage 2 does for a
                chat model that answers at length.

Everything is a pure function of the seed: :func:`build_shapes_tiny` run twice writes the same
weights. :mod:`vlmtune.presets.registry` looks the preset up in ``vlmtune/assets/shapes-tiny``
(shipped) and then in ``$VLMTUNE_CACHE/models`` (default ``~/.cache/vlmtune/models``), where it is
built on first use. The second preset, ``shapes-tiny-pin`` (the frozen base of ``llava-pin``), is
``shapes-tiny`` plus stage 0d (:mod:`vlmtune.presets.shapes_tiny_pin`) and is looked up the same way.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


@dataclass
class TinySize:
    vocab_size: int = 1024
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 384
    max_positions: int = 512


# Sizes for unit tests: a model that builds and runs in well under a second.
TEST_SIZE = TinySize(
    vocab_size=400,
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
    text_intermediate=64,
    max_positions=256,
)


# ---------------------------------------------------------------- tokenizer
def corpus(n_images: int = 300, seeds: int = 3, cache_dir: str | Path | None = None) -> list[str]:
    """Texts the tiny LM will see: every shapes task rendered with several template seeds."""
    from vlmtune.data.records import load_records
    from vlmtune.models.llava import record_segments

    texts = []
    spec = "shapes:caption,vqa,vqg,grounding"  # not chat: it came later (v3) and kept v2's tokenizer
    records = load_records(spec, split="train", n_images=n_images, cache_dir=cache_dir)
    # the first caption of each caption record, as when the shipped tokenizer was trained (captions now vary
    # by epoch: data.templates.pick_caption)
    records = [{**r, "captions": r["captions"][:1]} if r.get("captions") else r for r in records]
    for seed in range(seeds):
        for r in records:
            texts.append("".join(t for t, _ in record_segments(r, seed)))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Byte-level BPE (every string encodable) -> ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
        model_max_length=512,
    )


# ---------------------------------------------------------------- model
def tiny_config(tokenizer, size: TinySize):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_intermediate,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    n_patches = (size.image_size // size.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_patches,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tokenizer.pad_token_id,
    )


def image_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        do_convert_rgb=True,
    )


def write_random_llava(out_dir: str | Path, size: TinySize | None = None, seed: int = 0, texts=None) -> Path:
    """A randomly initialised tiny LLaVA folder (model + tokenizer + image processor) at ``out_dir``."""
    from transformers import LlavaForConditionalGeneration

    size = size or TinySize()
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts if texts is not None else corpus(), size.vocab_size)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_config(tokenizer, size))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    image_processor(size.image_size).save_pretrained(out)
    return out


def pretrain_vision(
    vision_tower, size: TinySize, steps: int = 2000, n_images: int = 8000, seed: int = 0
) -> dict:
    """Stage 0a: the CLIP vision tower learns the shapes scenes' patch labels and scene attributes
    (:mod:`vlmtune.presets.vision_pretrain`) from its patch tokens (CLS dropped, as LLaVA does)."""
    from vlmtune.presets.vision_pretrain import pretrain_encoder, shapes_grid_data

    processor = image_processor(size.image_size)
    grid = size.image_size // size.patch_size

    def data(split: str, n: int):
        return shapes_grid_data(
            split, n, size.image_size, grid, lambda ims: processor(ims, return_tensors="pt")["pixel_values"]
        )

    vision_tower.train()
    scores = pretrain_encoder(
        lambda px: vision_tower(pixel_values=px).last_hidden_state[:, 1:],
        list(vision_tower.parameters()),
        size.vision_hidden,
        data("train", n_images),
        data("val", 500),
        steps=steps,
        seed=seed,
    )
    vision_tower.eval()
    return scores


def pretrain_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0b for the tiny model: language model and projector trained on shapes captions and
    question generation (VQG: the answer is in the prompt, so the LM learns to read its instruction)
    over the frozen, pretrained vision tower. No VQA."""
    from vlmtune.core.adapter_spec import AdapterSpec
    from vlmtune.core.config import RunConfig

    cfg = RunConfig(recipe="shapes-tiny-pretrain")
    cfg.model.name_or_path = str(model_dir)
    cfg.adapters.language = AdapterSpec(method="full")
    cfg.adapters.vision = AdapterSpec(method="frozen")
    cfg.adapters.projector = AdapterSpec(method="full")
    cfg.data.train = "shapes:caption,vqg"
    cfg.data.max_length = 128
    cfg.data.shapes_size = 8000
    t = cfg.train
    t.seed, t.max_steps, t.batch_size, t.lr = seed, steps, 16, 2e-3
    t.warmup_ratio, t.schedule, t.log_every, t.weight_decay = 0.05, "cosine", 50, 0.0
    return cfg


def chat_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0c: :func:`pretrain_config` continued on shapes chat (an image's 5 VQA questions with
    VQA's instruction, answered answer-first with a reason, :func:`vlmtune.data.shapes.chat_turns`).
    This is where the LM learns to look up the object a question names; the answer's position
    right after the prompt is what lets a 2-layer LM find it (a chat phrasing that moved the
    answer around, tried in v3, never got past chance on which colour goes with which shape)."""
    cfg = pretrain_config(model_dir, steps, seed)
    cfg.recipe = "shapes-tiny-chat"
    cfg.data.train, cfg.data.max_length, cfg.train.log_every = "shapes:chat", 256, 100
    cfg.train.lr = 1e-3
    return cfg


def train_stage(cfg, out: Path, run_dir: Path, quiet: bool, around=None) -> Path:
    """Train ``cfg`` on its shapes data and write the merged model to ``out``. ``around(pipe,
    records)``, when given, returns a context manager that the training runs inside."""
    from vlmtune.data.records import load_records
    from vlmtune.models.llava import LlavaPipeline
    from vlmtune.recipes import fit, seeded_pipeline

    pipe = seeded_pipeline(cfg, LlavaPipeline)
    records = load_records(cfg.data.train, split="train", n_images=cfg.data.shapes_size)
    fit(pipe, cfg, records, run_dir, quiet, around=around)
    return pipe.save_merged(out)


def build_shapes_tiny(
    out_dir: str | Path,
    steps: int = 1500,
    vision_steps: int = 2000,
    chat_steps: int = 7000,
    seed: int = 0,
    quiet: bool = True,
) -> Path:
    """Write the pretrained ``shapes-tiny`` folder to ``out_dir`` (deterministic in ``seed``):
    stage 0a :func:`pretrain_vision`, 0b captions + VQG (:func:`pretrain_config`), 0c chat
    (:func:`chat_config`)."""
    from transformers import LlavaForConditionalGeneration

    out = Path(out_dir)
    size = TinySize()
    with tempfile.TemporaryDirectory(prefix="shapes-tiny-") as work:
        init = write_random_llava(Path(work) / "init", size, seed=seed)
        model = LlavaForConditionalGeneration.from_pretrained(init)
        scores = pretrain_vision(model.model.vision_tower, size, vision_steps, seed=seed)
        if not quiet:
            print(f"vision pretraining: {scores}", flush=True)
        model.save_pretrained(init)
        stage_b = Path(work) / "stage0b"
        train_stage(pretrain_config(init, steps, seed), stage_b, Path(work) / "run0b", quiet)
        train_stage(chat_config(stage_b, chat_steps, seed), out, Path(work) / "run0c", quiet)
    return out


# python -m vlmtune.presets.shapes_tiny OUT_DIR [STEPS [VISION_STEPS [CHAT_STEPS]]]
if __name__ == "__main__":
    import sys

    build_shapes_tiny(sys.argv[1], *(int(a) for a in sys.argv[2:5]), quiet=False)
