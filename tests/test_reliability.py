"""Bad input never crashes a run silently; checkpoints survive SIGKILL (issue: Reliability)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.adapters import attach
from vlmtune.core.config import ConfigError, load_config
from vlmtune.data.errors import ErrorLog
from vlmtune.data.records import load_records, load_split
from vlmtune.models import build_pipeline
from vlmtune.train.trainer import Trainer, TrainingError, seed_everything


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def good_records(cache) -> list[dict]:
    return load_records("shapes:vqa", split="train", n_images=6, cache_dir=cache / "shapes")


def write_mixed_jsonl(folder: Path, good: list[dict]) -> Path:
    """Good shapes records plus four bad ones: malformed JSON, missing field, missing and corrupt image."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    lines = [json.dumps(r) for r in good]
    lines.insert(2, '{"id": "broken", "task": "vqa", ')
    lines.append(json.dumps({"id": "noanswers", "task": "vqa", "image": good[0]["image"], "question": "q?"}))
    lines.append(json.dumps({**good[0], "id": "missingimg", "image": str(folder / "gone.png")}))
    lines.append(json.dumps({**good[0], "id": "corruptimg", "image": str(folder / "corrupt.png")}))
    path = folder / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def small_cfg(model_dir: Path, *overrides: str):
    return load_config(
        "llava-dora",
        [
            f"model.name_or_path={model_dir}",
            "adapters.language.r=4",
            "adapters.language.alpha=8",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.log_every=1",
            "data.eval=",
            *overrides,
        ],
    )


def test_skip_policy_trains_on_the_good_records_and_counts_the_bad(model_dir, good_records, tmp_path) -> None:
    path = write_mixed_jsonl(tmp_path / "data", good_records)
    cfg = small_cfg(model_dir, f"data.train={path}", "data.on_error=skip")
    errors = ErrorLog()
    records = load_split(cfg, cfg.data.train, "train", 0, errors)
    assert [r["id"] for r in records] == [r["id"] for r in good_records]
    assert errors.count == 4
    reasons = " | ".join(errors.reasons)
    assert f"{path}:3" in reasons  # the malformed line, by number
    assert "noanswers" in reasons and "answers" in reasons
    assert "gone.png" in reasons and "corrupt.png" in reasons
    errors.write(tmp_path / "data_errors.json")
    assert json.loads((tmp_path / "data_errors.json").read_text())["skipped"] == 4
    seed_everything(0)
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    out = Trainer(pipe, cfg, records, tmp_path / "run", quiet=True).fit()
    assert out["step"] == 2 and out["loss"] == out["loss"]  # trained, finite


def test_raise_policy_names_file_and_line(model_dir, good_records, tmp_path) -> None:
    path = write_mixed_jsonl(tmp_path / "data", good_records)
    cfg = small_cfg(model_dir, f"data.train={path}")
    from vlmtune.data.errors import DataError

    with pytest.raises(DataError) as err:
        load_split(cfg, cfg.data.train, "train", 0, ErrorLog())
    assert f"{path}:3" in str(err.value) and "\n" not in str(err.value)


def nan_after(pipe, good_steps: int):
    real = pipe.loss
    calls = {"n": 0}

    def loss(batch):
        calls["n"] += 1
        value = real(batch)
        return value * float("nan") if calls["n"] > good_steps else value

    pipe.loss = loss


def test_nonfinite_loss_stops_with_step_and_record_ids(model_dir, good_records, tmp_path) -> None:
    cfg = small_cfg(model_dir, "train.max_steps=3")
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    nan_after(pipe, good_steps=1)
    with pytest.raises(TrainingError) as err:
        Trainer(pipe, cfg, good_records, tmp_path, quiet=True).fit()
    msg = str(err.value)
    assert "non-finite loss" in msg and "at step 2" in msg and "train.nonfinite=skip" in msg
    assert any(r["id"] in msg for r in good_records)


def test_nonfinite_skip_is_counted(model_dir, good_records, tmp_path) -> None:
    cfg = small_cfg(model_dir, "train.max_steps=2", "train.nonfinite=skip")
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    real, calls = pipe.loss, {"n": 0}

    def loss(batch):  # the second micro-batch is poisoned, the rest are fine
        calls["n"] += 1
        return real(batch) * (float("inf") if calls["n"] == 2 else 1.0)

    pipe.loss = loss
    out = Trainer(pipe, cfg, good_records, tmp_path, quiet=True).fit()
    assert out["step"] == 2 and out["skipped_nonfinite_steps"] == 1


def test_config_validation_happens_before_heavy_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config key 'data.train': file .*nope.jsonl does not exist"):
        load_config("llava-dora", [f"data.train={tmp_path / 'nope.jsonl'}"])
    with pytest.raises(ConfigError, match="config key 'data.image_root'"):
        load_config("llava-dora", [f"data.image_root={tmp_path / 'nope'}"])


def cli(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vlmtune", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # launches and kills `vlmtune train` processes
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(model_dir, cache, tmp_path) -> None:
    env = {**os.environ, "VLMTUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    args = [
        "llava-dora",
        f"model.name_or_path={model_dir}",
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "adapters.language.dropout=0.1",
        "data.train=shapes:vqa",
        "data.shapes_size=6",
        "data.eval=",
        "train.batch_size=4",
        "train.max_steps=10",
        "train.save_every=1",
        "train.keep_last=2",
        "train.log_every=1",
        "--quiet",
    ]
    reference = cli(*args, "--output-dir", str(tmp_path / "ref"), env=env)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    proc = cli(*args, "--output-dir", str(run_dir), env=env)
    for _ in range(12):
        if kills >= 3:
            break
        # wait until training has produced something, then kill at a random moment
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not (run_dir / "metrics.jsonl").exists():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = cli(*args, "--output-dir", str(run_dir), "--resume", str(run_dir), env=env)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert kills >= 1

    ref = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-6)
    assert not list((run_dir / "checkpoints").glob(".step-*"))  # no torn temporary folders left


def test_out_of_memory_is_one_line_with_the_knobs(model_dir, good_records, tmp_path) -> None:
    cfg = small_cfg(model_dir)
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())

    def loss(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    pipe.loss = loss
    with pytest.raises(TrainingError) as err:
        Trainer(pipe, cfg, good_records, tmp_path, quiet=True).fit()
    msg = str(err.value)
    assert "\n" not in msg and "out of memory at step 1" in msg
    for knob in (
        "train.batch_size=4",
        "train.grad_accum",
        "model.gradient_checkpointing=true",
        "data.max_length",
    ):
        assert knob in msg
