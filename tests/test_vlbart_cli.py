"""``vlmtune train vlbart-*`` on own data (round-5 user report): records VL-BART has no prompt for are refused
by the preflight, before the base evaluation, and shapes-vl does not score them silently as "no metric"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune import cli
from vlmtune.presets.vlbart_shapes_tiny import build_random_vlbart

QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_random_vlbart(tmp_path_factory.mktemp("vlbart") / "tiny")


def write_records(path: Path, records: list[dict]) -> Path:
    """``records`` as JSONL at ``path``, each on the image ``img.png`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (220, 40, 40)).save(path.parent / "img.png")
    path.write_text("".join(json.dumps({"image": "img.png", **r}) + "\n" for r in records))
    return path


def vqa(rid: str, answers: list[str]) -> dict:
    return {"id": rid, "task": "vqa", "question": QUESTION, "answers": answers}


def mcq(rid: str) -> dict:
    return {"id": rid, "task": "mcq", "question": QUESTION, "choices": ["red", "green"], "answer": 0}


def conversation(rid: str) -> dict:
    turns = [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "red"}]
    return {"id": rid, "conversations": turns}


def train(tiny_folder, run: Path, *overrides: str) -> int:
    common = [f"model.name_or_path={tiny_folder}", "train.max_steps=1", "train.batch_size=2"]
    return cli.main(["train", "vlbart-dora", *common, *overrides, "--output-dir", str(run), "--quiet"])


@pytest.mark.parametrize("record", [mcq, conversation])
def test_records_vlbart_has_no_prompt_for_are_refused_before_the_base_evaluation(
    tiny_folder, tmp_path, capsys, record
) -> None:
    """mcq trained on 'mcq: question' with the raw index as target; conversations ran the base evaluation, then
    a traceback ("no answer, answers or captions to train on")."""
    data = write_records(tmp_path / "d" / "train.jsonl", [record("r0"), record("r1"), vqa("q0", ["red"])])
    evals = write_records(tmp_path / "d" / "val.jsonl", [vqa("q1", ["red"])])
    run = tmp_path / "run"
    assert train(tiny_folder, run, f"data.train={data}", f"data.eval={evals}") == 2
    err = capsys.readouterr().err
    task = record("x").get("task", "conversation")
    assert f"record 'r0' is a {task} record, but VL-BART trains and answers only vqa, nlvr, caption" in err
    assert "2 record(s)" in err and "Traceback" not in err and not run.exists()
    assert train(tiny_folder, run, f"data.train={data}", f"data.eval={evals}", "data.on_error=skip") == 0
    assert json.loads((run / "eval.json").read_text())["tuned"]["count"] == 1  # trained on q0 only


def test_shapes_vl_refuses_eval_records_it_does_not_score(tiny_folder, tmp_path, capsys) -> None:
    """``shapes-vl`` scores vqa / caption / nlvr: an mcq eval record printed "shapes-vl: no metric"."""
    evals = write_records(tmp_path / "d" / "val.jsonl", [mcq("m0"), vqa("q1", ["red"])])
    argv = [
        "eval",
        "shapes-vl",
        "--model",
        str(tiny_folder),
        "--data",
        str(evals),
        "--out",
        str(tmp_path / "e"),
    ]
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "record 'm0' is a mcq record; shapes-vl scores vqa, caption, nlvr records" in err
