"""Your own data (issue 21): LLaVA JSON with data.image_root, ShareGPT / OpenAI ``messages`` records,
``datasets`` folders and Parquet files with a column mapping, multi-image records, and data.on_error=skip.

The acceptance check: the same records as LLaVA JSON, as ``messages`` JSONL and as a saved ``datasets``
folder give the same token ids, labels and pixels through the pipeline's collate (the LLaVA vicuna path
and one chat-template family).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_families import build_family

from vlmtune import cli
from vlmtune.core.config import ConfigError, load_config
from vlmtune.core.data_spec import parse_spec
from vlmtune.data.errors import DataError, ErrorLog
from vlmtune.data.records import load_records
from vlmtune.models import build_pipeline

QA = [  # (image index or None, turns): a single-turn, a two-turn and a text-only conversation
    (0, [("What color is the circle?", "red"), ("How many shapes?", "2")]),
    (1, [("Is there a triangle?", "no, there is none.")]),
    (None, [("Say yes.", "yes")]),
]


def write_images(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = (np.random.RandomState(i).rand(24 + 8 * i, 32, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def llava_json(image_prefix: str = "images/") -> list[dict]:
    """The records in LLaVA's format (relative image paths)."""
    out = []
    for k, (image, turns) in enumerate(QA):
        conv = []
        for j, (q, a) in enumerate(turns):
            lead = "<image>\n" if j == 0 and image is not None else ""
            conv += [{"from": "human", "value": lead + q}, {"from": "gpt", "value": a}]
        record = {"id": f"r{k}", "conversations": conv}
        if image is not None:
            record["image"] = f"{image_prefix}{image}.png"
        out.append(record)
    return out


def as_messages(record: dict, with_id: bool = False) -> dict:
    """The same record in LLaMA-Factory's OpenAI-style format (no id unless asked)."""
    roles = {"human": "user", "gpt": "assistant"}
    out = {"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]}
    if "image" in record:
        out["images"] = [record["image"]]
    return {"id": record["id"], **out} if with_id else out


def as_sharegpt(record: dict) -> dict:
    """ShareGPT with OpenAI role names inside ``conversations``, an ``images`` list and no id."""
    roles = {"human": "user", "gpt": "assistant"}
    out = {
        "conversations": [{"from": roles[t["from"]], "value": t["value"]} for t in record["conversations"]]
    }
    return {**out, "images": [record["image"]]} if "image" in record else out


@pytest.fixture()
def own(tmp_path: Path) -> Path:
    """``own/``: images/, own.json (LLaVA), own_messages.jsonl / .json, own_sharegpt.json, own_val.json."""
    root = tmp_path / "own"
    write_images(root / "images")
    records = llava_json()
    (root / "own.json").write_text(json.dumps(records))
    (root / "own_messages.jsonl").write_text("".join(json.dumps(as_messages(r)) + "\n" for r in records))
    (root / "own_messages.json").write_text(json.dumps([as_messages(r, with_id=True) for r in records]))
    (root / "own_sharegpt.json").write_text(json.dumps([as_sharegpt(r) for r in records]))
    (root / "own_val.json").write_text(json.dumps(records[:2]))
    return root


def strip_ids(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "id"} for r in records]


# ---------------------------------------------------------------- formats -> one internal record
def test_messages_and_sharegpt_records_become_the_llava_record(own, caplog):
    llava = load_records(str(own / "own.json"))
    with caplog.at_level(logging.WARNING, logger="vlmtune.data"):
        messages = load_records(str(own / "own_messages.jsonl"))
        sharegpt = load_records(str(own / "own_sharegpt.json"))
    assert strip_ids(messages) == strip_ids(llava) == strip_ids(sharegpt)
    assert llava[0]["image"] == str(own / "images" / "0.png") and "image" not in llava[2]
    assert llava[0]["task"] == "conversation" and llava[0]["conversations"][3] == {
        "from": "gpt",
        "value": "2",
    }
    # ids: derived from file and line (JSONL) or list index (JSON), and said once per file
    assert [r["id"] for r in messages] == [
        "own_messages.jsonl:1",
        "own_messages.jsonl:2",
        "own_messages.jsonl:3",
    ]
    assert [r["id"] for r in sharegpt] == [
        "own_sharegpt.json#0",
        "own_sharegpt.json#1",
        "own_sharegpt.json#2",
    ]
    said = [r.getMessage() for r in caplog.records if "have no 'id'" in r.getMessage()]
    assert len(said) == 2 and "own_messages.jsonl: 3 record(s) have no 'id'" in said[0]
    assert "(e.g. 'own_messages.jsonl:1')" in said[0] and "(e.g. 'own_sharegpt.json#0')" in said[1]


def test_content_parts_system_prompt_and_column_mapping(tmp_path):
    write_images(tmp_path)
    row = {
        "conv": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ],
        "pics": ["0.png"],
        "key": 7,
        "system": "Be brief.",
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    cols = {"messages": "conv", "images": "pics", "id": "key"}
    (rec,) = load_records(str(tmp_path / "d.jsonl"), columns=cols)
    assert rec["id"] == "7" and rec["image"] == str(tmp_path / "0.png")
    assert rec["conversations"] == [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat color?"},
        {"from": "gpt", "value": "red"},
    ]
    with pytest.raises(
        ConfigError, match=r"data.columns.mesages: unknown record key 'mesages'; map one of id"
    ):
        load_config("llava-dora", ["data.columns.mesages=conv"])
    assert load_config("llava-dora", ["data.columns.messages=conv"]).data.columns == {"messages": "conv"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}]},
         "own.jsonl:1: record 'own.jsonl:1' turn 1 is from 'gpt', expected 'human' (user)"),
        ({"messages": [{"role": "user", "content": "Q"}]},
         "own.jsonl:1: record 'own.jsonl:1' has no assistant turn"),
        ({"messages": [{"role": "tool", "content": "Q"}]},
         "own.jsonl:1: record 'own.jsonl:1' messages turn 1 has role 'tool'; use user/assistant/system "
         "(or human/gpt)"),
        ({"messages": [{"content": "Q"}]},
         "own.jsonl:1: record 'own.jsonl:1' messages turn 1 has no 'role' (or 'from'); use user/assistant/system"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
         "own.jsonl:1: record 'own.jsonl:1' messages turn 2 has content None; give a string or a list of"),
        ({"messages": [{"role": "user", "content": "<image><image>Q"}, {"role": "assistant", "content": "A"}],
          "images": ["0.png"]},
         "own.jsonl:1: record 'own.jsonl:1' has 1 image(s) but 2 '<image>' placeholder(s)"),
        ({"messages": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}]},
         "has 0 image(s) but 1 '<image>' placeholder(s)"),
    ],
)  # fmt: skip
def test_bad_conversations_stop_at_load_time_with_one_line(tmp_path, row, message):
    assert_refused_in_one_line(tmp_path, row, message, images=1)


def assert_refused_in_one_line(tmp_path, row: dict, message: str, images: int) -> None:
    """``row`` as own.jsonl (beside ``images`` PNGs) stops loading with one line containing ``message``."""
    write_images(tmp_path, images)
    (tmp_path / "own.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        load_records(str(tmp_path / "own.jsonl"))
    assert message in str(err.value) and "\n" not in str(err.value)


def user_turn(*parts: dict) -> list[dict]:
    """``messages`` of one user turn with ``parts`` then "Q", answered "A"."""
    content = [*parts, {"type": "text", "text": "Q"}]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": "A"}]


BARE = {"type": "image"}


@pytest.mark.parametrize(
    ("row", "images"),
    [
        ({"messages": user_turn(BARE), "images": ["0.png"]}, ["0.png"]),  # LLaMA-Factory / TRL
        ({"messages": user_turn(BARE, BARE), "images": ["1.png", "0.png"]}, ["1.png", "0.png"]),
        ({"messages": user_turn(BARE), "image": "1.png"}, ["1.png"]),
        ({"messages": user_turn({"type": "image", "image": "1.png"})}, ["1.png"]),  # paths in the parts
        ({"messages": user_turn({"type": "image", "image": "1.png"}), "images": None}, ["1.png"]),
        ({"messages": user_turn({"type": "image_url", "image_url": {"url": "0.png"}}, {"type": "image", "path": "1.png"})},
         ["0.png", "1.png"]),
    ],
)  # fmt: skip
def test_image_paths_come_from_images_or_from_the_parts(tmp_path, row, images):
    write_images(tmp_path, 2)
    (tmp_path / "own.jsonl").write_text(json.dumps(row) + "\n")
    (rec,) = load_records(str(tmp_path / "own.jsonl"))
    got = [rec.pop("image")] if len(images) == 1 else rec.pop("images")
    assert got == [str(tmp_path / p) for p in images] and "image" not in rec and "images" not in rec
    assert rec["conversations"][0]["value"] == "<image>\n" * len(images) + "Q"


CONFLICT = (
    "give each path once: in '{key}' with bare {{\"type\": \"image\"}} parts, or in the parts without '{key}'"
)


@pytest.mark.parametrize(
    ("row", "message"),
    [  # a part's own path next to the record's images: refused even when it is the same path
        ({"messages": user_turn({"type": "image", "image": "missing.png"}), "images": ["1.png"]},
         "own.jsonl:1: record 'own.jsonl:1' messages turn 1 part 1 gives image 'missing.png' while the record "
         "also has 'images' ['1.png']; " + CONFLICT.format(key="images")),
        ({"id": "r7", "messages": user_turn(BARE, {"type": "image_url", "image_url": {"url": "0.png"}}),
          "images": ["0.png", "1.png"]},
         "own.jsonl:1: record 'r7' messages turn 1 part 2 gives image '0.png' while the record also has 'images'"),
        ({"messages": user_turn({"type": "image", "image": "0.png"}), "image": "0.png"},
         "messages turn 1 part 1 gives image '0.png' while the record also has 'image' '0.png'; "
         + CONFLICT.format(key="image")),
        ({"messages": user_turn({"type": "image", "image": "0.png"}, BARE)},  # only some parts have a path
         "own.jsonl:1: record 'own.jsonl:1' has 2 image parts but 1 with a path (messages turn 1 part 2 has "
         "none); give every image part its path, or list the paths in "
         "'images' and leave the parts bare"),
        ({"messages": user_turn(BARE), "images": ["0.png", "1.png"]},  # count mismatch
         "own.jsonl:1: record 'own.jsonl:1' has 2 image(s) but 1 '<image>' placeholder(s)"),
        ({"messages": user_turn({"type": "image", "image": {"bytes": "x"}})},
         "own.jsonl:1: record 'own.jsonl:1' messages turn 1 part 1 has image {'bytes': 'x'}; give a path string"),
    ],
)  # fmt: skip
def test_image_parts_that_conflict_with_images_are_refused_with_one_line(tmp_path, row, message):
    assert_refused_in_one_line(tmp_path, row, message, images=2)


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ({"from": "bot", "value": "A"},
         "bad.json:item 1: record 'r1' conversations turn 2 has from 'bot'; use human/gpt/system (or user/assistant)"),
        ({"value": "A"}, "bad.json:item 1: record 'r1' conversations turn 2 has no 'role' (or 'from'); use human/gpt"),
        ({"from": "gpt", "value": None},
         "bad.json:item 1: record 'r1' conversations turn 2 has value None; give a string or a list of text/image"),
        ("A", "bad.json:item 1: record 'r1' conversations turn 2 must be an object, got 'A'"),
    ],
)  # fmt: skip
def test_a_bad_llava_turn_is_named_by_record_turn_and_field(own, turn, message):
    good = llava_json()[0]
    bad = {"id": "r1", "image": "images/1.png", "conversations": [good["conversations"][0], turn]}
    (own / "bad.json").write_text(json.dumps([good, bad]))
    with pytest.raises(DataError) as err:
        load_records(str(own / "bad.json"))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and "[{" not in str(err.value)  # no dump of the conversation
    # user/assistant are accepted in a LLaVA file too (what the error lists)
    ua = {**bad, "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]}
    (own / "ua.json").write_text(json.dumps([good, ua]))
    assert load_records(str(own / "ua.json"))[1]["conversations"] == [
        {"from": "human", "value": "Q"},
        {"from": "gpt", "value": "A"},
    ]


def test_a_file_of_another_suffix_is_read_as_jsonl_and_a_plain_folder_is_refused(own, tmp_path):
    (tmp_path / "own.txt").write_text((own / "own_messages.jsonl").read_text())
    assert len(load_records(str(tmp_path / "own.txt"))) == 3
    with pytest.raises(DataError) as err:
        load_records(str(own / "images"))
    assert str(err.value) == (
        f"data file '{own / 'images'}' is a folder, not a datasets save_to_disk folder (no state.json or "
        "dataset_dict.json) and holds no .jsonl/.json/.parquet file; give a data file whose records name the "
        "images (image paths resolve against data.image_root)"
    )
    with pytest.raises(DataError) as err:  # a folder of data files: name them
        load_records(str(own))
    assert str(err.value).endswith(
        "(no state.json or dataset_dict.json); it holds own.json, own_messages.json, own_messages.jsonl, ...: "
        f"name one, e.g. {own / 'own.json'}"
    )


# ---------------------------------------------------------------- datasets
def save_dataset(own: Path, out: Path, split: str | None = None):
    """own.json's records as a datasets folder: an Image column ``img`` (bytes), ``conv`` in OpenAI format."""
    import datasets

    rows = [as_messages(r, with_id=True) for r in llava_json()]
    images = [(own / r["images"][0]).read_bytes() if "images" in r else None for r in rows]
    data = {
        "key": [r["id"] for r in rows],
        "conv": [r["messages"] for r in rows],
        "img": [{"bytes": b, "path": None} if b else None for b in images],
    }
    ds = datasets.Dataset.from_dict(data, features=datasets.Features({
        "key": datasets.Value("string"),
        "conv": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "img": datasets.Image(),
    }))  # fmt: skip
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(out))
    return ds


COLUMNS = {"id": "key", "messages": "conv", "image": "img"}


def test_saved_dataset_and_parquet_give_the_llava_records(own, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    ds = save_dataset(own, tmp_path / "ds")
    ds.to_parquet(str(tmp_path / "own.parquet"))
    llava = load_records(str(own / "own.json"))
    from_disk = load_records(str(tmp_path / "ds"), columns=COLUMNS)
    from_parquet = load_records(str(tmp_path / "own.parquet"), columns=COLUMNS)
    for records in (from_disk, from_parquet):
        assert [r["id"] for r in records] == ["r0", "r1", "r2"]
        assert [r["conversations"] for r in records] == [r["conversations"] for r in llava]
        assert "image" not in records[2]
        for got, want in zip(records[:2], llava[:2]):  # the image bytes, written once to the cache
            assert Path(got["image"]).parent == tmp_path / "cache" / "dataset-images"
            assert Path(got["image"]).read_bytes() == Path(want["image"]).read_bytes()
    assert from_disk[0]["image"] == from_parquet[0]["image"]  # content-addressed: one file per image


def test_dataset_image_values_become_paths(tmp_path, monkeypatch):
    from vlmtune.data.datasets_files import image_path

    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    (png,) = write_images(tmp_path, 1)
    data = png.read_bytes()
    stored = image_path({"bytes": data, "path": "x.png"}, "row 0")
    assert Path(stored).read_bytes() == data and stored.endswith(".png")
    assert image_path(data, "row 0") == stored  # same bytes, same file (the suffix sniffed from the bytes)
    assert (
        image_path("rel/a.png", "row 0") == "rel/a.png"
        and image_path({"bytes": None, "path": "b.png"}, "") == "b.png"
    )
    from_pil = image_path(Image.open(png), "row 0")  # re-encoded as PNG: the same pixels
    assert np.array_equal(np.asarray(Image.open(from_pil)), np.asarray(Image.open(png)))
    with pytest.raises(
        DataError, match=r"^own.parquet:row 3: image: image value 42 is not a path, bytes or an image"
    ):
        image_path(42, "own.parquet:row 3: image")


def test_dataset_dict_split_and_bad_columns(own, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    save_dataset(own, tmp_path / "dd", split="validation")
    assert parse_spec(f"{tmp_path / 'dd'}@validation").split == "validation"
    assert len(load_records(f"{tmp_path / 'dd'}@validation", columns=COLUMNS)) == 3
    assert len(load_records(str(tmp_path / "dd"), split="test", columns=COLUMNS)) == 3  # its only split
    with pytest.raises(DataError, match=r"dd: data.columns.messages=conversation: no column 'conversation' "
                                        r"\(columns: key, conv, img\)"):  # fmt: skip
        load_records(str(tmp_path / "dd"), columns={**COLUMNS, "messages": "conversation"})
    with pytest.raises(
        DataError, match=r"data file '.*nothing' not found; give an existing .jsonl/.json/.parquet"
    ):
        load_records(str(tmp_path / "nothing"))


# ---------------------------------------------------------------- the same tokens through collate
@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory) -> Path:
    return build_family("qwen2_vl", tmp_path_factory.mktemp("families") / "qwen2_vl")


def family_pipeline(folder: Path):
    cfg = load_config("llava-dora", [f"model.name_or_path={folder}", "model.dtype=float32"])
    return build_pipeline(cfg)


@pytest.mark.parametrize("which", ["vicuna", "chat_template"])
def test_three_formats_give_the_same_token_ids_and_labels(
    which, own, tmp_path, monkeypatch, model_dir, request
):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    save_dataset(own, tmp_path / "ds")
    folder = model_dir if which == "vicuna" else request.getfixturevalue("qwen_folder")
    pipe = family_pipeline(folder)
    assert type(pipe).__name__ == ("LlavaPipeline" if which == "vicuna" else "FamilyPipeline")
    sources = {
        "llava": load_records(str(own / "own.json")),
        "messages": load_records(str(own / "own_messages.jsonl")),
        "messages_json": load_records(str(own / "own_messages.json")),
        "datasets": load_records(str(tmp_path / "ds"), columns=COLUMNS),
    }
    batches = {name: pipe.collate(records, train=True) for name, records in sources.items()}
    reference = batches["llava"]
    assert (reference["labels"] != -100).sum() > 0
    for name in ("messages", "messages_json", "datasets"):
        for key, value in reference.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(batches[name][key], value), f"{name}: {key} differs"
    prompts = {name: pipe.collate(records, train=False)["input_ids"] for name, records in sources.items()}
    for name in ("messages", "messages_json", "datasets"):
        assert torch.equal(prompts[name], prompts["llava"]), f"{name}: generation prompt differs"


def two_image_record(folder: Path) -> dict:
    write_images(folder, 2)
    return {"id": "two", "images": ["0.png", "1.png"], "messages": [
        {"role": "user", "content": "<image>\n<image>\nAre the two images the same?"},
        {"role": "assistant", "content": "no"}]}  # fmt: skip


MULTI_IMAGE_FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3",
                        "idefics3", "smolvlm", "mllama", "internvl"]  # fmt: skip


@pytest.mark.parametrize("which", ["vicuna", *MULTI_IMAGE_FAMILIES])
def test_multi_image_records_train_and_generate(which, tmp_path, model_dir):
    (tmp_path / "two.jsonl").write_text(json.dumps(two_image_record(tmp_path)) + "\n")
    (record,) = load_records(str(tmp_path / "two.jsonl"))
    assert record["images"] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    pipe = family_pipeline(model_dir if which == "vicuna" else build_family(which, tmp_path / which))
    batch = pipe.collate([record], train=True)
    if which in ("vicuna", "llava", "qwen2_vl"):  # one block of image tokens per image, of one size
        n = int((batch["input_ids"] == pipe.image_token_id).sum())
        assert n > 0 and n % 2 == 0
    loss = pipe.loss(batch)
    assert torch.isfinite(loss) and loss > 0
    (text,) = pipe.generate(pipe.collate([record], train=False), max_new_tokens=2)
    assert isinstance(text, str)


def test_paligemma_refuses_a_multi_image_record_with_one_line(tmp_path):
    (tmp_path / "two.jsonl").write_text(json.dumps(two_image_record(tmp_path)) + "\n")
    pipe = family_pipeline(build_family("paligemma", tmp_path / "paligemma"))
    with pytest.raises(
        DataError, match=r"^record 'two' has 2 images, but PaliGemma takes one image per prompt"
    ):
        pipe.collate(load_records(str(tmp_path / "two.jsonl")), train=True)


def test_paligemma_refuses_multi_turn_and_text_only_records_with_one_line(own, family_folder):
    """One prefix and one suffix hold one question and its answer: a two-turn record is not cut to its last
    answer, a text-only one is not passed to the processor (which refuses it with a traceback)."""
    pipe = family_pipeline(family_folder("paligemma"))
    two_turns, single, text_only = load_records(str(own / "own.json"))
    with pytest.raises(DataError, match=r"^record 'r0' has 2 turns, but PaliGemma's prefix/suffix format"):
        pipe.collate([two_turns], train=True)
    with pytest.raises(DataError, match=r"^record 'r0' has 2 turns"):
        pipe.collate([two_turns], train=False)
    with pytest.raises(
        DataError, match=r"^record 'r2' has no image, but PaliGemma takes one image per prompt"
    ):
        pipe.collate([text_only], train=True)
    batch = pipe.collate([single], train=True)
    supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert pipe.tokenizer.decode(supervised) == "no, there is none.<eos>"


def paligemma_train(own, family_folder, out, *extra):
    return cli.main(["train", "llava-dora", f"model.name_or_path={family_folder('paligemma')}",
                     "model.dtype=float32", f"data.train={own / 'own.json'}", "data.eval=", "train.max_steps=1",
                     *extra, "--output-dir", str(out), "--quiet"])  # fmt: skip


def test_paligemma_records_it_cannot_take_stop_the_preflight_or_are_skipped_with_a_count(
    own, family_folder, tmp_path, capsys
):
    out = tmp_path / "run"
    assert paligemma_train(own, family_folder, out) == 2
    err = capsys.readouterr().err
    assert "not usable by this model: 2 record(s): 'r0' (record 'r0' has 2 turns" in err
    assert "'r2' (record 'r2' has no image" in err and "Traceback" not in err
    assert not out.exists()
    assert paligemma_train(own, family_folder, out, "data.on_error=skip") == 0
    skipped = json.loads((out / "data_errors.json").read_text())
    assert skipped["skipped"] == 2 and "record 'r0' has 2 turns" in skipped["first_reasons"][0]
    # eval records too, before training: the conversation benchmark would prompt with both of r0's turns
    (own / "single.json").write_text(json.dumps(llava_json()[1:2]))
    argv = [f"data.train={own / 'single.json'}", f"data.eval={own / 'own.json'}"]
    assert paligemma_train(own, family_folder, tmp_path / "run2", *argv) == 2
    err = capsys.readouterr().err
    assert "data.eval: not usable by this model: 2 record(s): 'r0' (record 'r0' has 2 turns" in err
    assert "data.train" not in err.split("\n", 1)[1] and not (tmp_path / "run2").exists()


def test_a_user_error_before_the_first_checkpoint_leaves_no_run_folder(own, model_dir, tmp_path, monkeypatch):
    """config.yaml, data_paths.json and base_model.json are written before training starts: a user error
    after them (here in the first step) removes the run folder this command created."""
    import vlmtune.train.trainer as trainer

    def stop(self, resume_from=None):
        assert (out / "config.yaml").is_file()
        raise DataError("record 'x': broken")

    monkeypatch.setattr(trainer.Trainer, "fit", stop)
    out = tmp_path / "runs" / "run"  # runs/ made by this command too
    argv = ["train", "llava-dora", f"model.name_or_path={model_dir}", f"data.train={own / 'own.json'}",
            "data.eval=", "train.max_steps=1", "--output-dir", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    assert not (tmp_path / "runs").exists()
    (tmp_path / "runs" / "other").mkdir(parents=True)  # a runs/ folder that holds other runs stays
    assert cli.main(argv) == 2
    assert not out.exists() and (tmp_path / "runs" / "other").is_dir()


# ---------------------------------------------------------------- on_error=skip
def write_bad_messages(own: Path) -> Path:
    """own_messages.jsonl plus a bad JSON line, a record without messages' answer field, a missing image."""
    lines = (own / "own_messages.jsonl").read_text().splitlines()
    lines.insert(1, '{"messages": [{"role": "user", "content": "Q"}, ')
    lines.append(json.dumps({"id": "noanswer", "messages": [{"role": "user", "content": "Q"}]}))
    lines.append(json.dumps({"id": "noimage", **as_messages(llava_json()[0]), "images": ["images/gone.png"]}))
    lines.append(json.dumps({"id": "nofield", "task": "vqa", "image": "images/0.png", "question": "Q?"}))
    path = own / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_skip_counts_every_record_problem_and_raise_names_the_first(own, model_dir):
    path = write_bad_messages(own)
    cfg = load_config(
        "llava-dora", [f"model.name_or_path={model_dir}", f"data.train={path}", "data.on_error=skip"]
    )
    from vlmtune.data.records import load_split

    errors = ErrorLog()
    records = load_split(cfg, cfg.data.train, "train", 0, errors)
    assert [r["id"] for r in records] == ["bad.jsonl:1", "bad.jsonl:3", "bad.jsonl:4"]
    reasons = errors.to_dict()["first_reasons"]
    assert errors.count == 4 and len(reasons) == 4
    assert f"{path}:2: not valid JSON" in reasons[0]
    assert f"{path}:5: record 'noanswer' has no assistant turn" in reasons[1]
    assert f"{path}:6: record 'noimage' image '{own / 'images' / 'gone.png'}' not found" in reasons[2]
    assert f"{path}:7: record 'nofield' lacks field 'answers'" in reasons[3]
    cfg.data.on_error = "raise"
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        load_split(cfg, cfg.data.train, "train", 0, ErrorLog())


def tiny_train_args(model_dir: Path, *extra: str) -> list[str]:
    return ["train", "llava-dora", f"model.name_or_path={model_dir}", "adapters.language.r=4",
            "adapters.language.alpha=8", "train.max_steps=2", "train.batch_size=2", "eval.batch_size=2",
            "eval.max_new_tokens=4", "--quiet", *extra]  # fmt: skip


def test_cli_skip_writes_the_skip_list_into_the_run_folder(own, model_dir, tmp_path, capsys):
    path = write_bad_messages(own)
    run = tmp_path / "run"
    argv = tiny_train_args(
        model_dir, f"data.train={path}", "data.eval=", "data.on_error=skip", "--output-dir", str(run)
    )
    assert cli.main(argv) == 0
    skipped = json.loads((run / "data_errors.json").read_text())
    assert skipped["skipped"] == 4 and f"{path}:2" in skipped["first_reasons"][0]
    assert skipped["skipped_at"] == [f"{path}:{n}" for n in (2, 5, 6, 7)]  # every skip, by file and line
    capsys.readouterr()
    argv = tiny_train_args(
        model_dir, f"data.train={path}", "data.eval=", "--output-dir", str(tmp_path / "raise")
    )
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"vlmtune train: error: {path}:2: not valid JSON (")
    assert not (tmp_path / "raise").exists() or not any(
        (tmp_path / "raise").rglob("adapter_model.safetensors")
    )


def test_cli_trains_and_evaluates_on_a_saved_dataset_with_a_column_mapping(
    own, model_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    save_dataset(own, tmp_path / "ds")
    columns = [f"data.columns.{key}={column}" for key, column in COLUMNS.items()]
    run = tmp_path / "run"
    argv = tiny_train_args(model_dir, f"data.train={tmp_path / 'ds'}", f"data.eval={tmp_path / 'ds'}", *columns,
                           "train.eval_at_start=false", "--output-dir", str(run))  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads((run / "eval.json").read_text())
    assert summary["benchmark"] == "conversation" and summary["tuned"]["count"] == 3
    rows = [
        json.loads(line) for line in (run / "eval" / "tuned" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"] and rows[2]["reference"] == "yes"


def test_the_eval_cap_is_said_and_recorded_and_a_later_eval_scores_every_record(
    own, model_dir, tmp_path, monkeypatch, capsys
):
    """``data.max_eval_samples=2`` on a 3-record data.eval: the plan says "2 of 3", eval.json and metrics.json
    record count 2 and the total 3; ``vlmtune eval RUN`` then scores all 3 unless --max-samples is given."""
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    argv = [a for a in tiny_train_args(model_dir) if a != "--quiet"]
    argv += [f"data.train={own / 'own.json'}", f"data.eval={own / 'own.json'}", "data.max_eval_samples=2",
             "train.eval_at_start=false", "--output-dir", str(run)]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "train 3 records, eval 2 of 3 |" in out
    assert "eval: 2 of 3 records (data.max_eval_samples=2; data.max_eval_samples=0 for all)" in out
    summary = json.loads((run / "eval.json").read_text())
    assert (summary["eval_records"], summary["eval_records_total"]) == (2, 3)
    tuned = json.loads((run / "eval" / "tuned" / "metrics.json").read_text())
    assert (tuned["count"], tuned["records_total"]) == (2, 3)

    assert cli.main(["eval", str(run), "--quiet", "--out", str(tmp_path / "all")]) == 0
    assert (
        "eval: all 3 records of the run's data.eval (its data.max_eval_samples=2" in capsys.readouterr().out
    )
    scored = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert (scored["count"], scored["records_total"]) == (3, 3)
    assert cli.main(["eval", str(run), "--quiet", "--max-samples", "1", "--out", str(tmp_path / "one")]) == 0
    assert "eval: 1 of 3 records (--max-samples=1" in capsys.readouterr().out
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["count"] == 1


def test_an_empty_images_list_means_no_image_in_jsonl_json_and_datasets(
    own, model_dir, tmp_path, monkeypatch
):
    """``"images": []`` (LLaMA-Factory / TRL text-only rows) and ``None`` are records without an image, as if the
    key were absent; an image-list column in a datasets folder holds [] for its text-only rows."""
    import datasets

    from vlmtune.data.records import record_images

    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    rows = [as_messages(r, with_id=True) for r in llava_json(f"{own}/images/")]
    rows[2]["images"] = []  # r2: text-only
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "e.json").write_text(json.dumps([*rows[:2], {**rows[2], "images": None}]))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    for spec in ("e.jsonl", "e.json", "ds"):
        records = load_records(str(tmp_path / spec))
        assert [len(record_images(r)) for r in records] == [1, 1, 0], spec
        assert "images" not in records[2] and "image" not in records[2]
    pipe = build_pipeline(load_config("llava-dora", [f"model.name_or_path={model_dir}"]))
    batch = pipe.collate(records[2:], train=True)
    assert int((batch["input_ids"] == pipe.image_token_id).sum()) == 0 and (batch["labels"] != -100).any()


def test_image_url_data_urls_are_decoded_and_http_urls_refused_without_the_payload(tmp_path, monkeypatch):
    """OpenAI-style ``image_url`` parts (and ``images`` strings) holding ``data:image/png;base64,...`` are
    decoded into $VLMTUNE_CACHE/dataset-images; an http(s) URL or bad base64 is one line that names the record
    and never prints the data."""
    import base64

    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "cache"))
    (png,) = write_images(tmp_path, 1)
    payload = base64.b64encode(png.read_bytes()).decode()
    url = f"data:image/png;base64,{payload}"

    def row(rid: str, image: str, as_part: bool = True) -> dict:
        part = {"type": "image_url", "image_url": {"url": image}} if as_part else {"type": "image"}
        return {"id": rid, "messages": [{"role": "user", "content": [{"type": "text", "text": "Q?"}, part]},
                                        {"role": "assistant", "content": "A"}],
                **({} if as_part else {"images": [image]})}  # fmt: skip

    (tmp_path / "ok.jsonl").write_text(
        json.dumps(row("p", url)) + "\n" + json.dumps(row("l", url, False)) + "\n"
    )
    for record in load_records(str(tmp_path / "ok.jsonl")):
        assert Path(record["image"]).read_bytes() == png.read_bytes()
        assert Path(record["image"]).parent == tmp_path / "cache" / "dataset-images"
    for rid, image, message in [
        ("h", "https://example.com/cat.png", r"record 'h' messages turn 1 part 2: image 'https://example.com/cat.png' "
                                             r"is an http\(s\) URL; vlmtune reads local files"),
        ("b", "data:image/png;base64,@@" + payload, r"record 'b' .*image data: URL \(data:image/png;base64, "
                                                    rf"{len(payload) + 2:,} characters\) is not valid base64$"),
    ]:  # fmt: skip
        (tmp_path / "bad.jsonl").write_text(json.dumps(row(rid, image)) + "\n")
        with pytest.raises(DataError, match=message) as caught:
            load_records(str(tmp_path / "bad.jsonl"))
        assert payload[:40] not in str(caught.value) and len(str(caught.value).splitlines()) == 1
