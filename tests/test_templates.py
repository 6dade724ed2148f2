"""Instruction templates and the vicuna_v1 rendering: exact strings, deterministic choice."""

import subprocess
import sys
from collections import Counter

import pytest

from vlmtune.data.errors import DataError
from vlmtune.data.templates import (
    CAPTION_TEMPLATES,
    SYSTEM_PROMPT,
    VQA_TEMPLATES,
    VQG_TEMPLATES,
    format_box,
    generation_prompt,
    image_first,
    parse_box,
    pick_caption,
    record_to_turns,
    render_instruction,
    render_vicuna,
    template_index,
    vicuna_prompt,
)

VQA = {
    "id": "q1",
    "task": "vqa",
    "image": "/x.png",
    "question": "What color is the circle?",
    "answers": ["red"] * 9 + ["Red"],
}


def test_template_lists_match_instructblip():
    assert len(CAPTION_TEMPLATES) == 13 and len(VQA_TEMPLATES) == 10 and len(VQG_TEMPLATES) == 6
    assert CAPTION_TEMPLATES[0] == "A short image caption:"
    assert CAPTION_TEMPLATES[-1] == "Use a few words to illustrate what is happening in the picture."
    assert (
        VQA_TEMPLATES[6]
        == "Based on the image, respond to this question with a short answer: {question}. Answer:"
    )
    assert (
        VQG_TEMPLATES[2]
        == 'Given the visual representation, create a question for which the answer is "{answer}".'
    )


def test_template_choice_is_deterministic_and_spread():
    picks = [template_index(f"id-{i}", 0, 10) for i in range(2000)]
    assert picks == [template_index(f"id-{i}", 0, 10) for i in range(2000)]
    assert min(Counter(picks).values()) > 150  # all 10 templates used, roughly uniformly
    assert picks != [template_index(f"id-{i}", 1, 10) for i in range(2000)]  # seed matters
    # stable across processes (PYTHONHASHSEED differs): pinned values
    code = "from vlmtune.data.templates import template_index as t; print(t('q1', 0, 10), t('q1', 7, 13))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [int(v) for v in out] == [template_index("q1", 0, 10), template_index("q1", 7, 13)]
    assert [template_index("q1", 0, 10), template_index("q1", 7, 13)] == [6, 9]


def test_render_instruction():
    assert render_instruction(VQA, index=3) == "Q: What color is the circle? A:"
    assert render_instruction(VQA, seed=0) == VQA_TEMPLATES[6].format(question=VQA["question"])
    assert render_instruction(VQA, seed=0).endswith("answer: What color is the circle?. Answer:")
    vqg = {"id": "g", "task": "vqg", "question": "What color is the circle?", "answer": "red"}
    assert (
        render_instruction(vqg, index=0)
        == "Given the image, generate a question whose answer is: red. Question:"
    )
    assert render_instruction({"id": "c", "task": "caption"}, index=2) == "A photo of"
    with pytest.raises(DataError, match="no instruction templates for task 'grounding'"):
        render_instruction({"id": "x", "task": "grounding"})


def test_record_to_turns_per_task():
    assert record_to_turns(VQA) == [
        ("human", "<image>\nWhat color is the circle?\nAnswer the question using a single word or phrase."),
        ("gpt", "red"),
    ]
    assert record_to_turns(VQA, vqa_style="instructblip")[0][1] == "<image>\n" + VQA_TEMPLATES[6].format(
        question=VQA["question"]
    )
    cap = {"id": "c", "task": "caption", "image": "/x.png", "captions": ["a red circle", "x"]}
    assert record_to_turns(cap)[1] == ("gpt", "a red circle")
    assert record_to_turns(cap)[0][1] in ["<image>\n" + t for t in CAPTION_TEMPLATES]
    vqg = {"id": "g", "task": "vqg", "image": "/x.png", "question": "What shape is red?", "answer": "circle"}
    assert record_to_turns(vqg)[1] == ("gpt", "What shape is red?")
    grd = {
        "id": "b",
        "task": "grounding",
        "image": "/x.png",
        "boxes": [{"label": "red circle", "bbox": [3, 5, 21, 23]}],
        "meta": {"width": 64, "height": 64},
    }
    assert record_to_turns(grd) == [
        (
            "human",
            "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: red circle.",
        ),
        ("gpt", "[0.05,0.08,0.33,0.36]"),
    ]
    with pytest.raises(DataError, match="record 'b': grounding needs meta.width and meta.height"):
        record_to_turns({**grd, "meta": {}})
    mcq = {"id": "m", "task": "mcq", "question": "Which?", "choices": ["cat", "dog"], "answer": 1}
    assert record_to_turns(mcq) == [
        ("human", "Which?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."),
        ("gpt", "B"),
    ]
    cls = {"id": "k", "task": "classify", "image": "/x.png", "label": 0, "meta": {"label_name": "red circle"}}
    assert record_to_turns(cls)[1] == ("gpt", "red circle")


def test_conversation_passthrough():
    conv = {
        "id": "c",
        "task": "conversation",
        "image": "/x.png",
        "conversations": [
            {"from": "human", "value": "Describe."},
            {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Color?"},
            {"from": "gpt", "value": "Black."},
        ],
    }
    turns = record_to_turns(conv)
    assert turns == [
        ("human", "<image>\nDescribe."),
        ("gpt", "A cat."),
        ("human", "Color?"),
        ("gpt", "Black."),
    ]
    conv["conversations"][0]["value"] = "<image>\nDescribe."
    assert record_to_turns(conv)[0] == ("human", "<image>\nDescribe.")
    bad = {**conv, "conversations": conv["conversations"][1:]}
    with pytest.raises(
        DataError,
        match="record 'c': conversations must alternate human/gpt starting with human \\(turn 0 is 'gpt'\\)",
    ):
        record_to_turns(bad)


def test_render_vicuna_matches_llava_get_prompt():
    turns = [("human", "<image>\nQ1"), ("gpt", "A1"), ("human", "Q2"), ("gpt", "A2")]
    segments = render_vicuna(turns)
    expected = SYSTEM_PROMPT + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
    assert "".join(t for t, _ in segments) == expected == vicuna_prompt(turns)
    assert segments == [
        (SYSTEM_PROMPT + " USER: <image>\nQ1 ASSISTANT:", False),
        (" A1</s>", True),
        ("USER: Q2 ASSISTANT:", False),
        (" A2</s>", True),
    ]
    assert SYSTEM_PROMPT.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert generation_prompt(VQA) == (
        SYSTEM_PROMPT
        + " USER: <image>\nWhat color is the circle?\nAnswer the question using a single word or phrase. ASSISTANT:"
    )
    with pytest.raises(DataError, match="turn 1 is 'human', expected 'gpt'"):
        render_vicuna([("human", "a"), ("human", "b")])


def test_box_format_roundtrip():
    assert format_box([0, 0, 64, 32], 64, 64) == "[0.00,0.00,1.00,0.50]"
    assert parse_box("the box is [0.05, 0.08,0.33,0.36].") == [0.05, 0.08, 0.33, 0.36]
    assert parse_box("no box") is None


CAP5 = {"id": "coco-1", "task": "caption", "image": "/x.png",
        "captions": ["a red square", "red block on white", "a square of red colour", "red tile", "a plain red image"]}  # fmt: skip


def test_a_caption_record_trains_every_caption_one_per_epoch_in_a_seeded_order():
    """Each caption once per round of 5 epochs, in an order fixed by (seed, round, record id): the same in a
    resumed run or another process (values pinned), another for another seed."""
    picks = [record_to_turns(CAP5, seed=0, epoch=e)[1][1] for e in range(10)]
    assert sorted(picks[:5]) == sorted(CAP5["captions"]) and sorted(picks[5:]) == sorted(CAP5["captions"])
    assert [CAP5["captions"].index(p) for p in picks] == [2, 1, 4, 0, 3, 2, 0, 1, 4, 3]
    assert [pick_caption(CAP5, 1, e) for e in range(5)] != picks[:5]
    assert pick_caption({"id": "c", "caption": "one"}, 0, 7) == "one"


def test_vicuna_v1_puts_the_image_first_in_its_turn_as_llava_training_does():
    """LLaVA's preprocess_multimodal: ``"<image>\\n" + value.replace("<image>", "").strip()``."""
    turns = [("human", "What color is this?\n<image>"), ("gpt", "red"), ("human", "Sure?"), ("gpt", "yes")]
    assert vicuna_prompt(turns, system="S") == (
        "S USER: <image>\nWhat color is this? ASSISTANT: red</s>USER: Sure? ASSISTANT: yes</s>"
    )
    assert vicuna_prompt([("human", "A <image> then <image> B")], system="S") == (
        "S USER: <image>\n<image>\nA  then  B ASSISTANT:"
    )
    assert image_first("<image>\nQ") == "<image>\nQ" and image_first("Q") == "Q"


def test_the_vicuna_pipeline_feeds_the_image_before_the_question(model_dir, tmp_path):
    import itertools

    from PIL import Image

    from vlmtune.core.config import load_config
    from vlmtune.models import build_pipeline

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    record = {"id": "r", "task": "conversation", "image": str(tmp_path / "red.png"), "conversations": [
        {"from": "human", "value": "What color is this?\n<image>"}, {"from": "gpt", "value": "red"}]}  # fmt: skip
    pipe = build_pipeline(load_config("llava-dora", [f"model.name_or_path={model_dir}"]))
    ids = pipe.collate([record], train=True)["input_ids"][0].tolist()
    pieces = [
        "<image>" if is_image else pipe.tokenizer.decode(list(group))
        for is_image, group in itertools.groupby(ids, key=lambda i: i == pipe.image_token_id)
    ]
    assert pieces[1] == "<image>" and pieces[2].startswith("\nWhat color is this? ASSISTANT: red")
    assert pieces[0].endswith("USER: ")
