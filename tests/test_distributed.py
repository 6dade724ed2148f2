"""Data-parallel training: 2 CPU processes (gloo) == 1 process with the same global batch; resume
under 2 processes; QLoRA refusal on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmtune.adapters import load_adapter
from vlmtune.core.config import ConfigError, load_config
from vlmtune.data.records import load_split
from vlmtune.models import build_pipeline
from vlmtune.models.qlora import unavailable_reason
from vlmtune.train import command
from vlmtune.train.checkpoint import checkpoint_dirs
from vlmtune.train.distributed import loss_weight, shard
from vlmtune.train.run import read_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["VLMTUNE_CACHE"] = str(path)  # the launched processes read the same shapes images
    yield path
    os.environ.pop("VLMTUNE_CACHE", None)


def overrides(model_dir: Path) -> list[str]:
    """25 records, micro-batches of 4: the 7th micro-batch has 1 record (one process gets none),
    and 4 steps of 2 micro-batches cross into the second epoch."""
    return [
        f"model.name_or_path={model_dir}",
        "adapters.language.r=4",
        "adapters.language.alpha=8",
        "adapters.language.dropout=0",
        "data.shapes_size=5",
        "data.eval=",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.max_steps=4",
        "train.save_every=2",
        "train.log_every=1",
        "train.lr=1e-2",
        "train.projector_lr=1e-2",
        "train.warmup_ratio=0",
        "train.eval_at_start=false",
        "train.eval_at_end=false",
    ]


def launch(args: list[str], cwd: Path) -> None:
    cmd = [sys.executable, "-m", "vlmtune", "train", "llava-lora", *args, "--quiet", "--num-processes", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _worker(rank: int, argv: list[str], port: int) -> None:
    from accelerate.state import AcceleratorState

    from vlmtune import cli

    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's single-process state
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()} | {"MASTER_ADDR": "127.0.0.1"})
    torch.set_num_threads(1)
    assert cli.main(["train", *argv]) == 0


def forked(argv: list[str]) -> None:
    """2 processes forked from this one (no second interpreter start-up), gloo over localhost."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.start_processes(_worker, (argv, port), nprocs=2, start_method="fork")


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def logits(model_dir: Path, adapter: Path) -> torch.Tensor:
    cfg = load_config("llava-lora", [f"model.name_or_path={model_dir}", "data.shapes_size=5"])
    pipe = build_pipeline(cfg)
    load_adapter(pipe.model, adapter, pipe.towers)
    records = load_split(cfg, "shapes:vqa", "train", 4, errors=None)
    batch = pipe.collate(records, train=True)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        return pipe.model.eval()(**inputs).logits


@pytest.mark.slow  # launches two torchrun processes
def test_two_processes_match_one_and_resume(model_dir, tmp_path) -> None:
    single = tmp_path / "single"
    cfg = load_config("llava-lora", overrides(model_dir))
    command.run(cfg, single, quiet=True)
    ref = losses(single)
    assert sorted(ref) == [1, 2, 3, 4] and len({round(v, 4) for v in ref.values()}) == 4

    ddp = tmp_path / "ddp"
    launch([*overrides(model_dir), "--output-dir", str(ddp)], tmp_path)
    got = losses(ddp)
    assert sorted(got) == [1, 2, 3, 4]
    for step in ref:
        assert abs(got[step] - ref[step]) < 1e-4, (step, got[step], ref[step])
    out_single, out_ddp = logits(model_dir, single / "adapter"), logits(model_dir, ddp / "adapter")
    assert (out_single - out_ddp).abs().max() < 1e-4
    base = logits(model_dir, ddp / "checkpoints" / "step-000002" / "adapter")
    assert (base - out_ddp).abs().max() > 1e-3  # training moved the outputs: the check has teeth

    # resume under 2 processes from the step-2 checkpoint: same batches, same losses, same adapter
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(ddp / "checkpoints" / "step-000002", cut / "checkpoints" / "step-000002")
    forked(["llava-lora", *overrides(model_dir), "--resume", str(cut), "--quiet"])
    resumed = losses(cut)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert abs(resumed[step] - got[step]) < 1e-6, (step, resumed[step], got[step])
    state = torch.load(checkpoint_dirs(cut)[-1] / "trainer_state.pt", weights_only=True)
    assert (state["step"], state["micro"]) == (4, 8)  # data position: 8 micro-batches consumed
    assert len(state["rng_ranks"]) == 2
    assert (logits(model_dir, cut / "adapter") - out_ddp).abs().max() < 1e-5
    assert json.loads((cut / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_shards_and_weights_rebuild_the_global_mean() -> None:
    batch = list(range(7))
    parts = [shard(batch, r, 2) for r in range(2)]
    assert parts == [[0, 1, 2], [3, 4, 5, 6]] and shard([9], 1, 2) == [9] and shard([9], 0, 2) == []
    # per-process means of token losses, weighted, sum to the global mean over both micro-batches
    tokens = [
        torch.tensor([1.0, 2.0, 3.0]),
        torch.tensor([4.0]),
        torch.tensor([5.0, 6.0]),
        torch.tensor([7.0]),
    ]
    micro = [tokens[:2], tokens[2:]]  # micro-batch -> [process 0 slice, process 1 slice]
    want = sum(torch.cat(m).mean() for m in micro) / 2
    got = sum(s.mean() * loss_weight(len(s), sum(len(x) for x in m), grad_accum=2) for m in micro for s in m)
    assert abs(float(got) - float(want)) < 1e-6
    assert abs(float(sum(s.mean() for m in micro for s in m) / 4) - float(want)) > 0.1  # mean of means
    assert loss_weight(0, 0, 2) == 0.0


def test_qlora_refuses_on_cpu_with_one_line(capsys) -> None:
    if unavailable_reason() is None:
        pytest.skip("CUDA and bitsandbytes present: the refusal does not apply")
    args = command.argparse.Namespace(
        recipe="llava-lora",
        overrides=["model.load_in_4bit=true"],
        output_dir=None,
        resume=None,
        quiet=True,
        num_processes=0,
    )
    with pytest.raises(ConfigError) as e:
        command.main(args)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("model.load_in_4bit=true needs a CUDA GPU and bitsandbytes; ")
    assert "pip install vlmtune[qlora]" in msg


@pytest.mark.skipif(unavailable_reason() is not None, reason=f"QLoRA: {unavailable_reason()}")
def test_qlora_trains_adapters_on_a_4bit_language_model(model_dir, tmp_path) -> None:
    from vlmtune.models.qlora import is_quantized

    cfg = load_config("llava-lora", [*overrides(model_dir), "model.load_in_4bit=true", "train.max_steps=2"])
    summary = command.run(cfg, tmp_path, quiet=True)
    assert summary["train"]["step"] == 2
    pipe = build_pipeline(cfg)
    assert is_quantized(pipe.model)
    trained = [p for p in load_adapter(pipe.model, tmp_path / "adapter", pipe.towers).parameters()]
    assert trained and all(torch.isfinite(p).all() for p in trained if p.is_floating_point())
