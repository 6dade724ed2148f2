"""``vlmtune train`` run folders (round-4 user report): ``--resume`` trains the run's own config with only the
keys typed now on top, and a run that starts over drops the interrupted attempt's metrics rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from toy_models import write_vqa_records

from vlmtune import cli
from vlmtune.train.run import read_metrics

RUN_ARGS = ("train.max_steps=3", "train.batch_size=2", "train.log_every=1", "adapters.language.r=4",
            "data.max_eval_samples=2", "train.eval_at_start=false", "train.eval_at_end=false")  # fmt: skip


def train(*argv: str) -> int:
    return cli.main(["train", "llava-lora", *argv, "--quiet"])


@pytest.fixture
def interrupted(model_dir, tmp_path) -> Path:
    """A llava-lora run (3 steps, r=4, max_eval_samples=2) as a kill before its first checkpoint leaves it:
    config.yaml and two metrics rows, no checkpoint, no adapter."""
    data = write_vqa_records(tmp_path / "data", 4)
    run = tmp_path / "run"
    common = [f"model.name_or_path={model_dir}", f"data.train={data}", f"data.image_root={data.parent}"]
    assert train(*common, *RUN_ARGS, "--output-dir", str(run)) == 0
    for name in ("checkpoints", "adapter", "tensorboard"):
        shutil.rmtree(run / name)
    (run / "eval.json").unlink()
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(rows[:2]) + "\n")
    (run / "argv.txt").write_text("\n".join([*common, *RUN_ARGS]))  # the command line it ran with
    return run


def saved(run: Path, section: str, key: str):
    return yaml.safe_load((run / "config.yaml").read_text())[section][key]


def test_resume_without_checkpoint_trains_the_runs_own_config_and_starts_the_log_over(interrupted, capsys):
    assert train("--resume", str(interrupted)) == 0  # nothing typed: the recipe's r=8, 400 steps do not apply
    assert [r["step"] for r in read_metrics(interrupted)] == [1, 2, 3]
    assert (
        saved(interrupted, "train", "max_steps") == 3 and saved(interrupted, "data", "max_eval_samples") == 2
    )
    assert saved(interrupted, "adapters", "language")["r"] == 4
    assert (interrupted / "adapter").is_dir()


def test_resume_applies_the_typed_resumable_keys_and_refuses_typed_others(interrupted, capsys):
    assert train("--resume", str(interrupted), "adapters.language.r=8") == 2
    err = capsys.readouterr().err
    assert "adapters.language.r (4 -> 8)" in err and "Traceback" not in err
    assert train("--resume", str(interrupted), "adapters.language.r=4", "train.max_steps=4") == 0
    assert [r["step"] for r in read_metrics(interrupted)] == [1, 2, 3, 4]
    assert (
        saved(interrupted, "train", "max_steps") == 4 and saved(interrupted, "data", "max_eval_samples") == 2
    )


def test_the_same_command_line_resumed_without_checkpoint_drops_the_interrupted_rows(interrupted):
    typed = (interrupted / "argv.txt").read_text().splitlines()
    assert train(*typed, "--resume", str(interrupted)) == 0
    assert [r["step"] for r in read_metrics(interrupted)] == [1, 2, 3]  # not [1, 2, 1, 2, 3]


def interrupt_at_step(monkeypatch, at: int) -> None:
    """Ctrl-C as the trainer finishes optimizer step ``at`` (a KeyboardInterrupt from inside ``fit``)."""
    from vlmtune.train.trainer import Trainer

    step = Trainer._optimizer_step

    def interrupting(self, *args, **kwargs):
        if self.step == at:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_optimizer_step", interrupting)


@pytest.mark.parametrize(
    ("save_every", "says"),
    [(0, "no checkpoint: set train.save_every=N to be able to resume"),
     (1, "newest complete checkpoint at step 2; continue with: vlmtune train llava-lora --resume ")],
)  # fmt: skip
def test_ctrl_c_says_what_is_left_and_how_to_continue(interrupted, monkeypatch, capsys, save_every, says):
    typed = (interrupted / "argv.txt").read_text().splitlines()
    run = interrupted.parent / f"run-{save_every}"
    interrupt_at_step(monkeypatch, 2)
    assert train(*typed, f"train.save_every={save_every}", "--output-dir", str(run)) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "vlmtune train: interrupted" and says in err[-2] and str(run) in err[-2], err
    monkeypatch.undo()
    assert train("--resume", str(run)) == 0  # the command it names continues the run
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


def test_a_named_output_dir_that_is_not_empty_is_not_written_and_the_user_is_told(interrupted, capsys):
    typed = (interrupted / "argv.txt").read_text().splitlines()
    folder = interrupted.parent / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    assert train(*typed, "train.max_steps=1", "--output-dir", str(folder)) == 0
    err = capsys.readouterr().err
    assert f"{folder} is not empty" in err and f"writing to {folder}-2; use --resume {folder}" in err
    assert (
        sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
        and (folder.parent / "mine-2" / "adapter").is_dir()
    )


def test_resume_keeps_the_data_paths_as_typed_and_reads_them_from_another_directory(model_dir, tmp_path):
    import os

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_vqa_records(work / "data", 4)
    elsewhere.mkdir()
    run = tmp_path / "run"
    before = Path.cwd()
    try:
        os.chdir(work)
        argv = [
            f"model.name_or_path={model_dir}",
            "data.train=data/train.jsonl",
            "data.image_root=data",
            *RUN_ARGS,
        ]
        assert train(*argv, "--output-dir", str(run)) == 0
        assert train("--resume", str(run), "train.max_steps=4") == 0  # same directory: config.yaml as typed
        os.chdir(elsewhere)
        assert train("--resume", str(run), "train.max_steps=5") == 0  # the recorded absolute paths
    finally:
        os.chdir(before)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (data["train"], data["image_root"]) == ("data/train.jsonl", "data")


def test_resume_refuses_training_data_that_changed_unless_told(model_dir, tmp_path, capsys):
    """The run records its training data's fingerprint (count + sha256 of the records); --resume on changed data
    (one record fewer, then one answer changed) stops with one line naming --data-changed-ok, before training;
    with it, a warning and the run goes on."""
    import json

    data = write_vqa_records(tmp_path / "data", 4)
    run = tmp_path / "run"
    common = [f"model.name_or_path={model_dir}", f"data.train={data}", f"data.image_root={data.parent}"]
    assert train(*common, *RUN_ARGS, "train.save_every=3", "--output-dir", str(run)) == 0
    recorded = json.loads((run / "train_data.json").read_text())
    assert recorded["records"] == 4 and len(recorded["sha256"]) == 64
    assert train("--resume", str(run), "train.max_steps=4") == 0  # the same data: resumes
    capsys.readouterr()

    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:3]) + "\n")
    assert train("--resume", str(run), "train.max_steps=5") == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "the training data changed since the run was trained (4 records then, 3 now)" in err
    )
    assert "--data-changed-ok" in err and [r["step"] for r in read_metrics(run)][-1] == 4

    changed = json.loads(lines[3])
    data.write_text("\n".join([*lines[:3], json.dumps({**changed, "answers": ["blue"] * 10})]) + "\n")
    assert train("--resume", str(run), "train.max_steps=5") == 2
    assert "(4 records, other contents)" in capsys.readouterr().err
    assert (
        cli.main(["train", "llava-lora", "--resume", str(run), "train.max_steps=5", "--data-changed-ok"]) == 0
    )
    assert "warning: --resume: the training data changed" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run)][-1] == 5

    for broken in ('{"records": 4, "sha', "[]"):  # the record itself cut or edited: one line naming it
        (run / "train_data.json").write_text(broken)
        assert train("--resume", str(run), "train.max_steps=6") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "train_data.json" in err and "Traceback" not in err, err


def test_resume_on_a_folder_that_is_not_a_run_is_refused_and_writes_nothing(tmp_path, capsys):
    """Round-5 report: ``--resume`` on a user's folder (no config.yaml) trained there and replaced its
    eval.json/metrics.jsonl; a file was called a missing run folder."""
    user = tmp_path / "userdir"
    user.mkdir()
    files = {"eval.json": '{"my": "precious results"}\n', "metrics.jsonl": '{"step": 1, "loss": 42}\n'}
    for name, text in files.items():
        (user / name).write_text(text)
    assert train("--resume", str(user), "train.max_steps=1") == 2
    err = capsys.readouterr().err
    assert f"{user} is not a run folder (no config.yaml)" in err and "Traceback" not in err
    assert {p.name: p.read_text() for p in user.iterdir()} == files  # nothing written, nothing replaced
    assert train("--resume", str(user / "eval.json")) == 2
    err = capsys.readouterr().err
    assert "eval.json is a file, not a run folder" in err and "does not exist" not in err
