"""Shared trainer: exact resume, per-group learning rates, schedules, run folder, merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy_models import llava_run
from transformers import LlavaForConditionalGeneration

from vlmtune.data.records import load_records
from vlmtune.train.checkpoint import checkpoint_dirs
from vlmtune.train.optim import lr_lambda, param_groups
from vlmtune.train.run import read_metrics
from vlmtune.train.trainer import Trainer


@pytest.fixture(scope="module")
def records(shapes_cache) -> list[dict]:
    return load_records("shapes:vqa", split="train", n_images=8, cache_dir=shapes_cache)


def make(model_dir: Path, *overrides: str):
    return llava_run(
        f"model.name_or_path={model_dir}",
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "adapters.language.dropout=0.1",  # exercises the RNG state on resume
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.max_steps=6",
        "train.log_every=1",
        "train.lr=1e-3",
        "train.projector_lr=1e-3",
        *overrides,
    )


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_resume_reproduces_the_uninterrupted_run(model_dir, records, tmp_path) -> None:
    cfg, pipe = make(model_dir)
    Trainer(pipe, cfg, records, tmp_path / "full", quiet=True).fit()
    full = losses(tmp_path / "full")
    assert sorted(full) == [1, 2, 3, 4, 5, 6]

    cfg, pipe = make(model_dir, "train.save_every=3")
    Trainer(pipe, cfg, records, tmp_path / "cut", quiet=True).fit(stop_after=3)
    assert [p.name for p in checkpoint_dirs(tmp_path / "cut")] == ["step-000003"]
    cfg, pipe = make(model_dir, "train.save_every=3")  # a fresh process: new model, new optimizer
    ckpt = checkpoint_dirs(tmp_path / "cut")[-1]
    Trainer(pipe, cfg, records, tmp_path / "cut", quiet=True).fit(resume_from=ckpt)
    resumed = losses(tmp_path / "cut")
    for step in (4, 5, 6):
        assert resumed[step] == full[step], (step, resumed[step], full[step])
    assert len({round(v, 6) for v in full.values()}) > 1  # it trains: the loss changes


def test_run_folder_contents(model_dir, records, tmp_path) -> None:
    cfg, pipe = make(model_dir, "train.max_steps=2", "train.keep_last=1", "train.save_every=1")
    out = Trainer(pipe, cfg, records, tmp_path, quiet=True).fit()
    assert out["step"] == 2
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000002"]  # keep_last=1
    adapter = checkpoint_dirs(tmp_path)[0] / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard").iterdir())


def test_param_groups_lrs_and_lora_plus(model_dir) -> None:
    cfg, pipe = make(model_dir, "train.lr=2e-4", "train.projector_lr=2e-5", "train.lora_plus_ratio=16")
    groups = {g["name"]: g for g in param_groups(pipe.model, pipe.towers, cfg.train, cfg.adapters.specs())}
    assert set(groups) == {"language.lora", "language.lora_B", "projector.params"}
    assert groups["language.lora"]["lr"] == pytest.approx(2e-4)
    assert groups["language.lora_B"]["lr"] == pytest.approx(16 * 2e-4)
    assert groups["projector.params"]["lr"] == pytest.approx(2e-5)
    n_trainable = sum(p.numel() for p in pipe.model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == n_trainable


def test_warmup_cosine_schedule() -> None:
    f = lr_lambda("cosine", total_steps=100, warmup_steps=3)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(3) == pytest.approx(1.0) and f(100) == pytest.approx(0.0)
    assert f(3 + 97 // 2) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 48 / 97)).item()))
    assert lr_lambda("linear", 10, 0)(5) == pytest.approx(0.5)
    assert lr_lambda("constant", 10, 2)(9) == 1.0


def test_merge_writes_a_plain_llava_that_answers_the_same(model_dir, records, tmp_path) -> None:
    from vlmtune.adapters import save_adapter
    from vlmtune.cli import main as cli_main
    from vlmtune.core.config import to_dict
    from vlmtune.train.run import write_config

    cfg, pipe = make(model_dir, "train.max_steps=3", "train.lr=5e-3", "adapters.language.dropout=0")
    Trainer(pipe, cfg, records, tmp_path / "run", quiet=True).fit()
    save_adapter(pipe.model, tmp_path / "run" / "adapter", cfg.adapters.specs(), str(model_dir))
    write_config(tmp_path / "run", to_dict(cfg))
    batch = pipe.collate(records[:4], train=False)
    with torch.no_grad():
        want_logits = pipe.model(**{k: v for k, v in batch.items() if k != "ids"}).logits
    want = pipe.generate(batch, max_new_tokens=6)

    assert cli_main(["merge", str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    pipe.model = merged  # same tokenizer / processor, plain merged weights
    with torch.no_grad():
        got_logits = merged(**{k: v for k, v in batch.items() if k != "ids"}).logits
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    assert pipe.generate(batch, max_new_tokens=6) == want
