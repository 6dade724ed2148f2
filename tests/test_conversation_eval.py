"""The ``conversation`` benchmark: SQuAD-normalised exact match and token F1 on the last answer, the
per-token loss of every answer, chosen by default for conversation data, end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_own_data import llava_json, write_images

from vlmtune import cli
from vlmtune.core.config import load_config
from vlmtune.data.collate import IGNORE_INDEX
from vlmtune.data.records import load_records
from vlmtune.eval.benchmarks import get_benchmark
from vlmtune.eval.conversation import (
    answer_loss,
    benchmark_for,
    exact_match,
    normalize_answer,
    score_conversation,
    token_f1,
)
from vlmtune.eval.errors import EvalError
from vlmtune.models import build_pipeline


def test_squad_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  Red, circle!") == "red circle"
    assert normalize_answer("An apple a day") == "apple day"
    assert exact_match("The red circle.", "red circle") == 1.0
    assert exact_match("red", "red circle") == 0.0
    # prediction "red circle big" vs reference "the red circle": common 2, P = 2/3, R = 2/2 -> F1 = 0.8
    assert token_f1("red circle big", "the red circle") == pytest.approx(0.8)
    # repeated tokens count once per occurrence: "red red" vs "red": common 1, P = 1/2, R = 1 -> 2/3
    assert token_f1("red red", "red") == pytest.approx(2 / 3)
    assert token_f1("blue", "red") == 0.0 and token_f1("", "") == 0.0  # as SQuAD's f1_score


def test_score_means_in_percent_and_rows_keep_their_values():
    rows = [
        {"id": "a", "prediction": "Red.", "reference": "red"},
        {"id": "b", "prediction": "red circle big", "reference": "the red circle"},
    ]
    metrics = score_conversation(rows)
    assert metrics == {"exact_match": 50.0, "f1": 90.0, "count": 2}
    assert (rows[0]["exact_match"], rows[1]["f1"]) == (1.0, pytest.approx(0.8))


def test_reference_is_the_last_answer_and_the_prompt_is_the_history():
    bench = get_benchmark("conversation")
    record = {"id": "r", "task": "conversation", "conversations": [
        {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}  # fmt: skip
    assert bench.references(record) == {"reference": "A2"}
    assert bench.prompt(record) == ""  # empty: the pipeline renders the record's own turns up to A2
    with pytest.raises(EvalError, match="record 'x' has no assistant turn"):
        bench.references({"id": "x", "conversations": [{"from": "human", "value": "Q"}]})


def test_generation_prompt_is_the_conversation_up_to_its_last_answer(model_dir):
    from vlmtune.data.templates import generation_prompt
    from vlmtune.eval.benchmarks import prepare

    record = {"id": "r", "task": "conversation", "conversations": [
        {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
        {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]}  # fmt: skip
    pipe = build_pipeline(load_config("llava-dora", [f"model.name_or_path={model_dir}"]))
    prompt = "".join(
        text for text, _ in pipe.segments(prepare(get_benchmark("conversation"), record), train=False)
    )
    assert prompt == generation_prompt(record)
    assert prompt.endswith("USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:") and "A2" not in prompt


def test_conversation_data_picks_the_conversation_benchmark():
    conv = [{"id": "a", "task": "conversation"}]
    assert benchmark_for(conv, "shapes-vqa") == "conversation"
    assert benchmark_for(conv, "conversation") == "conversation"
    assert benchmark_for([*conv, {"id": "b", "task": "vqa"}], "shapes-vqa") == "shapes-vqa"
    assert benchmark_for([], "shapes-vqa") == "shapes-vqa"


def test_answer_loss_is_the_token_weighted_mean_over_records(model_dir, tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "own.json").write_text(json.dumps(llava_json()))
    records = load_records(str(tmp_path / "own.json"))
    cfg = load_config("llava-dora", [f"model.name_or_path={model_dir}", "model.dtype=float32"])
    pipe = build_pipeline(cfg)
    got = answer_loss(pipe, records, batch_size=2)
    total, tokens = 0.0, 0  # one record at a time, summed by hand
    with torch.no_grad():
        for record in records:
            batch = pipe.collate([record], train=True)
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(pipe.loss(batch)) * n
            tokens += n
    assert got["loss_tokens"] == tokens > 0
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    assert not pipe.model.training


def test_cli_trains_and_evaluates_own_llava_data_with_the_conversation_benchmark(
    model_dir, tmp_path, monkeypatch, capsys
):
    """Acceptance 3: `vlmtune train llava-dora data.train=own.json data.image_root=images/
    data.eval=own_val.json` (image paths relative to image_root, run from the data folder)."""
    write_images(tmp_path / "images")
    records = llava_json(image_prefix="")  # "0.png": found under data.image_root
    (tmp_path / "own.json").write_text(json.dumps(records))
    (tmp_path / "own_val.json").write_text(json.dumps(records[:2]))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "llava-dora", "data.train=own.json", "data.image_root=images/", "data.eval=own_val.json",
            f"model.name_or_path={model_dir}", "adapters.language.r=4", "adapters.language.alpha=8",
            "train.max_steps=2", "train.batch_size=2", "eval.batch_size=2", "eval.max_new_tokens=4",
            "--output-dir", "run"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "eval: data.eval holds conversations: benchmark conversation instead of shapes-vqa" in out
    assert "base  model conversation: f1 " in out and "tuned model conversation: f1 " in out
    summary = json.loads(Path("run/eval.json").read_text())
    assert "benchmark: conversation" in Path("run/config.yaml").read_text()  # what was evaluated
    assert summary["benchmark"] == "conversation" and summary["eval_records"] == 2
    for stage in ("base", "tuned"):
        metrics = summary[stage]
        assert metrics["benchmark"] == "conversation" and metrics["count"] == 2
        assert {"exact_match", "f1", "loss", "perplexity"} <= set(metrics) and metrics["loss_tokens"] > 0
        rows = [
            json.loads(line) for line in Path(f"run/eval/{stage}/predictions.jsonl").read_text().splitlines()
        ]
        assert [r["reference"] for r in rows] == ["2", "no, there is none."]  # the last answers
        assert all({"exact_match", "f1", "raw"} <= set(r) for r in rows)
    assert summary["tuned"]["loss"] != summary["base"]["loss"]  # the adapter trained
    # and `vlmtune eval conversation` on the run folder scores the same data the same way (its
    # eval.max_new_tokens=4 from config.yaml)
    assert cli.main(["eval", "conversation", "--model", "run", "--data", "own_val.json", "--image-root",
                     "images", "--out", "again", "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["eval", "--compare", "run/eval/base", "run/eval/tuned"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("conversation"))
    base_f1, tuned_f1 = summary["base"]["f1"], summary["tuned"]["f1"]
    assert line.split()[2:5] == ["2", f"{base_f1:.2f}", f"{tuned_f1:.2f}"]  # n, A, B: the token F1 per record
    again = json.loads(Path("again/metrics.json").read_text())
    assert again["loss"] == pytest.approx(summary["tuned"]["loss"], rel=1e-5)
    assert again["f1"] == summary["tuned"]["f1"]
