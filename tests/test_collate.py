"""Collation for LLaVA: label masking, image-token expansion, truncation, padding."""

from __future__ import annotations

import pytest
import torch

from vlmtune.data.collate import (
    IGNORE_INDEX,
    Encoded,
    encode_segments,
    pad_batch,
    prompt_segments,
    truncate,
)
from vlmtune.presets.shapes_tiny import train_tokenizer

SYSTEM = "A chat between a curious user and an artificial intelligence assistant."


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        f"{SYSTEM} USER: <image>\nWhat color is the circle? ASSISTANT: red</s>",
        "USER: How many shapes are there? ASSISTANT: 3</s>",
        "a red circle and a blue square",
    ] * 4
    return train_tokenizer(texts, vocab_size=300)


SEGMENTS = [
    (f"{SYSTEM} USER: <image>\nWhat color is the circle? ASSISTANT:", False),
    (" red</s>", True),
    ("USER: How many shapes? ASSISTANT:", False),
    (" 3</s>", True),
]


def test_labels_only_on_assistant_tokens(tokenizer) -> None:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    enc = encode_segments(SEGMENTS, tokenizer, image_id, num_image_tokens=5)
    ids, labels = enc.input_ids, enc.labels
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    # token by token: position i is supervised iff it belongs to an assistant segment
    expected_mask = [False]  # bos
    for text, is_assistant in SEGMENTS:
        for k, piece in enumerate(text.split("<image>")):
            if k:
                expected_mask += [False] * 5
            expected_mask += [is_assistant] * len(tokenizer(piece, add_special_tokens=False)["input_ids"])
    assert [lab != IGNORE_INDEX for lab in labels] == expected_mask
    assert all(lab == tok for lab, tok in zip(labels, ids) if lab != IGNORE_INDEX)
    supervised = [tok for tok, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " red</s> 3</s>"
    assert supervised.count(tokenizer.eos_token_id) == 2  # the model learns to stop
    assert enc.image_spans == [(1 + ids[1:].index(image_id), 1 + ids[1:].index(image_id) + 5)]
    assert ids.count(image_id) == 5


def test_truncation_never_splits_image_tokens(tokenizer) -> None:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    enc = encode_segments(SEGMENTS, tokenizer, image_id, num_image_tokens=7)
    (start, end) = enc.image_spans[0]
    for max_length in range(1, len(enc) + 3):
        out = truncate(enc, max_length)
        assert out.input_ids.count(image_id) == 7, max_length
        assert len(out) == min(len(enc), max(max_length, end))
        assert out.input_ids == enc.input_ids[: len(out)] and out.labels == enc.labels[: len(out)]
    assert start > 1  # the system prompt precedes the image


def test_pad_left_for_generation_and_right_for_training() -> None:
    a = Encoded([1, 5, 6], [IGNORE_INDEX, 5, 6])
    b = Encoded([1, 7], [IGNORE_INDEX, IGNORE_INDEX])
    right = pad_batch([a, b], pad_id=0, side="right")
    assert right["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert right["labels"].tolist() == [[-100, 5, 6], [-100, -100, -100]]
    left = pad_batch([a, b], pad_id=0, side="left", with_labels=False)
    assert left["input_ids"].tolist() == [[1, 5, 6], [0, 1, 7]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert "labels" not in left and left["input_ids"].dtype == torch.long


def test_prompt_segments_drop_the_last_answer() -> None:
    assert prompt_segments(SEGMENTS) == SEGMENTS[:3]
    assert prompt_segments(SEGMENTS[:1]) == SEGMENTS[:1]
