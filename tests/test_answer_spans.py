"""Which tokens the chat-template families supervise: the decoded label spans of each family's template.

llava-1.5-hf's ``chat_vicuna`` template (``VICUNA_HF``) emits no end-of-turn marker after an answer; its answers
must end with the tokenizer's eos, and the space before the next ``USER`` must not be supervised.
"""

from __future__ import annotations

import pytest

from vlmtune.core.config import load_config
from vlmtune.data.collate import IGNORE_INDEX
from vlmtune.models import build_pipeline


@pytest.fixture(scope="module")
def records(two_images) -> list[dict]:
    first, _ = two_images
    return [
        {"id": "q0", "task": "vqa", "image": str(first), "question": "What color is the circle?",
         "answers": ["red"] * 10},
        {"id": "c1", "task": "conversation", "image": str(first), "conversations": [
            {"from": "human", "value": "<image>\nHow many shapes?"}, {"from": "gpt", "value": "2"},
            {"from": "human", "value": "Is there a triangle?"}, {"from": "gpt", "value": "no, there is none."}]},
        {"id": "t2", "task": "conversation", "conversations": [
            {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "hello there"},
            {"from": "human", "value": "Again."}, {"from": "gpt", "value": "hello"}]},
    ]  # fmt: skip


def family_pipeline(folder):
    cfg = load_config(
        "llava-dora", [f"model.name_or_path={folder}", "model.dtype=float32", "data.max_length=512"]
    )
    return build_pipeline(cfg)


def decoded_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive supervised tokens."""
    spans, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans, run = [*spans, run], []
    return [tokenizer.decode(s) for s in (spans + [run] if run else spans)]


def answers(end: str, lead: str = "") -> list[list[str]]:
    return [
        [f"{lead}red{end}"],
        [f"{lead}2{end}", f"{lead}no, there is none.{end}"],
        [f"{lead}hello there{end}", f"{lead}hello{end}"],
    ]


SPANS = {
    "llava": answers("</s>", " "),
    "llava_next": answers("</s>", " "),
    "llava_hf": answers("</s>", " "),  # the template has no </s>: the tokenizer's eos ends each answer
    "llava_next_hf": answers("</s>", " "),
    "qwen2_vl": answers("<|im_end|>\n"),
    "gemma3": answers("<end_of_turn>\n"),
    "idefics3": answers("<end_of_utterance>\n"),
    "mllama": answers("<|eot_id|>"),
}


@pytest.mark.parametrize("name", list(SPANS))
def test_each_template_supervises_the_answers_and_their_end_marker_only(name, family_folder, records):
    pipe = family_pipeline(family_folder(name))
    got = []
    for record in records:
        batch = pipe.collate([record], train=True)
        got.append(decoded_spans(pipe.tokenizer, batch["input_ids"][0].tolist(), batch["labels"][0].tolist()))
    assert got == SPANS[name]


def test_the_space_before_the_next_role_is_not_supervised(family_folder):
    """Offsets rule alone: a segment ``" green "`` followed by ``"USER: ..."`` supervises ``" green"`` only,
    though the tokenizer merges the trailing space into the next role's token."""
    pipe = family_pipeline(family_folder("llava_hf"))
    segments = [("USER: What color? ASSISTANT:", False), (" green ", True), ("USER: Sure? ASSISTANT:", False)]
    text = "".join(t for t, _ in segments)
    ids = pipe.tokenizer(text)["input_ids"]
    assert decoded_spans(pipe.tokenizer, ids, pipe._labels(segments, ids, [])) == [" green"]


def test_generation_stops_on_the_tokenizer_eos(family_folder, records, monkeypatch):
    import vlmtune.generation as generation

    pipe = family_pipeline(family_folder("llava_hf"))
    seen = {}

    def fake(model, tokenizer, inputs, max_new_tokens, num_beams, eos_token_id=None):
        seen["stop"] = eos_token_id
        return [""] * inputs["input_ids"].shape[0]

    monkeypatch.setattr(generation, "generate_text", fake)
    pipe.model.generation_config.eos_token_id = None
    pipe.generate(pipe.collate(records[:1], train=False), max_new_tokens=2)
    assert seen["stop"] == [pipe.tokenizer.eos_token_id]


@pytest.mark.parametrize("which", ["vicuna", "qwen2_vl", "blip_2"])
def test_caption_records_supervise_every_caption_over_the_epochs(which, family_folder, model_dir, two_images):
    """The LLaVA-style (vicuna_v1 and chat-template) and BLIP-2 paths train one caption per record per epoch
    (the trainer's ``set_epoch``), each of the 3 in every 3 epochs, not ``captions[0]`` only."""
    captions = ["a red circle", "a blue square", "two shapes"]
    record = {"id": "coco-1", "task": "caption", "image": str(two_images[0]), "captions": captions}
    folder = model_dir if which == "vicuna" else family_folder(which)
    recipe = "blip2-dora" if which == "blip_2" else "llava-dora"
    pipe = build_pipeline(load_config(recipe, [f"model.name_or_path={folder}", "model.dtype=float32"]))
    supervised = []
    for epoch in range(6):
        pipe.set_epoch(epoch)
        batch = pipe.collate([record], train=True)
        labels = batch["labels"][0]
        supervised.append(
            pipe.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist(), skip_special_tokens=True)
        )
    found = [next(c for c in captions if c in text) for text in supervised]
    assert sorted(found[:3]) == sorted(captions)
    assert sorted(found[3:]) == sorted(captions)
