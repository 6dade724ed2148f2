"""The speed features in the training loop: grouped batches, packing, exact resume, step-time breakdown."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
from toy_models import llava_run

from vlmtune.core.config import ConfigError, load_config
from vlmtune.data.records import load_records
from vlmtune.data.sampler import MEGABATCH, epoch_batch_count, grouped_batches
from vlmtune.recipes.preflight import steps_plan
from vlmtune.train.checkpoint import checkpoint_dirs
from vlmtune.train.run import read_metrics
from vlmtune.train.timing import PHASES
from vlmtune.train.trainer import Trainer


@pytest.fixture(scope="module")
def records(shapes_cache) -> list[dict]:
    return load_records("shapes:vqa,caption", split="train", n_images=8, cache_dir=shapes_cache)[:40]


def make(model_dir: Path, *overrides: str):
    return llava_run(
        f"model.name_or_path={model_dir}",
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.max_steps=4",
        "train.log_every=1",
        "train.lr=1e-3",
        *overrides,
    )


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_grouped_batches_one_modality_similar_lengths_seeded() -> None:
    lengths = [(-1) ** (i % 3 == 0) * (10 + (i * 37) % 90) for i in range(230)]  # a third text-only
    batches = grouped_batches(lengths, 4, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(230))
    assert all(len({lengths[i] > 0 for i in b}) == 1 for b in batches)  # never mixes modalities
    assert sum(len(b) < 4 for b in batches) <= 2 and all(len(b) < 4 for b in batches[-2:] if len(b) < 4)
    for b in batches:  # sorted within a megabatch, so sorted within each batch
        assert [abs(lengths[i]) for i in b] == sorted((abs(lengths[i]) for i in b), reverse=True)
    assert grouped_batches(lengths, 4, seed=3) == batches
    assert grouped_batches(lengths, 4, seed=4) != batches
    spread = sum(abs(lengths[b[0]]) - abs(lengths[b[-1]]) for b in batches) / len(batches)
    assert spread < 10 and MEGABATCH * 4 >= 200  # similar lengths together (random batches: ~45)


@pytest.mark.parametrize("lengths_seed", range(5))
def test_epoch_batch_count_is_the_number_of_grouped_batches(lengths_seed) -> None:
    g = torch.Generator().manual_seed(lengths_seed)
    n = int(torch.randint(1, 700, (1,), generator=g))
    lengths = [
        int(x)
        for x in torch.randint(1, 99, (n,), generator=g) * (torch.rand(n, generator=g) < 0.8).mul(2).sub(1)
    ]
    for bs in (1, 3, 4, 16):
        with_image = [x > 0 for x in lengths]
        assert epoch_batch_count(with_image, bs, True) == len(grouped_batches(lengths, bs, seed=lengths_seed))
        assert epoch_batch_count(with_image, bs, False) == math.ceil(n / bs)


@pytest.mark.parametrize(
    "extra",
    [("train.max_steps=0", "train.epochs=2"), ("train.max_steps=4",),
     ("train.max_steps=0", "train.epochs=2", "data.packing=true")],
)  # fmt: skip
def test_preflight_counts_the_batches_the_trainer_makes(model_dir, records, tmp_path, extra) -> None:
    """10 image records + 1 text-only, batch 4, data.group_by_length: 3 + 1 one-modality batches per epoch,
    not ceil(11 / 4) = 3; the preflight's line and the trainer's plan agree on batches, steps, epochs."""
    text_only = {k: v for k, v in records[10].items() if k not in ("image", "images")} | {"id": "text-only"}
    mixed = [*records[:10], text_only]
    cfg, pipe = make(model_dir, "data.group_by_length=true", "train.grad_accum=1", *extra)
    plan = Trainer(pipe, cfg, mixed, tmp_path, quiet=True).plan()
    batches, steps, epochs = re.search(
        r"-> (\d+) batches .* -> (\d+) optimizer steps = ([\d.]+) epochs", plan
    ).groups()
    assert batches == "4"
    assert f"{steps} steps = {epochs} epochs x {batches} batches" in steps_plan(cfg, mixed)


def test_grouped_packed_run_resumes_exactly(model_dir, records, tmp_path) -> None:
    speed = ["data.group_by_length=true", "data.packing=true", "adapters.language.dropout=0.1"]
    cfg, pipe = make(model_dir, *speed)
    Trainer(pipe, cfg, records, tmp_path / "full", quiet=True).fit()
    full = losses(tmp_path / "full")
    cfg, pipe = make(model_dir, *speed, "train.save_every=2")
    Trainer(pipe, cfg, records, tmp_path / "cut", quiet=True).fit(stop_after=2)
    cfg, pipe = make(model_dir, *speed, "train.save_every=2")
    Trainer(pipe, cfg, records, tmp_path / "cut", quiet=True).fit(
        resume_from=checkpoint_dirs(tmp_path / "cut")[-1]
    )
    resumed = losses(tmp_path / "cut")
    assert [resumed[s] for s in (3, 4)] == [full[s] for s in (3, 4)]


def test_resume_drops_the_rows_logged_after_the_checkpoint(model_dir, records, tmp_path, capsys) -> None:
    """A run killed after its checkpoint at step 2, having logged step 3, resumes from step 2: metrics.jsonl
    is one sequence 1..4 (step 3 logged once, by the resumed run; the last step once, with the step-time
    summary in its row), with the losses of an uninterrupted run. Resuming the finished run does nothing."""
    cfg, pipe = make(model_dir)
    Trainer(pipe, cfg, records, tmp_path / "full", quiet=True).fit()
    cfg, pipe = make(model_dir, "train.save_every=2")
    Trainer(pipe, cfg, records, tmp_path / "cut", quiet=True).fit(stop_after=3)
    assert [r["step"] for r in read_metrics(tmp_path / "cut")] == [1, 2, 3]
    with (tmp_path / "cut" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 0.')  # killed mid-write
    step2 = next(d for d in checkpoint_dirs(tmp_path / "cut") if d.name.endswith("0002"))
    cfg, pipe = make(model_dir, "train.save_every=2")
    Trainer(pipe, cfg, records, tmp_path / "cut").fit(resume_from=step2)
    assert "dropped 2 metrics row(s) logged after it" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "cut")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    assert "time/data_share" in rows[-1] and not any("time/data_share" in r for r in rows[:2])
    cfg, pipe = make(model_dir, "train.save_every=2")
    Trainer(pipe, cfg, records, tmp_path / "cut").fit(resume_from=checkpoint_dirs(tmp_path / "cut")[-1])
    out = capsys.readouterr().out
    assert "step time" not in out and "nothing to do: the run is at step 4 of 4" in out
    assert read_metrics(tmp_path / "cut") == rows


def test_packed_training_follows_the_unpacked_run(model_dir, records, tmp_path) -> None:
    """Same samples, same updates: the losses agree to fp32 rounding (no dropout)."""
    cfg, pipe = make(model_dir, "adapters.language.dropout=0", "train.max_steps=3", "model.dtype=float32")
    Trainer(pipe, cfg, records, tmp_path / "padded", quiet=True).fit()
    cfg, pipe = make(
        model_dir,
        "adapters.language.dropout=0",
        "train.max_steps=3",
        "model.dtype=float32",
        "data.packing=true",
    )
    Trainer(pipe, cfg, records, tmp_path / "packed", quiet=True).fit()
    padded, packed = losses(tmp_path / "padded"), losses(tmp_path / "packed")
    assert len(padded) == 3
    for step in padded:
        assert abs(padded[step] - packed[step]) < 1e-5, (step, padded[step], packed[step])
    metrics = read_metrics(tmp_path / "packed")
    assert metrics[0]["samples_per_s"] > 0


def test_step_time_breakdown_is_printed_and_logged(model_dir, records, tmp_path, capsys) -> None:
    cfg, pipe = make(model_dir, "train.max_steps=2")
    Trainer(pipe, cfg, records, tmp_path).fit()
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("step time (2 steps"))
    assert all(f"{phase} " in line for phase in PHASES)
    final = read_metrics(tmp_path)[-1]
    shares = [final[f"time/{p}_share"] for p in PHASES]
    assert abs(sum(shares) - 1) < 1e-9 and all(s >= 0 for s in shares)
    assert final["time/vision_ms"] > 0 and final["time/backward_ms"] > 0 and final["time/lm_forward_ms"] > 0


def test_speed_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config("llava-dora", ["data.num_workers=-1"])
    with pytest.raises(ConfigError, match="llava only"):
        load_config("vit-lora", ["data.packing=true"])
    with pytest.raises(ConfigError, match="must be true or false"):
        load_config("llava-dora", ["data.group_by_length=maybe"])


def test_num_workers_default_is_none_on_cpu_and_a_few_per_gpu_process(
    model_dir, records, tmp_path, monkeypatch
):
    """Unset ``data.num_workers``: 0 on CPU (the step owns every core); on a GPU, half of each process's
    cores, at most 4."""
    from vlmtune.train.trainer import default_num_workers

    assert load_config("llava-dora").data.num_workers is None
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert [default_num_workers(cuda, n) for n in (1, 2, 4, 8, 16)] == [4, 4, 2, 1, 1]
    assert default_num_workers(torch.device("cpu"), 1) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers(cuda, 1) == 1
    cfg, pipe = make(model_dir, "train.max_steps=1")
    assert Trainer(pipe, cfg, records, tmp_path, quiet=True).num_workers == 0
    cfg, pipe = make(model_dir, "train.max_steps=1", "data.num_workers=3")
    assert Trainer(pipe, cfg, records, tmp_path, quiet=True).num_workers == 3


def test_collation_in_workers_gives_the_same_run(model_dir, records, tmp_path) -> None:
    """data.num_workers=2 decodes and collates in DataLoader workers; same batches, same losses."""
    cfg, pipe = make(model_dir, "train.max_steps=2", "data.max_length=40")
    Trainer(pipe, cfg, records, tmp_path / "main", quiet=True).fit()
    cut_main = pipe.truncated_answers
    cfg, pipe = make(model_dir, "train.max_steps=2", "data.max_length=40", "data.num_workers=2")
    Trainer(pipe, cfg, records, tmp_path / "workers", quiet=True).fit()
    assert losses(tmp_path / "workers") == losses(tmp_path / "main")
    assert pipe.truncated_answers == cut_main > 0  # counted in the workers, reported in the main process


@pytest.mark.parametrize("workers", [0, 2])
def test_the_truncation_report_counts_distinct_records_over_epochs(
    model_dir, records, tmp_path, workers
) -> None:
    """3 epochs over 8 records, data.max_length below the 3 longest: those 3 lose their answer's end, each
    counted once, not once per epoch (and once across DataLoader workers)."""
    subset = records[:8]
    _, roomy = make(model_dir, "data.max_length=512")
    lengths = sorted(len(roomy.encode(r, train=True)) for r in subset)
    limit = lengths[-4]
    longer = sum(n > limit for n in lengths)
    assert longer == 3
    cfg, pipe = make(
        model_dir, f"data.max_length={limit}", "train.max_steps=3", f"data.num_workers={workers}"
    )
    trainer = Trainer(pipe, cfg, subset, tmp_path, quiet=True)
    assert trainer.micro_per_epoch == cfg.train.grad_accum  # one optimizer step per epoch: 3 steps, 3 epochs
    trainer.fit()
    assert pipe.truncated_answers == longer
