"""NLVR2 benchmark, the shapes NLVR task and the shapes-vl multi-task benchmark."""

from __future__ import annotations

import pytest

from vlmtune.data.errors import DataError
from vlmtune.data.shapes_nlvr import shapes_nlvr_records
from vlmtune.eval.benchmarks import get_benchmark
from vlmtune.eval.errors import EvalError
from vlmtune.eval.nlvr2 import parse_true_false, score_nlvr2, score_shapes_vl
from vlmtune.eval.runner import _row


def caption_records(n: int = 12) -> list[dict]:
    objs = [
        ["red circle"],
        ["blue square", "green triangle"],
        ["yellow circle", "red square", "blue triangle"],
    ]
    return [
        {"id": f"c{i}", "task": "caption", "image": f"/img/{i}.png", "meta": {"objects": objs[i % 3]}}
        for i in range(n)
    ]


def test_parse_and_score_nlvr2() -> None:
    assert [parse_true_false(t) for t in ("True.", " false", "yes it is", "no", "maybe")] == [
        "true", "false", "true", "false", "maybe",
    ]  # fmt: skip
    bench = get_benchmark("nlvr2")
    recs = [{"id": "a", "task": "nlvr", "images": ["x", "y"], "sentence": "s", "answer": True},
            {"id": "b", "task": "nlvr", "images": ["x", "y"], "sentence": "s", "answer": "false"}]  # fmt: skip
    rows = [_row(bench, r, t) for r, t in zip(recs, ["true", "True"])]
    assert score_nlvr2(rows) == {"accuracy": 50.0, "count": 2}
    with pytest.raises(EvalError, match="true/false"):
        _row(bench, {**recs[0], "answer": "left"}, "true")


def test_shapes_nlvr_pairs_are_balanced_and_correct() -> None:
    caps = caption_records()
    by_image = {c["image"]: set(c["meta"]["objects"]) for c in caps}
    recs = shapes_nlvr_records(caps, 200, seed=1)
    assert len({r["id"] for r in recs}) == 200 and recs == shapes_nlvr_records(caps, 200, seed=1)
    assert sum(r["answer"] == "true" for r in recs) == 100
    for r in recs:
        left, right = (by_image[p] for p in r["images"])
        s = r["sentence"]
        if s.startswith("the left image has a ") or s.startswith("the right image has a "):
            objs = left if "left" in s else right
            assert (s.split(" has a ")[1] in objs) == (r["answer"] == "true"), r
        elif s.startswith("both images have a "):
            t = s.rsplit(" ", 1)[1]
            has = any(o.endswith(t) for o in left) and any(o.endswith(t) for o in right)
            assert has == (r["answer"] == "true"), r
        else:
            assert (len(left) > len(right)) == (r["answer"] == "true"), r
    with pytest.raises(DataError, match="meta.objects"):
        shapes_nlvr_records([{"id": "x", "image": "a"}, {"id": "y", "image": "b"}], 2)


def test_shapes_vl_scores_each_task_on_its_own_records() -> None:
    bench = get_benchmark("shapes-vl")
    recs = [
        {"id": "q1", "task": "vqa", "question": "color?", "answers": ["red"] * 10},
        {"id": "q2", "task": "vqa", "question": "shape?", "answers": ["circle"] * 10},
        {"id": "c1", "task": "caption", "captions": ["a red circle", "a red circle"]},
        {"id": "n1", "task": "nlvr", "images": ["a", "b"], "sentence": "s", "answer": "true"},
    ]
    rows = [_row(bench, r, t) for r, t in zip(recs, ["red", "square", "a red circle", "no"])]
    m = score_shapes_vl(rows, caption_metrics=("cider",), tokenizer="simple")
    assert m["accuracy"] == 50.0 and m["nlvr_accuracy"] == 0.0
    assert m["per_task_count"] == {"vqa": 2, "caption": 1, "nlvr": 1} and m["count"] == 4
    assert "CIDEr" in m


def test_a_saved_vlbart_folder_is_evaluated_by_the_vlbart_pipeline() -> None:
    """`vlmtune eval --model FOLDER` on a VL-BART folder (vlmtune merge writes vlbart.json) picks the VL-BART
    pipeline, not the LLaVA-style one (which said "model_type 'bart' is not a supported VLM family")."""
    from pathlib import Path

    import vlmtune
    from vlmtune.eval.command import merged_pipeline

    assets = Path(vlmtune.__file__).parent / "assets"
    assert merged_pipeline(assets / "vlbart-shapes-tiny") == "vlbart"
    assert merged_pipeline(assets / "shapes-tiny") is None
