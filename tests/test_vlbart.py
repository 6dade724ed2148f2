"""VL-BART pipeline: visual tokens in the encoder, feature cache, NLVR2 pairs, targets, param report."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from PIL import Image, ImageDraw

from vlmtune.models.visual_features import FeatureExtractor, grid_boxes
from vlmtune.models.vlbart import (
    VLBartPipeline,
    load_vlbart,
    prompt_text,
    train_target,
    vqa_answer_scores,
)
from vlmtune.presets.vlbart_shapes_tiny import build_random_vlbart, format_paper_table, paper_param_table


def shape_image(color: tuple[int, int, int], shape: str = "circle", x: int = 16) -> Image.Image:
    im = Image.new("RGB", (64, 64), (245, 245, 245))
    box = (x, 16, x + 28, 44)
    (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=color)
    return im


RED, BLUE = shape_image((220, 40, 40)), shape_image((40, 90, 220), "square", 24)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_random_vlbart(tmp_path_factory.mktemp("vlbart") / "tiny")


@pytest.fixture()
def pipe(tiny_folder):
    model, tok, fx = load_vlbart(tiny_folder)
    model.eval()
    return VLBartPipeline(model, tok, fx)


def vqa(image, rid="q") -> dict:
    return {
        "id": rid,
        "task": "vqa",
        "image": image,
        "question": "What color is the circle?",
        "answers": ["red"],
    }


def encode(pipe: VLBartPipeline, records: list[dict]) -> torch.Tensor:
    b = pipe.collate(records, train=False)
    with torch.no_grad():
        return pipe.model.encode(b["input_ids"], b["attention_mask"], b["feats"], b["image_mask"])


def test_visual_tokens_reach_the_encoder(pipe) -> None:
    a, b = encode(pipe, [vqa(RED)]), encode(pipe, [vqa(BLUE)])
    n = pipe.extractor.num_tokens
    assert a.shape == (1, n + encode(pipe, [vqa(RED)]).shape[1] - n, pipe.model.config.d_model)
    text_a, text_b = a[:, n:], b[:, n:]  # same text; differs only through attention to the image
    assert (text_a - text_b).abs().max() > 1e-3
    torch.testing.assert_close(encode(pipe, [vqa(RED)]), a)  # deterministic in eval mode


def test_loss_is_finite_and_gradients_reach_visual_embedding(pipe) -> None:
    pipe.model.train()
    torch.manual_seed(0)
    batch = pipe.collate([vqa(RED)], train=True)
    loss = pipe.loss(batch)
    loss.backward()
    grad = pipe.model.visual_embedding.feat_embedding[0].weight.grad
    assert torch.isfinite(loss) and grad is not None and grad.abs().sum() > 0


def test_feature_cache_hit_gives_identical_outputs(tiny_folder, tmp_path) -> None:
    model, tok, fx = load_vlbart(tiny_folder, cache_dir=tmp_path / "feats")
    model.eval()
    cached = VLBartPipeline(model, tok, fx)
    plain = VLBartPipeline(model, tok, FeatureExtractor(fx.encoder))
    first = encode(cached, [vqa(RED), vqa(BLUE)])
    assert (fx.cache.misses, fx.cache.hits) == (2, 0)
    assert len(list((tmp_path / "feats").rglob("*.safetensors"))) == 2
    second = encode(cached, [vqa(RED), vqa(BLUE)])
    assert (fx.cache.misses, fx.cache.hits) == (2, 2)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(encode(plain, [vqa(RED), vqa(BLUE)]), first, rtol=0, atol=0)
    # an image file: keyed by its bytes, encoded once per call, a hit on the next call
    RED.save(tmp_path / "red.png")
    feats = fx([tmp_path / "red.png", tmp_path / "red.png"])
    assert (fx.cache.misses, fx.cache.hits) == (3, 2)
    torch.testing.assert_close(fx([tmp_path / "red.png"])[0], feats[1], rtol=0, atol=0)
    assert (fx.cache.misses, fx.cache.hits) == (3, 3)


def test_nlvr2_two_image_batches(pipe) -> None:
    pair = {"id": "n1", "task": "nlvr", "images": [RED, BLUE], "sentence": "both images have a circle"}
    swapped = {**pair, "images": [BLUE, RED]}
    batch = pipe.collate([pair, vqa(RED)], train=False)
    n, c = pipe.extractor.num_tokens, pipe.extractor.feat_dim
    assert batch["feats"].shape == (2, 2, n, c)
    assert batch["image_mask"].tolist() == [[1, 1], [1, 0]]
    assert prompt_text(pair) == "nlvr: both images have a circle"
    embeds, mask = pipe.model.encoder_inputs(
        batch["input_ids"], batch["attention_mask"], batch["feats"], batch["image_mask"]
    )
    assert embeds.shape[1] == 2 * n + batch["input_ids"].shape[1]
    assert mask[1, n : 2 * n].sum() == 0 and mask[0, : 2 * n].sum() == 2 * n  # missing image masked
    torch.testing.assert_close(batch["feats"][1, 0], batch["feats"][0, 0])  # same RED features
    a, b = encode(pipe, [pair]), encode(pipe, [swapped])
    assert (a[:, 2 * n :] - b[:, 2 * n :]).abs().max() > 1e-4  # image order matters (img order embedding)
    train = pipe.collate([{**pair, "answer": "false"}, {**swapped, "answer": True}], train=True)
    decoded = pipe.tokenizer.batch_decode(train["labels"].clamp_min(1), skip_special_tokens=True)
    assert [s.strip() for s in decoded] == [
        "false",
        "true",
    ]


def test_vqa_answer_sampled_by_score() -> None:
    assert vqa_answer_scores(["red"] * 9 + ["blue"]) == {"red": 1.0, "blue": pytest.approx(1 / 3)}
    rec = {"task": "vqa", "answers": ["red"] * 9 + ["blue"]}
    counts = Counter(train_target({**rec, "id": f"q{i}"}) for i in range(4000))  # one draw per record
    assert counts["red"] / 4000 == pytest.approx(0.75, abs=0.03)  # 1 / (1 + 1/3)
    over_epochs = Counter(train_target({**rec, "id": "q"}, epoch=e) for e in range(4000))
    assert over_epochs["red"] / 4000 == pytest.approx(0.75, abs=0.03)
    cap = {"task": "caption", "captions": ["a", "b"]}
    # one caption per epoch (data.templates.pick_caption, shared with the LLaVA-style and BLIP-2 paths): each
    # caption once in every round of len(captions) epochs
    assert {train_target(cap, epoch=e) for e in range(2)} == {"a", "b"}
    assert {train_target(cap, epoch=e) for e in range(2, 4)} == {"a", "b"}
    assert train_target({"task": "vqa", "answer": "yes"}) == "yes"
    assert train_target({"id": "c", "task": "caption", "caption": "one"}) == "one"  # a single `caption`
    assert prompt_text({"id": "gqa-1", "task": "vqa", "question": "Q?"}) == "gqa: Q?"
    assert prompt_text({"id": "x", "task": "caption"}) == "caption:"


def test_save_reload_roundtrip(pipe, tmp_path) -> None:
    from vlmtune.models.vlbart import save_vlbart

    with torch.no_grad():
        pipe.model.visual_embedding.img_order_embedding.weight.add_(1.0)
    before = encode(pipe, [vqa(RED)])
    folder = save_vlbart(pipe.model, pipe.tokenizer, pipe.extractor, tmp_path / "saved")
    model, tok, fx = load_vlbart(folder)
    model.eval()
    torch.testing.assert_close(encode(VLBartPipeline(model, tok, fx), [vqa(RED)]), before)


def test_grid_boxes() -> None:
    boxes = grid_boxes(2)
    assert boxes.tolist() == [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]


def test_paper_param_percentages() -> None:
    """DoRA paper Table 2: DoRA 5.96%, LoRA 5.93% of VL-BART (bart-base + RN101 visual embedding)."""
    rows = {m: (t, n, p, ref) for m, t, n, p, ref in paper_param_table()}
    for method in ("dora", "lora"):
        assert abs(rows[method][2] - rows[method][3]) < 0.01, format_paper_table(list(paper_param_table()))
    assert rows["lora"][0] == 8_786_688 and rows["lora"][1] == 148_234_752
    assert rows["dora"][0] - rows["lora"][0] == 36 * 768 + 32 * 768  # magnitudes + LayerNorm weights
    assert rows["ft"][2] == 100.0


def test_explained_vqa_targets_answer_first_and_drop_human_answers() -> None:
    from vlmtune.presets.vlbart_shapes_tiny import explained_vqa

    q = {"id": "q", "task": "vqa", "question": "What color is the circle?", "answer": "red",
         "answers": ["red"] * 10, "answer_type": "other"}  # fmt: skip
    cap = {"id": "c", "task": "caption", "captions": ["a red circle"]}
    out = explained_vqa([q, cap])
    assert out[0]["answer"] == "red. The circle is red." and "answers" not in out[0]
    assert train_target(out[0]) == "red. The circle is red."
    assert out[1] is cap and q["answers"] == ["red"] * 10  # inputs untouched


def test_grid_encoder_pretraining_trains_the_trunk_then_freezes_it() -> None:
    from vlmtune.models.visual_features import build_grid_encoder
    from vlmtune.presets.vlbart_shapes_tiny import pretrain_grid_encoder

    torch.manual_seed(0)
    encoder = build_grid_encoder("tiny", 36)
    before = {k: v.clone() for k, v in encoder.trunk.state_dict().items()}
    pixels = torch.randn(2, 3, 224, 224)
    frozen = encoder(pixels)
    tokens = encoder.grid_tokens(pixels)  # the same tokens, with autograd
    torch.testing.assert_close(tokens, frozen)
    assert tokens.requires_grad is False  # frozen: no parameter needs a gradient
    scores = pretrain_grid_encoder(encoder, steps=3, n_images=8)
    assert set(scores) == {"patch_accuracy", "scene_accuracy", "scene_exact"}
    after = encoder.trunk.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("conv1.weight"))
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())


def caption(image, rid="c") -> dict:
    return {"id": rid, "task": "caption", "image": image, "caption": "a red circle"}


@pytest.mark.parametrize(
    "sizes, batches, says",
    [
        (
            {"vqa": 32, "caption": 32},
            2,  # 32 vqa records in one batch of 32, 3 captions in one: train.batch_size=4 sizes neither
            "2 batches of one task each: vqa <= 32, caption <= 32 (data.task_batch_sizes; "
            "train.batch_size=4 does not apply to these tasks) per epoch",
        ),
        (
            {"vqa": 32},
            2,  # captions take train.batch_size=4: 3 records, one batch
            "2 batches of one task each: vqa <= 32, caption <= 4 (data.task_batch_sizes; "
            "train.batch_size=4 for caption) per epoch",
        ),
    ],
)
def test_plan_line_names_the_per_task_batch_sizes(tiny_folder, tmp_path, sizes, batches, says) -> None:
    """VL-BART batches by data.task_batch_sizes, not train.batch_size: the trainer's plan line says so."""
    from vlmtune.core.config import load_config
    from vlmtune.models.vlbart import build_vlbart_pipeline
    from vlmtune.train.trainer import Trainer

    overrides = [f"data.task_batch_sizes={sizes}", "train.batch_size=4", "train.max_steps=3"]
    cfg = load_config("vlbart-dora", [f"model.name_or_path={tiny_folder}", *overrides])
    pipe = build_vlbart_pipeline(cfg)
    records = [vqa(RED, f"q{i}") for i in range(32)] + [caption(BLUE, f"c{i}") for i in range(3)]
    trainer = Trainer(pipe, cfg, records, tmp_path / "run", quiet=True)
    assert [len(b) for b in trainer._epoch_batches(0)] == [32, 3] and trainer.micro_per_epoch == batches
    line = trainer.plan()
    assert line.startswith(f"plan: 35 records -> {says} (grad_accum 1) -> 3 optimizer steps"), line
