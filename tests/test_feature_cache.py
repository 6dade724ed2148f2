"""Frozen-tower feature cache (data.cache_vision_features): same logits, tower skipped, invalidation."""

from __future__ import annotations

import pytest
import torch

from vlmtune.adapters import attach
from vlmtune.core.config import ConfigError, load_config
from vlmtune.data.packing import model_inputs
from vlmtune.data.records import load_records
from vlmtune.models import build_pipeline
from vlmtune.models.feature_cache import open_feature_cache, projector_input
from vlmtune.train.run import read_metrics
from vlmtune.train.trainer import Trainer, seed_everything


@pytest.fixture(scope="module")
def records(shapes_cache) -> list[dict]:
    """One question per image (8 different images)."""
    recs = load_records("shapes:vqa", split="train", n_images=8, cache_dir=shapes_cache)
    return list({r["image"]: r for r in recs}.values())


def pipeline(model_dir, cache_dir, *overrides: str):
    cfg = load_config(
        "llava-dora",
        [
            f"model.name_or_path={model_dir}",
            "model.dtype=float32",
            "data.cache_vision_features=true",
            f"data.vision_cache_dir={cache_dir}",
            *overrides,
        ],
    )
    return build_pipeline(cfg)


def logits(pipe, batch) -> torch.Tensor:
    with torch.no_grad():
        inputs = model_inputs(batch)
        if pipe.feature_cache is not None:
            inputs = pipe.feature_cache.model_inputs(pipe.model, inputs, batch)
        return pipe.model(**inputs).logits


def test_cached_logits_equal_the_uncached_run(model_dir, records, tmp_path) -> None:
    pipe = pipeline(model_dir, tmp_path)
    plain = build_pipeline(
        load_config("llava-dora", [f"model.name_or_path={model_dir}", "model.dtype=float32"])
    )
    ref = logits(plain, plain.collate(records[:4], train=True))

    first = pipe.collate(records[:4], train=True)
    assert "pixel_values" in first and "image_features" not in first  # nothing cached yet
    torch.testing.assert_close(logits(pipe, first), ref, atol=1e-5, rtol=0)
    assert (pipe.feature_cache.misses, pipe.feature_cache.hits) == (4, 0)

    second = pipe.collate(records[:4], train=True)
    assert "pixel_values" not in second  # no decoding, no preprocessing, no tower
    feats = second["image_features"]
    assert feats.dtype == torch.float32 and feats.shape == (4, 16, 32)  # (N_img, P, D_v), CLS dropped
    torch.testing.assert_close(feats, projector_input(plain.model, first["pixel_values"]), atol=0, rtol=0)
    torch.testing.assert_close(logits(pipe, second), ref, atol=1e-5, rtol=0)
    assert (pipe.feature_cache.misses, pipe.feature_cache.hits) == (4, 4)
    files = sorted(pipe.feature_cache.folder.glob("*/*.bin"))
    assert len(files) == 4
    assert all(f.stat().st_size == 16 * 32 * 4 for f in files)


def test_a_changed_tower_or_preprocessing_is_a_new_cache(model_dir, records, tmp_path) -> None:
    pipe = pipeline(model_dir, tmp_path)
    logits(pipe, pipe.collate(records[:2], train=True))
    again = pipeline(model_dir, tmp_path)
    assert again.feature_cache.folder == pipe.feature_cache.folder
    assert "image_features" in again.collate(records[:2], train=True)

    tower = pipeline(model_dir, tmp_path)
    with torch.no_grad():
        next(tower.model.model.vision_tower.parameters()).add_(1e-3)

    changed = open_feature_cache(tower.model, tower.image_processor, str(tmp_path))
    assert changed.folder != pipe.feature_cache.folder
    assert changed.load(pipe.feature_cache.key(records[0]["image"])) is None

    prep = pipeline(model_dir, tmp_path)
    prep.image_processor.image_mean = [0.4, 0.4, 0.4]
    moved = open_feature_cache(prep.model, prep.image_processor, str(tmp_path))
    assert moved.folder not in (pipe.feature_cache.folder, changed.folder)


def test_second_epoch_reads_the_cache(model_dir, records, tmp_path) -> None:
    cfg_overrides = [
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "train.batch_size=4",
        "train.max_steps=0",
        "train.epochs=2",
        "train.log_every=1",
    ]
    pipe = pipeline(model_dir, tmp_path / "cache", *cfg_overrides)
    seed_everything(0)
    attach(pipe.model, pipe.towers, pipe.cfg.adapters.specs())
    Trainer(pipe, pipe.cfg, records, tmp_path / "run", quiet=True).fit()
    n = len(records)
    assert (pipe.feature_cache.misses, pipe.feature_cache.hits) == (n, n)  # epoch 1 fills, epoch 2 reads
    final = read_metrics(tmp_path / "run")[-1]
    assert final["time/vision_ms"] > 0  # the tower ran in epoch 1


def test_config_refuses_a_trained_vision_tower(model_dir) -> None:
    with pytest.raises(ConfigError, match="frozen vision tower"):
        load_config("llava-dora", ["data.cache_vision_features=true", "adapters.vision.method=lora"])
    with pytest.raises(ConfigError, match="llava only"):
        load_config("vit-lora", ["data.cache_vision_features=true"])


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("chat", [False, True], ids=["vicuna", "chat-template"])
def test_cache_filled_elsewhere_gives_each_image_its_features(
    model_dir, family_folder, records, tmp_path, packing, chat
) -> None:
    """The shapes LLaVA (vicuna_v1 path) and a llava-hf style checkpoint (processor + chat template:
    FamilyPipeline) read a cache filled one image at a time: the logits equal the uncached run's, padded and
    packed (where the images follow the packed order, not the input order)."""
    folder = family_folder("llava") if chat else model_dir
    extra = ["data.packing=true"] if packing else []
    pipe = pipeline(folder, tmp_path, *extra)
    assert type(pipe).__name__ == ("FamilyPipeline" if chat else "LlavaPipeline")
    plain = build_pipeline(
        load_config("llava-dora", [f"model.name_or_path={folder}", "model.dtype=float32", *extra])
    )
    for p in (pipe, plain):  # rows of <= data.max_length, filled longest first (one row would keep the order)
        p.model.config.text_config._attn_implementation = "sdpa"
    chosen = sorted(records[:4], key=lambda r: len(plain.encode(r)))
    ref = logits(plain, plain.collate(chosen, train=True))

    first = pipe.collate(chosen, train=True)
    assert "pixel_values" in first and "image_features" not in first
    torch.testing.assert_close(logits(pipe, first), ref, atol=1e-5, rtol=0)
    pipe.feature_cache = open_feature_cache(pipe.model, pipe.image_processor, str(tmp_path / "alone"))
    for record in chosen:  # filled one image at a time, so a batch reading it must map keys to images itself
        logits(pipe, pipe.collate([record], train=True))
    second = pipe.collate(chosen, train=True)
    assert "pixel_values" not in second and len(second["image_features"]) == 4
    if packing:
        assert second["ids"] != [r["id"] for r in chosen]  # the packed order is not the input order
    torch.testing.assert_close(logits(pipe, second), ref, atol=1e-5, rtol=0)
    assert (pipe.feature_cache.misses, pipe.feature_cache.hits) == (4, 4)
