"""LLaVA pipeline on a tiny model saved to disk and loaded through ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from vlmtune.core.config import load_config
from vlmtune.data.collate import IGNORE_INDEX
from vlmtune.data.records import load_records
from vlmtune.models import build_pipeline
from vlmtune.models.llava import record_segments
from vlmtune.presets.shapes_tiny import TEST_SIZE


@pytest.fixture(scope="module")
def vqa(shapes_cache) -> list[dict]:
    return load_records("shapes:vqa", split="train", n_images=8, cache_dir=shapes_cache)


def pipeline_for(model_dir: Path, *overrides: str):
    cfg = load_config("llava-dora", [f"model.name_or_path={model_dir}", *overrides])
    return build_pipeline(cfg)


def test_loads_through_from_pretrained(model_dir) -> None:
    pipe = pipeline_for(model_dir)
    assert isinstance(pipe.model, LlavaForConditionalGeneration)
    assert pipe.model.model.language_model.layers[0].self_attn.q_proj is not None
    for prefixes in pipe.towers.values():
        for p in prefixes:
            pipe.model.get_submodule(p)  # every tower path exists in transformers 5
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.image_token_id) == "<image>"


def test_image_tokens_match_vision_patches(model_dir, vqa) -> None:
    pipe = pipeline_for(model_dir)
    batch = pipe.collate(vqa[:3], train=True)
    n_patches = (TEST_SIZE.image_size // TEST_SIZE.patch_size) ** 2
    assert pipe.num_image_tokens == n_patches
    with torch.no_grad():
        feats = pipe.model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
    assert [f.shape[0] for f in feats] == [n_patches] * 3
    assert (batch["input_ids"] == pipe.image_token_id).sum(1).tolist() == [n_patches] * 3
    loss = pipe.loss(batch)  # the model accepts the expansion (features scattered into the tokens)
    assert torch.isfinite(loss) and loss.item() > 0


def test_labels_on_a_real_record_are_the_answer_only(model_dir, vqa) -> None:
    pipe = pipeline_for(model_dir)
    record = vqa[0]
    batch = pipe.collate([record], train=True)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert pipe.tokenizer.decode(supervised) == f" {record['answer']}</s>"
    first = labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))
    prompt = pipe.tokenizer.decode(ids[:first])
    assert prompt.startswith("<s>A chat between a curious user") and prompt.endswith(
        f"USER: {'<image>' * pipe.num_image_tokens}\n{record['question']}\n"
        "Answer the question using a single word or phrase. ASSISTANT:"
    )
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels) if t == pipe.image_token_id)
    # the rendered text is exactly LLaVA's vicuna_v1 prompt
    text = "".join(t for t, _ in record_segments(record))
    assert text.endswith(f" ASSISTANT: {record['answer']}</s>")


def test_truncation_in_collate_keeps_all_image_tokens(model_dir, vqa) -> None:
    pipe = pipeline_for(model_dir, "data.max_length=8")
    batch = pipe.collate(vqa[:2], train=True)
    assert (batch["input_ids"] == pipe.image_token_id).sum(1).tolist() == [pipe.num_image_tokens] * 2
    assert torch.isfinite(pipe.loss(batch))  # nothing supervised left: 0, not 0/0


def test_truncated_answers_are_counted_and_reported_once(model_dir, vqa, capsys) -> None:
    full = pipeline_for(model_dir, "data.max_length=512").encode(vqa[0])
    answer = sum(lab != IGNORE_INDEX for lab in full.labels)
    pipe = pipeline_for(model_dir, f"data.max_length={len(full) - 1}")  # cuts the final </s>
    pipe.collate(vqa[:1], train=True)
    pipe.collate(vqa[:1], train=True)
    pipe.collate(vqa[:1], train=False)  # prompts only: nothing to lose
    assert pipe.truncated_answers == 1 and answer > 1  # one record, however often it is encoded
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert f"record '{vqa[0]['id']}' is {len(full)} tokens" in out and "cuts 1 of its answer tokens" in out
    roomy = pipeline_for(model_dir, f"data.max_length={len(full)}")
    roomy.collate(vqa[:1], train=True)
    assert roomy.truncated_answers == 0


def test_generation_left_pads_and_matches_single_example(model_dir, vqa) -> None:
    pipe = pipeline_for(model_dir)
    records = [vqa[0], vqa[7]]  # different question lengths -> left padding
    batch = pipe.collate(records, train=False)
    assert "labels" not in batch and batch["attention_mask"][:, -1].tolist() == [1, 1]
    both = pipe.generate(batch, max_new_tokens=5)
    one = [pipe.generate(pipe.collate([r], train=False), max_new_tokens=5)[0] for r in records]
    assert both == one and all(isinstance(s, str) for s in both)


def test_llava_conversation_json_multi_turn(model_dir, vqa, tmp_path) -> None:
    import json

    from vlmtune.data.records import read_records

    path = tmp_path / "llava.json"
    conv = [
        {"from": "human", "value": "<image>\nWhat color is the circle?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "How many shapes are there?"},
        {"from": "gpt", "value": "2"},
    ]
    path.write_text(json.dumps([{"id": "c1", "image": vqa[0]["image"], "conversations": conv}]))
    (record,) = read_records(path)
    pipe = pipeline_for(model_dir)
    batch = pipe.collate([record], train=True)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    supervised = [t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert pipe.tokenizer.decode(supervised) == " red</s> 2</s>"
    assert ids.count(pipe.image_token_id) == pipe.num_image_tokens
    prompt = pipe.tokenizer.decode(pipe.collate([record], train=False)["input_ids"][0])
    assert prompt.endswith("ASSISTANT: red</s>USER: How many shapes are there? ASSISTANT:")


def test_gradient_checkpointing_switch_gives_same_loss(model_dir, vqa) -> None:
    from vlmtune.adapters import attach
    from vlmtune.train.trainer import enable_checkpointing

    losses = []
    for flag in ("false", "true"):
        pipe = pipeline_for(model_dir, f"model.gradient_checkpointing={flag}", "adapters.language.dropout=0")
        attach(pipe.model, pipe.towers, pipe.cfg.adapters.specs())
        if flag == "true":
            assert enable_checkpointing(pipe.model)
        pipe.model.train()
        loss = pipe.loss(pipe.collate(vqa[:2], train=True))
        loss.backward()
        grad = pipe.model.model.language_model.layers[0].self_attn.q_proj.lora_A.weight.grad
        losses.append((loss.item(), grad.clone()))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    torch.testing.assert_close(losses[0][1], losses[1][1])
