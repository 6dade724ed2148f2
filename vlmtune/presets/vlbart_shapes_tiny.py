"""VL-BART presets built from configs (no download): the tiny shapes model and the real bart-base shape.

* ``shapes-tiny``: 4+4-layer BART (d_model 128) with a byte-level BPE tokenizer trained offline on a
  small built-in corpus, plus the ``tiny`` CLIP ResNet. Shipped in ``vlmtune/assets/vlbart-shapes-tiny``
  (written by ``python -m vlmtune.presets.vlbart_shapes_tiny OUT``; built into the cache on first use when
  the asset is missing) and always loaded back with ``from_pretrained``:

    stage 0a   the ResNet alone learns shapes patch labels and scene attributes
               (:mod:`vlmtune.presets.vision_pretrain`, a stand-in for CLIP's pretraining)
    stage 0b   BART + visual embedding from random init on captions and on VQA answered by a
               talkative assistant, answer first, then why ("red. the circle is red.",
               :func:`explained_vqa`): the base knows the answers but not VQA's short-answer format
               (exact-match VQA accuracy 0), like the LLaVA ``shapes-tiny`` base; fine-tuning
               (``vlbart-dora``) teaches the format.

* ``bart-base`` + ``RN101``: the paper model's structure (on the meta device) for the parameter
  report of the DoRA paper's Table 2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

from vlmtune.adapters.attach import attach
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.models.visual_features import (
    FeatureExtractor,
    GridEncoder,
    build_grid_encoder,
    grid_boxes,
    preprocess,
)
from vlmtune.models.vlbart import (
    TOWERS,
    VIS_EXTRA_IDS,
    VisualEmbedding,
    VLBart,
    paper_param_percent,
    save_vlbart,
)

SHAPES_IMAGE_SIZE = 64  # the shapes default's image size
VISION_STEPS = 1000
PRETRAIN_STEPS = 4000
PRETRAIN_IMAGES = 8000
LAYERS = 4  # with 2+2 layers the model stayed at chance on which colour goes with which shape
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # BART ids 0..3

_WORDS = """
what which who where how many much is are there the a an of in on at to and or not no yes true false
color colour shape size object objects image picture left right top bottom middle center centre above
below next behind front big small large tiny medium count number one two three four five six seven
eight nine ten zero red green blue yellow purple orange black white gray grey pink brown cyan magenta
circle circles square squares triangle triangles rectangle rectangles star stars ellipse ellipses
diamond diamonds cross crosses hexagon hexagons shapes background foreground does do has have contain
contains containing with both images each only same different more than fewer less equal caption
describe description photo scene corner upper lower side near far vqa gqa nlvr answer question
""".split()


def build_tiny_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text encodes) trained on the built-in corpus; ``<s> text </s>`` like BART;
    100 ``<vis_extra_id_k>`` tokens at the end (``<vis_extra_id_0>`` is the last id)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_WORDS)] * 4 + [f"{w}:" for w in ("vqa", "gqa", "nlvr", "caption")]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    vis = [f"<vis_extra_id_{i}>" for i in range(VIS_EXTRA_IDS - 1, -1, -1)]
    fast.add_special_tokens({"additional_special_tokens": vis})
    return fast


def tiny_bart_config(vocab_size: int, d_model: int = 128, layers: int = LAYERS) -> BartConfig:
    return BartConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_position_embeddings=256,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        scale_embedding=False,
        tie_word_embeddings=True,
    )


def build_random_vlbart(folder: str | Path, seed: int = 0, encoder: GridEncoder | None = None) -> Path:
    """A randomly initialised tiny VL-BART from configs, saved to ``folder`` (no download); the
    ``tiny`` CLIP ResNet is random too unless ``encoder`` (e.g. a pretrained one) is given."""
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer()
        bart = BartForConditionalGeneration(tiny_bart_config(len(tokenizer)))
        bart.generation_config.forced_bos_token_id = 0
        encoder = encoder or build_grid_encoder("tiny", 36)
        ve = VisualEmbedding(encoder.feat_dim, bart.config.d_model, n_images=2)
    extractor = FeatureExtractor(encoder)
    return save_vlbart(VLBart(bart, ve, extractor.boxes), tokenizer, extractor, folder)


def pretrain_grid_encoder(
    encoder: GridEncoder, steps: int = VISION_STEPS, n_images: int = PRETRAIN_IMAGES, seed: int = 0
) -> dict[str, float]:
    """Stage 0a: the CLIP ResNet trunk learns the shapes scenes' per-cell labels and scene
    attributes from its pooled grid tokens (BatchNorm in train mode), then is frozen again.
    Returns held-out accuracies."""
    from vlmtune.presets.vision_pretrain import pretrain_encoder, shapes_grid_data

    def to_pixels(images: list) -> torch.Tensor:
        return torch.stack([preprocess(im, encoder.image_size) for im in images])

    encoder.trunk.train()
    encoder.trunk.requires_grad_(True)
    scores = pretrain_encoder(
        encoder.grid_tokens,
        list(encoder.trunk.parameters()),
        encoder.feat_dim,
        shapes_grid_data("train", n_images, SHAPES_IMAGE_SIZE, encoder.grid, to_pixels),
        shapes_grid_data("val", 500, SHAPES_IMAGE_SIZE, encoder.grid, to_pixels),
        steps=steps,
        seed=seed,
    )
    encoder.requires_grad_(False)
    encoder.eval()
    return scores


def explained_vqa(records: list[dict]) -> list[dict]:
    """VQA records answered by a talkative assistant: the answer first, then why
    (:func:`vlmtune.data.shapes.explained_answer`); the human ``answers`` are dropped so that this
    is the only training target. Other records pass through unchanged."""
    from vlmtune.data.shapes import explained_answer

    out = []
    for r in records:
        if r.get("task") == "vqa":
            r = {k: v for k, v in r.items() if k != "answers"}
            r["answer"] = explained_answer(r["question"], r["answer"], r["answer_type"])
        out.append(r)
    return out


def pretrain_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0b (like VL-T5's multi-task pretraining, which has QA too): BART + visual embedding
    fully trained on shapes captions and :func:`explained_vqa` questions, round-robin."""
    from vlmtune.core.config import RunConfig

    cfg = RunConfig(recipe="vlbart-shapes-tiny-pretrain")
    cfg.model.pipeline, cfg.model.name_or_path, cfg.model.feature_cache = "vlbart", str(model_dir), "auto"
    cfg.adapters.language = AdapterSpec(method="full")
    cfg.adapters.projector = AdapterSpec(method="full")
    cfg.data.train, cfg.data.max_length, cfg.data.shapes_size = "shapes:caption,vqa", 40, PRETRAIN_IMAGES
    t = cfg.train
    # lr 3e-4: at 1e-3 the model stayed at chance on colour/shape lookups
    t.seed, t.max_steps, t.batch_size, t.lr = seed, steps, 32, 3e-4
    t.warmup_ratio, t.schedule, t.log_every, t.weight_decay = 0.05, "cosine", 100, 0.0
    return cfg


def build_tiny_vlbart(
    folder: str | Path,
    steps: int = PRETRAIN_STEPS,
    vision_steps: int = VISION_STEPS,
    seed: int = 0,
    quiet: bool = True,
) -> Path:
    """The ``shapes-tiny`` VL-BART: stage 0a :func:`pretrain_grid_encoder`, a random BART from
    configs, stage 0b :func:`pretrain_config` with the shared trainer; written to ``folder`` with
    ``save_pretrained``. Deterministic in ``seed``."""
    import shutil
    import tempfile

    from vlmtune.data.records import load_records
    from vlmtune.models.vlbart import build_vlbart_pipeline
    from vlmtune.recipes import fit, seeded_pipeline

    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    with tempfile.TemporaryDirectory(prefix="vlbart-tiny-") as work:
        encoder = build_grid_encoder("tiny", 36)  # seeds its own RNG; pretraining seeds with ``seed``
        if vision_steps > 0:
            say(f"stage 0a (vision): {pretrain_grid_encoder(encoder, vision_steps, seed=seed)}")
        init = build_random_vlbart(Path(work) / "init", seed=seed, encoder=encoder)
        if steps <= 0:
            shutil.copytree(init, folder)
            return Path(folder)
        cfg = pretrain_config(init, steps, seed)
        pipe = seeded_pipeline(cfg, build_vlbart_pipeline)  # cfg.train.seed == seed
        records = load_records(cfg.data.train, split="train", n_images=cfg.data.shapes_size)
        fit(pipe, cfg, explained_vqa(records), Path(work) / "run", quiet)
        pipe.model.requires_grad_(True)
        return pipe.save_merged(folder)


# ---------------------------------------------------------------- the real structure (DoRA Table 2)
def bart_base_config(added_tokens: int = 2 * VIS_EXTRA_IDS) -> BartConfig:
    """``facebook/bart-base`` sizes; VL-BART adds 200 special tokens (50265 -> 50465)."""
    return BartConfig(
        vocab_size=50265 + added_tokens,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1024,
        scale_embedding=False,
        tie_word_embeddings=True,
    )


# The papers' setups (VL-Adapter scripts/image/multiple_lora.sh; DoRA scripts/image/dora.sh):
# LoRA trains lora + every parameter named "bias" (LayerNorm biases too) + the visual embedding;
# DoRA additionally trains LayerNorm weights (--unfreeze_layer_norms) and the magnitudes.
PAPER_SPECS = {
    "dora": AdapterSpec(
        method="dora", r=128, alpha=128, targets=["q", "v"], trainable_bias=True, trainable_norms=True
    ),
    "lora": AdapterSpec(method="lora", r=128, alpha=128, targets=["q", "v"], trainable_bias=True),
    "ft": AdapterSpec(method="full"),
}
PAPER_PERCENT = {"dora": 5.96, "lora": 5.93, "ft": 100.0}


def paper_structure(method: str, feat_dim: int = 2048) -> VLBart:
    """VL-BART (bart-base + visual embedding for RN101's 2048-d grid) with ``method`` attached, on the
    meta device: parameter shapes only, nothing allocated or downloaded."""
    with torch.device("meta"):
        bart = BartForConditionalGeneration(bart_base_config())
        model = VLBart(bart, VisualEmbedding(feat_dim, 768, n_images=2), grid_boxes(6))
    specs = {"language": PAPER_SPECS[method], "projector": AdapterSpec(method="full")}
    attach(model, TOWERS, specs)
    return model


def paper_param_table() -> list[tuple[str, int, int, float, float]]:
    """[(method, trainable, total, percent, paper percent)] for DoRA / LoRA / FT on VL-BART."""
    rows = []
    for method in ("dora", "lora", "ft"):
        trainable, total, pct = paper_param_percent(paper_structure(method))
        rows.append((method, trainable, total, pct, PAPER_PERCENT[method]))
    return rows


def format_paper_table(rows: list[tuple[str, int, int, float, float]]) -> str:
    lines = [f"{'method':<6} {'trainable':>12} {'VL-BART params':>15} {'# Params (%)':>13} {'paper':>7}"]
    for m, t, n, p, ref in rows:
        lines.append(f"{m:<6} {t:>12,} {n:>15,} {p:>12.2f}% {ref:>6.2f}%")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m vlmtune.presets.vlbart_shapes_tiny [OUT_DIR [STEPS [VISION_STEPS]]]
    import sys

    if len(sys.argv) > 1:
        build_tiny_vlbart(sys.argv[1], *(int(a) for a in sys.argv[2:4]), quiet=False)
    else:
        print(format_paper_table(paper_param_table()))
