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


@pytest.fixture(scope="module")
def no_dropout_folder(tiny_folder, tmp_path_factory) -> Path:
    """The tiny VL-BART without dropout: equal targets give equal per-step losses, in any process."""
    import shutil

    folder = tmp_path_factory.mktemp("vlbart") / "no-dropout"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dropout": 0.0}))
    return folder


def mixed_answers(tmp_path: Path) -> Path:
    """4 vqa records whose 10 human answers disagree (red x4, pink x3, dark red x3): the trained answer is drawn."""
    answers = ["red"] * 4 + ["pink"] * 3 + ["dark red"] * 3
    return write_records(tmp_path / "d" / "train.jsonl", [vqa(f"q{i}", answers) for i in range(4)])


def per_step_losses(run: Path) -> list[float]:
    from vlmtune.train.run import read_metrics

    return [round(r["loss"], 5) for r in read_metrics(run) if "loss" in r]


def rng_run(folder: Path, tmp_path: Path, run: Path, steps: int, *more: str) -> list[str]:
    data = mixed_answers(tmp_path)
    return [f"model.name_or_path={folder}", f"data.train={data}", f"data.eval={data}", f"train.max_steps={steps}",
            "data.task_batch_sizes.vqa=2", "train.log_every=1", "train.save_every=2", "train.schedule=constant",
            "train.warmup_ratio=0", "train.eval_at_start=false", "train.eval_at_end=false",
            "--output-dir", str(run), "--quiet", *more]  # fmt: skip


def test_vqa_answers_drawn_per_record_and_epoch_so_a_resumed_run_trains_the_same(
    no_dropout_folder, tmp_path
) -> None:
    """Round-5 report: the answer sampler was one Random(seed) per process, not checkpointed: a resumed run
    (and each of 2 processes) drew other answers than the uninterrupted run."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert cli.main(["train", "vlbart-dora", *rng_run(no_dropout_folder, tmp_path, full, 6)]) == 0
    assert cli.main(["train", "vlbart-dora", *rng_run(no_dropout_folder, tmp_path, resumed, 2)]) == 0
    assert cli.main(["train", "vlbart-dora", "--resume", str(resumed), "train.max_steps=6", "--quiet"]) == 0
    losses = per_step_losses(full)
    assert len(losses) == 6 and per_step_losses(resumed) == losses


def trained_targets(pipe, records: list[dict]) -> list[str]:
    """The target texts ``pipe.collate`` trains ``records`` on (labels decoded, padding dropped)."""
    labels = pipe.collate(records)["labels"]
    labels = labels.masked_fill(labels == -100, pipe.tokenizer.pad_token_id)
    return [t.strip() for t in pipe.tokenizer.batch_decode(labels, skip_special_tokens=True)]


def test_a_process_collating_its_share_trains_the_answers_one_process_does(tiny_folder) -> None:
    """What each of 2 processes collates (its own records, after none of the others') is trained on the
    answers one process trains them on."""
    from vlmtune.models.vlbart import VLBartPipeline, load_vlbart

    answers = ["red"] * 4 + ["pink"] * 3 + ["dark red"] * 3
    records = [{**vqa(f"q{i}", answers), "image": Image.new("RGB", (16, 16))} for i in range(12)]
    one, rank1 = VLBartPipeline(*load_vlbart(tiny_folder)), VLBartPipeline(*load_vlbart(tiny_folder))
    one.set_epoch(3), rank1.set_epoch(3)
    targets = trained_targets(one, records[:6]) + trained_targets(one, records[6:])
    assert trained_targets(rank1, records[6:]) == targets[6:]
    assert set(targets) == {"red", "pink", "dark red"}  # really drawn, not the most common answer


def test_questions_and_answers_cut_by_max_length_are_said_and_counted(tiny_folder, tmp_path, capsys) -> None:
    """Round-5 report: data.max_length cut questions ('vqa: in this image,') and answers (without </s>)
    silently; now the first of each is named and the records are counted after training."""
    long_question = "In this image, which has a shape drawn on a white background, what colour is the shape?"
    records = [
        {"id": "long-q", "task": "vqa", "question": long_question, "answers": ["red"]},
        {"id": "long-c", "task": "caption", "captions": ["a red circle " * 10]},
        vqa("short", ["red"]),
    ]
    data = write_records(tmp_path / "d" / "train.jsonl", records)
    run = tmp_path / "run"
    assert train(tiny_folder, run, f"data.train={data}", f"data.eval={data}", "data.max_length=12",
                 "train.eval_at_start=false", "train.eval_at_end=false", "train.max_steps=2") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "warning: record 'long-q': its question is" in out and "data.max_length=12 cuts" in out
    assert "warning: record 'long-c': its answer is" in out and "(and its </s>) from the loss" in out
    assert "warning: 1 training record(s) had their question cut to data.max_length=12" in out
    assert "warning: 1 training record(s) lost answer tokens to data.max_length=12" in out
    assert "'short'" not in out


@pytest.mark.slow  # launches two torchrun processes
def test_two_processes_train_the_answers_one_process_does(no_dropout_folder, tmp_path) -> None:
    """The tester's 01_vlbart_rng.sh: ``--num-processes 2`` gives the per-step losses of one process."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(["train", "vlbart-dora", *rng_run(no_dropout_folder, tmp_path, one, 4)]) == 0
    argv = ["train", "vlbart-dora", *rng_run(no_dropout_folder, tmp_path, two, 4), "--num-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-m", "vlmtune", *argv], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    losses = per_step_losses(one)
    assert len(losses) == 4 and per_step_losses(two) == pytest.approx(losses, abs=1e-4)
