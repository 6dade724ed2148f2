"""The ``digits-tiny`` ViT preset: the small ViT of :func:`vlmtune.models.vit.digits_tiny_preset` (8x8
input, patch 2, D=64, 4 blocks) pretrained on ``digits:source@train`` (digits 0-4) with the shared
trainer, every parameter trained; identical bytes for identical seeds. Cached in ``$VLMTUNE_CACHE/vit``
by :mod:`vlmtune.presets.registry`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.config import RunConfig
from vlmtune.models.vit import ViTPipeline, build_vit_pipeline

PRETRAIN = {"epochs": 30, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.05, "seed": 0}


def pretrained_digits_tiny() -> Path:
    """Folder of the pretrained ``digits-tiny`` ViT (built on first use, then cached)."""
    from vlmtune.presets.registry import model_folder

    return Path(model_folder("vit", "digits-tiny"))


def build_digits_tiny(folder: Path, quiet: bool = True) -> Path:
    """Pretrain the ViT and write it to ``folder`` (``config.json`` + ``model.safetensors``)."""
    pipe = _pretrain_source(folder / "run", quiet)
    pipe.save_merged(folder)
    shutil.rmtree(folder / "run", ignore_errors=True)
    return folder


def pretrain_config() -> RunConfig:
    cfg = RunConfig(recipe="digits-tiny-pretrain")
    cfg.model.pipeline, cfg.model.name_or_path = "vit", "digits-tiny-scratch"
    cfg.data.train = "digits:source@train"
    cfg.adapters.vision = AdapterSpec(method="full")
    cfg.adapters.projector = AdapterSpec(method="full")
    t = cfg.train
    t.epochs, t.batch_size, t.lr = PRETRAIN["epochs"], PRETRAIN["batch_size"], PRETRAIN["lr"]
    t.weight_decay, t.seed, t.warmup_ratio = PRETRAIN["weight_decay"], PRETRAIN["seed"], 0.05
    t.log_every, t.keep_last, t.mixed_precision = 1000, 1, "no"
    return cfg


def _pretrain_source(run_dir: Path, quiet: bool) -> ViTPipeline:
    from vlmtune.data.records import read_classification
    from vlmtune.recipes import fit, seeded_pipeline

    cfg = pretrain_config()
    pipe = seeded_pipeline(cfg, build_vit_pipeline)
    records = read_classification(cfg.data.train, "train")
    fit(pipe, cfg, records, run_dir, quiet)
    return pipe
