"""Synthetic shapes dataset: determinism, annotation correctness, cache, data specs."""

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmtune.data.errors import DataError
from vlmtune.data.shapes import (
    CLASSES,
    COLORS,
    SHAPES,
    SHAPES_VERSION,
    generate_shapes,
    shapes_dataset,
)
from vlmtune.data.spec import spec_paths


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    return generate_shapes(tmp_path_factory.mktemp("shapes"), 40, split="train", seed=0)


def test_identical_bytes_for_identical_arguments(tmp_path):
    a = generate_shapes(tmp_path / "a", 12, split="val", seed=3)
    generate_shapes(tmp_path / "b", 12, split="val", seed=3)
    assert set(a) == {"vqa", "caption", "vqg", "chat", "grounding", "locate", "classify"}
    assert tree_hash(tmp_path / "a") == tree_hash(tmp_path / "b")
    # pinned: if this changes on purpose, bump SHAPES_VERSION (cached datasets are keyed by it)
    # (chat, added in cache v3 and rewritten in v4, is pinned on its own: the other files kept
    # their v2 bytes through both; locate came in v5 and changed no other file)
    text = hashlib.sha256(
        b"".join(a[t].read_bytes() for t in sorted(a) if t not in ("chat", "locate"))
    ).hexdigest()
    assert text == "811f1320bb96c33e6e300c440036918bb8413404a9da233c1887b7509cf71187"
    chat = hashlib.sha256(a["chat"].read_bytes()).hexdigest()
    assert chat == "7f394799a915204aade0c8c6c4024df2ba8c7652bdfb2c5701c91e612856d4ce"
    c = generate_shapes(tmp_path / "c", 12, split="test", seed=3)
    assert c["vqa"].read_bytes() != a["vqa"].read_bytes()  # splits differ
    assert (tmp_path / "a/images/val-000000.png").read_bytes() != (
        tmp_path / "c/images/test-000000.png"
    ).read_bytes()


def test_prefix_stable_when_n_grows(tmp_path):
    a = read(generate_shapes(tmp_path / "a", 5, tasks=["vqa"])["vqa"])
    b = read(generate_shapes(tmp_path / "b", 9, tasks=["vqa"])["vqa"])
    assert b[: len(a)] == a


def test_vqa_records(small):
    recs = read(small["vqa"])
    assert len(recs) == 40 * 5
    assert len({r["id"] for r in recs}) == len(recs)
    types = Counter(r["answer_type"] for r in recs)
    assert set(types) == {"yes/no", "number", "other"}
    for r in recs:
        assert len(r["answers"]) == 10
        assert sum(a == r["answer"] for a in r["answers"]) >= 7  # mostly the same answer
        assert (
            sum(
                a.lower().strip(".").removeprefix("a ") in (r["answer"], "one", "two", "three")
                for a in r["answers"]
            )
            >= 9
        )
        assert r["answer"] == r["answer"].lower() and " " not in r["answer"]  # single word
        assert (Path(small["vqa"]).parent / r["image"]).is_file()


def test_vqa_answers_match_the_scene(small):
    captions = {r["image"]: r for r in read(small["caption"])}
    for r in read(small["vqa"]):
        objects = captions[r["image"]]["meta"]["objects"]  # "red circle", ...
        q, a = r["question"], r["answer"]
        if q == "How many shapes are there?":
            assert a == str(len(objects))
        elif q.startswith("What color is the ") and "shape on" not in q:
            shape = q.removeprefix("What color is the ").rstrip("?")
            assert f"{a} {shape}" in objects
        elif q.startswith("Is there a "):
            assert a == ("yes" if q.removeprefix("Is there a ").rstrip("?") in objects else "no")
        elif q.startswith("What shape is ") and " on the " not in q:
            color = q.removeprefix("What shape is ").rstrip("?")
            assert f"{color} {a}" in objects


def test_answer_variants_exist(tmp_path):
    recs = read(generate_shapes(tmp_path, 200, tasks=["vqa"])["vqa"])
    variants = {a for r in recs for a in r["answers"] if a != r["answer"]}
    assert {"two", "three", "Yes", "no.", "red.", "Blue", "a triangle"} <= variants
    wrong = [
        r
        for r in recs
        if sum(
            a.lower().strip(".").removeprefix("a ") not in (r["answer"], "one", "two", "three")
            for a in r["answers"]
        )
    ]
    assert 0.03 < len(wrong) / len(recs) < 0.2  # occasional disagreeing annotator


def test_boxes_match_drawn_pixels(small):
    root = Path(small["grounding"]).parent
    for r in read(small["grounding"]):
        image = np.asarray(Image.open(root / r["image"]).convert("RGB"))
        (box,) = r["boxes"]
        x1, y1, x2, y2 = box["bbox"]
        assert 0 <= x1 < x2 <= r["meta"]["width"] and 0 <= y1 < y2 <= r["meta"]["height"]
        color = COLORS[box["label"].split()[0]]
        assert tuple(image[(y1 + y2) // 2, (x1 + x2) // 2]) == color  # centre pixel has the shape colour
        ys, xs = np.nonzero((image == color).all(-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # tight box


def test_caption_and_vqg_and_classify(small):
    caps = read(small["caption"])
    assert len(caps) == 40 and all(len(c["captions"]) == 5 for c in caps)
    for c in caps:
        assert c["captions"][0] == " and ".join(
            ", ".join(f"a {o}" for o in [b["label"] for b in c["boxes"]]).rsplit(", ", 1)
        )
    assert all(r["answer_type"] != "yes/no" for r in read(small["vqg"]))
    cls = read(small["classify"])
    assert len(cls) == 40
    root = Path(small["classify"]).parent
    for r in cls[:10]:
        assert CLASSES[r["label"]] == r["meta"]["label_name"]
        assert SHAPES[r["meta"]["shape_label"]] == r["meta"]["shape"]
        x1, y1, x2, y2 = r["boxes"][0]["bbox"]
        pixel = Image.open(root / r["image"]).getpixel(((x1 + x2) // 2, (y1 + y2) // 2))
        assert pixel == COLORS[r["meta"]["color"]]


def test_locate_is_single_shape_grounding_with_medium_and_large_shapes(small):
    loc = read(small["locate"])
    root = Path(small["locate"]).parent
    assert len(loc) == 40 and len({r["image"] for r in loc}) == 40
    sides = []
    for r in loc:
        assert r["task"] == "grounding" and r["id"].startswith("shapes-train-loc-") and len(r["boxes"]) == 1
        (box,) = r["boxes"]
        assert r["meta"] == {"width": 64, "height": 64, "objects": [box["label"]]}
        x1, y1, x2, y2 = box["bbox"]
        sides.append(x2 - x1)
        image = np.asarray(Image.open(root / r["image"]).convert("RGB"))
        ys, xs = np.nonzero((image == COLORS[box["label"].split()[0]]).all(-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # tight box
    assert min(sides) >= 6 and max(sides) <= 23
    assert 0 < sum(s * s < 0.03 * 64 * 64 for s in sides) < 40  # some COCO-medium, some large


def test_cache_generates_once_and_is_concurrency_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(shapes_dataset("vqa", "val", 8))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3
    path = results[0]
    assert path == tmp_path / "shapes" / SHAPES_VERSION / "val-8" / "vqa.jsonl"
    assert len(read(path)) == 40
    assert [p.name for p in path.parent.parent.iterdir()] == ["val-8"]  # no temp folders left
    mtime = path.stat().st_mtime_ns
    assert shapes_dataset("vqa", "val", 8) == path and path.stat().st_mtime_ns == mtime


def test_spec_paths_generate_shapes_files_and_check_user_files(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path))
    paths = spec_paths("shapes:vqa,caption@test", n_images=4)
    assert [p.name for p in paths] == ["vqa.jsonl", "caption.jsonl"]
    assert paths[0].parent.name == "test-4"
    with pytest.raises(DataError, match="unknown shapes task 'vq'; use one of vqa"):
        spec_paths("shapes:vq", n_images=4)
    with pytest.raises(DataError, match="unknown shapes split 'dev'"):
        spec_paths("shapes:vqa@dev", n_images=4)
    with pytest.raises(DataError, match="data file 'nope.jsonl' not found"):
        spec_paths("nope.jsonl")
    assert spec_paths(str(paths[0])) == [paths[0]]


def test_two_thousand_images_each_get_their_own_file_and_questions(tmp_path):
    # generation speed is measured by benchmarks, not asserted here
    generate_shapes(tmp_path, 2000, tasks=["vqa"])
    records = [json.loads(line) for line in (tmp_path / "vqa.jsonl").read_text().splitlines()]
    images = {r["image"] for r in records}
    assert len(images) == 2000 and all((tmp_path / image).is_file() for image in images)
    assert len({r["id"] for r in records}) == len(records)


def test_make_shapes_script(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "data_prep" / "make_shapes.py"
    spec = importlib.util.spec_from_file_location("make_shapes", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    main = module.main

    assert main(["--out", str(tmp_path / "s"), "--n", "3", "--split", "test", "--tasks", "vqa,caption"]) == 0
    lines = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    assert lines == [["vqa", "15", "records"], ["caption", "3", "records"], ["images", "3", "png"]]
    assert read(tmp_path / "s" / "vqa.jsonl")[0]["id"] == "shapes-test-000000-q0"
    assert main(["--out", str(tmp_path / "t"), "--n", "3", "--tasks", "vqa,foo"]) == 2
    assert "unknown shapes task 'foo'" in capsys.readouterr().err


@pytest.mark.parametrize("size", [32, 160])
def test_other_image_sizes(tmp_path, size):
    paths = generate_shapes(tmp_path, 6, image_size=size, tasks=["grounding"])
    for r in read(paths["grounding"]):
        image = np.asarray(Image.open(tmp_path / r["image"]).convert("RGB"))
        assert image.shape == (size, size, 3) and r["meta"]["width"] == size
        x1, y1, x2, y2 = r["boxes"][0]["bbox"]
        ys, xs = np.nonzero((image == COLORS[r["boxes"][0]["label"].split()[0]]).all(-1))
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)


def test_unwritable_cache_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path / "file"))
    with pytest.raises(
        DataError,
        match=rf"cannot write the shapes cache in .*file/shapes/{SHAPES_VERSION} \(.*\); set VLMTUNE_CACHE",
    ):
        shapes_dataset("vqa", "val", 2)


def test_patch_labels_mark_the_cells_a_shape_covers():
    from vlmtune.data.shapes import patch_labels

    scene = [
        {"shape": "square", "color": "red", "bbox": [0, 0, 16, 16]},  # exactly cells (0,0),(0,1),(1,0),(1,1)
        {"shape": "circle", "color": "blue", "bbox": [40, 40, 64, 64]},
    ]
    grid = np.array(patch_labels(scene, 64, 8)).reshape(8, 8)
    red_square, blue_circle = 1 + CLASSES.index("red square"), 1 + CLASSES.index("blue circle")
    assert (grid[:2, :2] == red_square).all()
    assert grid[6, 6] == blue_circle and grid[5, 5] == blue_circle
    assert grid[0, 2] == 0 and grid[3, 3] == 0 and grid[7, 0] == 0
    assert set(np.unique(grid)) == {0, red_square, blue_circle}
    # a grid that does not divide the image (VL-BART's 6x6 over 64 px) still labels every cell
    assert len(patch_labels(scene, 64, 6)) == 36


def test_scene_targets_read_the_scene():
    from vlmtune.data.shapes import SCENE_SLOTS, scene_targets

    scene = [
        {"shape": "circle", "color": "red", "bbox": [2, 2, 14, 14]},
        {"shape": "triangle", "color": "yellow", "bbox": [40, 30, 60, 50]},
    ]
    got = dict(zip([name for name, _ in SCENE_SLOTS], scene_targets(scene)))
    colors = list(COLORS)
    assert got["count"] == 1
    assert got["color_of_circle"] == colors.index("red")
    assert got["color_of_square"] == len(COLORS)  # absent
    assert got["shape_of_yellow"] == SHAPES.index("triangle")
    assert got["shape_of_green"] == len(SHAPES)
    assert (got["left_color"], got["left_shape"]) == (colors.index("red"), SHAPES.index("circle"))
    assert (got["right_color"], got["right_shape"]) == (colors.index("yellow"), SHAPES.index("triangle"))
    assert all(0 <= got[name] < n for name, n in SCENE_SLOTS)


def test_chat_answers_the_vqa_questions_answer_first_then_why(tmp_path):
    from vlmtune.data.shapes import explained_answer
    from vlmtune.data.templates import VQA_PROMPT

    assert explained_answer("How many shapes are there?", "1", "number") == "1. I can see 1 shape."
    assert explained_answer("How many shapes are there?", "3", "number") == "3. I can see 3 shapes."
    assert explained_answer("What color is the circle?", "red", "other") == "red. The circle is red."
    assert explained_answer("What shape is blue?", "square", "other") == (
        "square. The blue shape is a square."
    )
    assert explained_answer("What shape is on the left?", "square", "other") == (
        "square. The shape on the left is a square."
    )
    assert explained_answer("What color is the shape on the right?", "green", "other") == (
        "green. The shape on the right is green."
    )
    assert explained_answer("Is there a red circle?", "yes", "yes/no") == "yes. There is a red circle."
    assert explained_answer("Is there a red circle?", "no", "yes/no") == "no. There is no red circle."

    paths = generate_shapes(tmp_path, 30, tasks=["chat", "vqa", "caption"])
    chats, vqa, caps = read(paths["chat"]), read(paths["vqa"]), read(paths["caption"])
    assert len(chats) == 30
    first_questions = set()  # a fixed question order would be learned: the first question varies
    for chat, cap in zip(chats, caps):
        assert chat["task"] == "conversation" and chat["image"] == cap["image"]
        turns = chat["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 5
        assert turns[0]["value"].startswith("<image>\n") and "<image>" not in "".join(
            t["value"] for t in turns[1:]
        )
        # the image's own VQA questions, shuffled, each with VQA's instruction; the gold answer
        # comes first, so VQA's normalisation of the whole reply never equals it
        gold = {r["question"]: r["answer"] for r in vqa if r["image"] == cap["image"]}
        asked = [q["value"].removeprefix("<image>\n") for q in turns[::2]]
        assert sorted(asked) == sorted(f"{q}\n{VQA_PROMPT}" for q in gold)
        for q, a in zip(asked, turns[1::2]):
            answer = gold[q.split("\n")[0]]
            assert a["value"].startswith(answer + ". ")
            assert a["value"].rstrip(".").lower() != answer
        first_questions.add(asked[0].split("\n")[0].split()[0])
        objects = {b["label"] for b in cap["boxes"]}
        for q, a in zip(turns[::2], turns[1::2]):
            question = q["value"].removeprefix("<image>\n").split("\n")[0]
            if question == "How many shapes are there?":
                assert a["value"].startswith(f"{len(objects)}. ")
            elif question.startswith("What color is the ") and "shape on" not in question:
                shape = question.removeprefix("What color is the ").rstrip("?")
                (color,) = [o.split()[0] for o in objects if o.endswith(shape)]
                assert a["value"] == f"{color}. The {shape} is {color}."
            elif question.startswith("Is there a "):
                thing = question.removeprefix("Is there a ").rstrip("?")
                assert a["value"].startswith("yes." if thing in objects else "no.")
    assert first_questions == {"How", "What", "Is"}
