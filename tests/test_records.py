"""JSONL / LLaVA-JSON reading: validation messages name file, line and key; the skip policy counts."""

import json
from pathlib import Path

import pytest

from vlmtune.data.errors import DataError, ErrorLog
from vlmtune.data.records import (
    RecordDataset,
    load_records,
    read_classification,
    read_jsonl,
    read_llava_json,
    read_records,
)
from vlmtune.data.shapes import SHAPES_VERSION

GOOD = {"id": "a", "task": "vqa", "image": "img/a.png", "question": "What?", "answers": ["red"] * 10}


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_reads_and_resolves_images(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD, "", {**GOOD, "id": 7, "image": "/abs/b.png"}])
    recs = read_jsonl(p)
    assert [r["id"] for r in recs] == ["a", "7"]
    assert recs[0]["image"] == str(tmp_path / "img/a.png")
    assert recs[1]["image"] == "/abs/b.png"
    assert read_jsonl(p, image_root="/data")[0]["image"] == "/data/img/a.png"


def test_malformed_json_line(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD, '{"id": "b", "task": "vqa",'])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert str(e.value).startswith(f"{p}:2: not valid JSON (")


def test_missing_field_for_task(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "answers"}
    p = write_lines(tmp_path / "d.jsonl", [{**bad, "id": "q1"}])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert str(e.value) == f"{p}:1: record 'q1' lacks field 'answers' (or 'answer') needed for task vqa"
    p = write_lines(tmp_path / "c.jsonl", [{"id": "c1", "task": "caption", "image": "x.png"}])
    with pytest.raises(
        DataError,
        match=r"c.jsonl:1: record 'c1' lacks field 'captions' \(or 'caption'\) needed for task caption",
    ):
        read_jsonl(p)


def test_custom_required_fields(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(
        DataError, match=r"d.jsonl:1: record 'a' lacks field 'answer_type' needed for task vqa"
    ):
        read_jsonl(p, required_fields_by_task={"vqa": (("answers",), ("answer_type",))})


def test_missing_id_duplicate_id_bad_types(tmp_path):
    no_id = {k: v for k, v in GOOD.items() if k != "id"}
    p = write_lines(tmp_path / "d.jsonl", [GOOD, no_id])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert str(e.value) == f"{p}:2: record lacks field 'id' (every record needs a unique id)"
    p = write_lines(tmp_path / "e.jsonl", [GOOD, GOOD])
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert str(e.value) == f"{p}:2: duplicate id 'a' (first at {p}:1); ids must be unique"
    p = write_lines(tmp_path / "f.jsonl", [{**GOOD, "answers": "red"}])
    with pytest.raises(
        DataError, match=r"f.jsonl:1: record 'a' field 'answers' must be a non-empty list of strings"
    ):
        read_jsonl(p)
    p = write_lines(tmp_path / "g.jsonl", [{**GOOD, "task": "vqa2"}])
    with pytest.raises(
        DataError, match=r"g.jsonl:1: record 'a' has unknown task 'vqa2'; use one of vqa, caption"
    ):
        read_jsonl(p)
    p = write_lines(tmp_path / "h.jsonl", [[1, 2]])
    with pytest.raises(DataError, match=r"h.jsonl:1: expected a JSON object, got list"):
        read_jsonl(p)
    box = {
        "id": "g",
        "task": "grounding",
        "image": "x.png",
        "boxes": [{"label": "red circle", "bbox": [1, 2, 3]}],
    }
    p = write_lines(tmp_path / "i.jsonl", [box])
    with pytest.raises(DataError, match=r"i.jsonl:1: record 'g' field 'boxes' must be a non-empty list of"):
        read_jsonl(p)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError) as e:
        read_jsonl(tmp_path / "empty.jsonl")
    assert (
        str(e.value)
        == f"{tmp_path / 'empty.jsonl'}: empty file (no records); check the path or regenerate the data"
    )
    with pytest.raises(DataError, match=r"data file '.*nope.jsonl' not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_jsonl(tmp_path)


def test_skip_policy_counts_and_writes(tmp_path):
    lines = [GOOD, "not json", {**GOOD, "id": "b"}, {**GOOD, "id": "c", "answers": []}, GOOD, {"task": "vqa"}]
    p = write_lines(tmp_path / "d.jsonl", lines)
    errors = ErrorLog(max_reasons=2)
    recs = read_jsonl(p, on_error="skip", errors=errors)
    assert [r["id"] for r in recs] == ["a", "b"]
    assert errors.count == 4 and len(errors.reasons) == 2
    assert errors.reasons[0].startswith(f"{p}:2: not valid JSON")
    assert errors.reasons[1].startswith(f"{p}:4: record 'c' field 'answers'")
    assert errors.summary() == f"skipped 4 bad record(s); first: {errors.reasons[0]}"
    out = errors.write(tmp_path / "run" / "data_errors.json")
    assert json.loads(out.read_text()) == {
        "skipped": 4,
        "first_reasons": errors.reasons,
        "skipped_at": [f"{p}:{n}" for n in (2, 4, 5, 6)],
    }
    with pytest.raises(DataError, match="data.on_error must be one of raise, skip"):
        read_jsonl(p, on_error="ignore", errors=errors)


def test_skip_policy_everything_bad(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", ["x", "y"])
    with pytest.raises(
        DataError, match=r"d.jsonl: no valid records \(2 skipped; first: .*d.jsonl:1: not valid JSON"
    ):
        read_jsonl(p, on_error="skip")


def test_llava_conversation_json(tmp_path):
    data = [
        {
            "id": "000001",
            "image": "coco/1.jpg",
            "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}],
        },
        {
            "id": "000002",
            "conversations": [{"from": "human", "value": "text only"}, {"from": "gpt", "value": "ok"}],
        },
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    recs = read_records(tmp_path / "llava.json", image_root=tmp_path / "imgs")
    assert [r["task"] for r in recs] == ["conversation", "conversation"]
    assert recs[0]["image"] == str(tmp_path / "imgs/coco/1.jpg") and "image" not in recs[1]
    (tmp_path / "bad.json").write_text(
        json.dumps([data[0], {"id": "x", "conversations": [{"from": "bot", "value": 1}]}])
    )
    with pytest.raises(
        DataError,
        match=r"bad.json:item 1: record 'x' conversations turn 1 has from 'bot'; use human/gpt/system "
        r"\(or user/assistant\)$",
    ):
        read_llava_json(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(DataError, match="expected a JSON list of records"):
        read_records(tmp_path / "obj.json")


def test_load_records_shapes_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path))
    recs = load_records("shapes:vqa,caption", split="val", n_images=6)
    assert len(recs) == 6 * 5 + 6
    assert Path(recs[0]["image"]).is_absolute() and Path(recs[0]["image"]).is_file()
    assert len(load_records("shapes:vqa,caption", split="val", n_images=6, tasks=["caption"])) == 6
    assert len(load_records("shapes:vqa", split="val", n_images=6, max_samples=4)) == 4
    ds = RecordDataset(recs, transform=lambda r: r["id"])
    assert len(ds) == 36 and ds[0] == "shapes-val-000000-q0"
    vqa = tmp_path / "shapes" / SHAPES_VERSION / "val-6" / "vqa.jsonl"
    with pytest.raises(DataError, match="also appears in another data file"):
        load_records(f"{vqa},{vqa}")


def test_load_records_image_root_and_check_images(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path))
    recs = load_records("shapes:vqa@val", n_images=2, image_root="/elsewhere")  # ignored for generated data
    assert Path(recs[0]["image"]).is_file()
    p = write_lines(tmp_path / "d.jsonl", [GOOD])
    assert load_records(str(p), image_root="/data")[0]["image"] == "/data/img/a.png"
    with pytest.raises(DataError) as e:
        load_records(str(p), check_images=True)
    assert (
        str(e.value) == f"{p}:1: record 'a' image '{tmp_path / 'img/a.png'}' not found; check data.image_root"
    )
    errors = ErrorLog()
    p2 = write_lines(tmp_path / "e.jsonl", [GOOD, {**GOOD, "id": "b", "image": "/abs.png"}])
    (tmp_path / "img").mkdir()
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "img/a.png")  # check_images decodes each image
    assert [r["id"] for r in load_records(str(p2), check_images=True, on_error="skip", errors=errors)] == [
        "a"
    ]
    assert errors.count == 1 and "image '/abs.png' not found" in errors.reasons[0]


def test_utf8_bom_and_bad_bytes(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert read_jsonl(p)[0]["id"] == "a"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=r"bom.jsonl:2: not UTF-8 text \(invalid start byte at byte 8\)"):
        read_jsonl(p)


def test_a_json_list_with_a_bom_reads_like_one_without(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert read_records(p, task=None) == read_jsonl(write_lines(tmp_path / "same.jsonl", [GOOD]))
    p.write_bytes(b'[{"id": "\xff"}]')
    with pytest.raises(DataError, match=r"bom.json: not UTF-8 text \(invalid start byte at byte 9\)$"):
        read_records(p)


def test_a_classify_line_that_is_not_an_object_is_one_line(tmp_path):
    p = write_lines(tmp_path / "c.jsonl", [{"label": 1, "image": "a.png"}, [1, 2]])
    with pytest.raises(DataError) as err:
        read_classification(str(p))
    assert str(err.value) == f"{p}:2: a classify record needs an integer 'label' and an 'image', got [1, 2]"


def test_json_lines_named_json_and_an_image_that_is_a_folder_say_what_to_do(tmp_path):
    p = tmp_path / "lines.json"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DataError, match=r"lines.json: not valid JSON \(Extra data: line 2 column 1 .*\); it holds "
                       r"one record a line \(JSON Lines\): name it .jsonl$"):  # fmt: skip
        read_records(p)
    p.write_text("[" + json.dumps(GOOD) + "]\n]")  # other extra data: no such hint
    with pytest.raises(DataError, match=r"lines.json: not valid JSON \(Extra data: line 2 column 1 .*\)$"):
        read_records(p)
    (tmp_path / "img" / "a.png").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        read_jsonl(write_lines(tmp_path / "d.jsonl", [GOOD]), check_images=True)
    assert str(err.value).endswith(
        f":1: record 'a' image '{tmp_path / 'img/a.png'}' is a folder, not an image file; check data.image_root"
    )
