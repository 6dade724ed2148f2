"""VL-BART presets built from configs (no download): the tiny shapes model and the real bart-base shape.

* ``shapes-tiny``: 2+2-layer BART (d_model 128) with a byte-level BPE tokenizer trained offline on a
  small built-in corpus, plus the ``tiny`` CLIP ResNet. Built once into a cache folder with
  ``save_pretrained`` and always loaded back from it, so runs use the same files a user would.
* ``bart-base`` + ``RN101``: the paper model's structure (on the meta device) for the parameter
  report of the DoRA paper's Table 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

from vlmtune.adapters.inject import attach
from vlmtune.adapters.spec import AdapterSpec
from vlmtune.models.visual_features import FeatureExtractor, build_grid_encoder, grid_boxes
from vlmtune.models.vlbart import (
    META_FILE,
    TOWERS,
    VIS_EXTRA_IDS,
    VisualEmbedding,
    VLBart,
    paper_param_percent,
    save_vlbart,
)

PRESETS = ("shapes-tiny", "vlbart-shapes-tiny")
PRESET_VERSION = "v2"
PRETRAIN_STEPS = 400
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


def preset_dir(name: str) -> Path:
    root = Path(os.environ.get("VLMTUNE_CACHE", Path.home() / ".cache" / "vlmtune"))
    return root / "presets" / f"vlbart-{name.removeprefix('vlbart-')}-{PRESET_VERSION}"


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


def tiny_bart_config(vocab_size: int, d_model: int = 128, layers: int = 2) -> BartConfig:
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


def build_random_vlbart(folder: str | Path, seed: int = 0) -> Path:
    """A randomly initialised tiny VL-BART from configs, saved to ``folder`` (no download)."""
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        tokenizer = build_tiny_tokenizer()
        bart = BartForConditionalGeneration(tiny_bart_config(len(tokenizer)))
        bart.generation_config.forced_bos_token_id = 0
        encoder = build_grid_encoder("tiny", 36)
        ve = VisualEmbedding(encoder.feat_dim, bart.config.d_model, n_images=2)
    extractor = FeatureExtractor(encoder)
    return save_vlbart(VLBart(bart, ve, extractor.boxes), tokenizer, extractor, folder)


def pretrain_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0 (like VL-BART's own pretraining): BART + visual embedding fully trained on shapes
    captions only, so the base model knows the images and words but not the VQA task."""
    from vlmtune.config import RunConfig

    cfg = RunConfig(recipe="vlbart-shapes-tiny-pretrain")
    cfg.model.pipeline, cfg.model.name_or_path, cfg.model.feature_cache = "vlbart", str(model_dir), "auto"
    cfg.adapters.language = AdapterSpec(method="full")
    cfg.adapters.projector = AdapterSpec(method="full")
    cfg.data.train, cfg.data.max_length = "shapes:caption", 40
    t = cfg.train
    t.seed, t.max_steps, t.batch_size, t.lr = seed, steps, 32, 2e-3
    t.warmup_ratio, t.schedule, t.log_every, t.weight_decay = 0.05, "cosine", 50, 0.0
    return cfg


def build_tiny_vlbart(
    folder: str | Path, steps: int = PRETRAIN_STEPS, seed: int = 0, quiet: bool = True
) -> Path:
    """The ``shapes-tiny`` VL-BART: random init from configs, then ``steps`` of caption pretraining
    with the shared trainer; written to ``folder`` with ``save_pretrained``."""
    import tempfile

    from vlmtune.data.records import load_records
    from vlmtune.models.vlbart import build_vlbart_pipeline
    from vlmtune.train.trainer import Trainer, seed_everything

    with tempfile.TemporaryDirectory(prefix="vlbart-tiny-") as work:
        init = build_random_vlbart(Path(work) / "init", seed=seed)
        if steps <= 0:
            import shutil

            shutil.copytree(init, folder)
            return Path(folder)
        cfg = pretrain_config(init, steps, seed)
        seed_everything(seed)
        pipe = build_vlbart_pipeline(cfg)
        attach(pipe.model, pipe.towers, cfg.adapters.specs())
        records = load_records(cfg.data.train, split="train", n_images=cfg.data.shapes_size)
        Trainer(pipe, cfg, records, Path(work) / "run", quiet=quiet).fit()
        pipe.model.requires_grad_(True)
        return pipe.save_merged(folder)


def ensure_preset(name: str) -> Path:
    """The preset's folder, building it on first use (atomic: build in a temp folder, rename)."""
    folder = preset_dir(name)
    if (folder / META_FILE).is_file():
        return folder
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    print(f"building the VL-BART {name} base model into {folder} (first use)...", flush=True)
    build_tiny_vlbart(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


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


if __name__ == "__main__":
    print(format_paper_table(paper_param_table()))
