"""FSDP2 (vlmtune.train.fsdp): 2 CPU processes (gloo) with parameters sharded per layer == 1 process,
for LoRA and DoRA; the frozen base is sharded; resume under 2 and under 1 process."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from test_distributed import logits, losses, overrides

from vlmtune.core.config import ConfigError, load_config
from vlmtune.train import command
from vlmtune.train.checkpoint import checkpoint_dirs, trainable_tensors

STEPS = 5


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["VLMTUNE_CACHE"] = str(path)  # the forked processes read the same shapes images
    yield path
    os.environ.pop("VLMTUNE_CACHE", None)


def fsdp_overrides(model_dir: Path, method: str) -> list[str]:
    """The data-parallel test's run with ``method`` on the language model; DoRA also goes on the
    vision tower (its encoder layers are FSDP units too)."""
    towers = ["language"] + (["vision"] if method == "dora" else [])
    args = [f"adapters.{t}.{k}" for t in towers for k in (f"method={method}", "r=4", "alpha=8", "dropout=0")]
    return [*overrides(model_dir), *args, f"train.max_steps={STEPS}"]


def _worker(
    rank: int, recipe_args: list[str], run_dir: str, resume: str | None, port: int, recipe: str
) -> None:
    from accelerate.state import AcceleratorState

    from vlmtune.train import distributed as ddp

    AcceleratorState._reset_state(reset_partial_state=True)  # the parent's single-process state
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "MASTER_PORT": port}
    os.environ.update({k: str(v) for k, v in env.items()} | {"MASTER_ADDR": "127.0.0.1"})
    torch.set_num_threads(1)
    ddp.init_process_group()
    cfg = load_config(recipe, recipe_args)
    summary = command.run(cfg, Path(run_dir), Path(resume) if resume else None, quiet=True)
    (Path(run_dir) / f"rank{rank}.json").write_text(json.dumps(summary["train"]))


def run_two(
    recipe_args: list[str], run_dir: Path, resume: Path | None = None, recipe: str = "llava-lora"
) -> list[dict]:
    """2 processes forked from this one; returns each process's training summary."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = (recipe_args, str(run_dir), str(resume) if resume else None, port, recipe)
    torch.multiprocessing.start_processes(_worker, args, nprocs=2, start_method="fork")
    return [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_fsdp_two_processes_match_one_and_resume(model_dir, tmp_path, method, capsys) -> None:
    args = fsdp_overrides(model_dir, method)
    single = tmp_path / "single"
    command.run(load_config("llava-lora", args), single, quiet=True)
    ref = losses(single)
    assert sorted(ref) == list(range(1, STEPS + 1)) and len({round(v, 4) for v in ref.values()}) == STEPS

    sharded = tmp_path / "fsdp"
    reports = run_two([*args, "train.fsdp=true"], sharded)
    got = losses(sharded)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert abs(got[step] - ref[step]) < 1e-4, (method, step, got[step], ref[step])
    want, have = trainable_tensors(single / "adapter"), trainable_tensors(sharded / "adapter")
    assert sorted(have) == sorted(want)  # one consolidated file with every trainable tensor
    assert all((have[n] - want[n]).abs().max() < 1e-4 for n in want)
    out_ref, out_fsdp = logits(model_dir, single / "adapter"), logits(model_dir, sharded / "adapter")
    assert (out_ref - out_fsdp).abs().max() < 1e-4
    first = logits(model_dir, checkpoint_dirs(sharded)[0] / "adapter")
    assert (first - out_fsdp).abs().max() > 1e-3  # training moved the outputs: the check has teeth

    # each process holds only its rows of every frozen base weight: half of the frozen elements
    total = reports[0]["frozen_numel"]
    local = [r["frozen_local_numel"] for r in reports]
    assert sum(local) == total and all(abs(n - total / 2) < 0.01 * total for n in local), (local, total)

    ckpt = checkpoint_dirs(sharded)[0]  # save_every=2, keep_last=2: steps 4 and 5 are kept
    assert ckpt.name == "step-000004" and (ckpt / "optimizer").is_dir()
    # resume under 2 processes from step 4: step 5 is the same
    cut = tmp_path / "cut"
    cut.mkdir()
    run_two([*args, "train.fsdp=true"], cut, resume=ckpt)
    assert abs(losses(cut)[5] - got[5]) < 1e-6
    assert (logits(model_dir, cut / "adapter") - out_fsdp).abs().max() < 1e-5

    # resume under 1 process (plain, unsharded): adapter and re-sharded optimizer state restored
    one = tmp_path / "one"
    capsys.readouterr()
    command.run(load_config("llava-lora", args), one, ckpt, quiet=False)
    said = capsys.readouterr().out
    assert "re-initialised per-process RNG streams (saved by 2 process(es), now 1)" in said
    assert abs(losses(one)[5] - got[5]) < 1e-5
    assert (logits(model_dir, one / "adapter") - out_fsdp).abs().max() < 1e-4


def test_fsdp_full_finetune_with_checkpointing_matches_one_process(model_dir, tmp_path) -> None:
    """llava-ft (every language-model weight trainable) with gradient checkpointing: sharded trainable
    weights, one consolidated file of all of them on rank 0, equal to the single-process run."""
    args = [*overrides(model_dir), "train.max_steps=2", "train.lr=1e-3", "model.gradient_checkpointing=true"]
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    command.run(load_config("llava-ft", args), single, quiet=True)
    run_two([*args, "train.fsdp=true"], sharded, recipe="llava-ft")
    ref, got = losses(single), losses(sharded)
    assert sorted(got) == [1, 2] and all(abs(got[s] - ref[s]) < 1e-4 for s in ref), (got, ref)
    want, have = trainable_tensors(single / "adapter"), trainable_tensors(sharded / "adapter")
    assert sorted(have) == sorted(want) and len(want) > 10
    assert any(".layers.0.self_attn.q_proj.weight" in name for name in want)  # a whole base weight
    for name, tensor in want.items():
        assert have[name].shape == tensor.shape and (have[name] - tensor).abs().max() < 1e-4, name


def test_fsdp_bf16_mixed_precision_tracks_fp32(model_dir, tmp_path) -> None:
    """bf16 gathered parameters, fp32 reduce-scatter (MixedPrecisionPolicy), DoRA: close to fp32 and
    not equal to it (the policy is applied)."""
    args = [*fsdp_overrides(model_dir, "dora"), "train.max_steps=3"]
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    command.run(load_config("llava-lora", args), single, quiet=True)
    run_two([*args, "train.fsdp=true", "train.mixed_precision=bf16"], sharded)
    ref, got = losses(single), losses(sharded)
    assert sorted(got) == [1, 2, 3]
    assert all(abs(got[s] - ref[s]) < 5e-3 for s in ref), (got, ref)  # measured: <= 8.4e-4 over 5 steps
    assert any(abs(got[s] - ref[s]) > 1e-6 for s in ref), (got, ref)


def test_fsdp_in_one_process_matches_the_plain_run(model_dir, tmp_path) -> None:
    """``train.fsdp=true`` without a launcher: a process group of one, the same sharded code path
    (DTensors, DCP optimizer folder), the same losses as the plain run."""
    import torch.distributed as dist

    args = [*fsdp_overrides(model_dir, "dora"), "train.max_steps=2"]
    command.run(load_config("llava-lora", args), tmp_path / "plain", quiet=True)
    try:
        command.run(load_config("llava-lora", [*args, "train.fsdp=true"]), tmp_path / "fsdp", quiet=True)
    finally:
        if dist.is_initialized():  # leave no group behind for the forked tests
            dist.destroy_process_group()
    ref, got = losses(tmp_path / "plain"), losses(tmp_path / "fsdp")
    assert sorted(got) == [1, 2] and all(abs(got[s] - ref[s]) < 1e-6 for s in ref), (got, ref)
    assert (checkpoint_dirs(tmp_path / "fsdp")[-1] / "optimizer").is_dir()


def test_fsdp_refuses_what_it_cannot_do_with_one_line() -> None:
    from vlmtune.train.fsdp import check_config

    cfg = load_config("llava-lora", ["train.fsdp=true", "train.mixed_precision=fp16"])
    with pytest.raises(ConfigError, match="^train.fsdp=true supports train.mixed_precision=bf16 or no"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="^train.fsdp=true with model.load_in_4bit=true is not supported"):
        check_config(load_config("llava-lora", ["train.fsdp=true", "model.load_in_4bit=true"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^train.fsdp_offload=true needs CUDA"):
            check_config(load_config("llava-lora", ["train.fsdp=true", "train.fsdp_offload=true"]))


@pytest.mark.slow  # 4 interpreter start-ups (2 launchers, 2 workers): ~60 s on 2 cores
def test_two_nodes_through_c10d_rendezvous_match_one_process(model_dir, tmp_path) -> None:
    """2 "nodes" x 1 process on localhost, each its own ``torchrun`` meeting at a c10d rendezvous
    (the multi-node command of the README with 127.0.0.1 as the endpoint), FSDP2 across nodes."""
    import subprocess
    import sys

    from test_distributed import ROOT

    args = fsdp_overrides(model_dir, "lora")
    single = tmp_path / "single"
    command.run(load_config("llava-lora", args), single, quiet=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = tmp_path / "nodes"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1"]
    launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=vlmtune-test"]
    train = ["-m", "vlmtune", "train", "llava-lora", *args, "train.fsdp=true", "--output-dir", str(nodes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [*launcher, *train, "--quiet"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    ref, got = losses(single), losses(nodes)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert abs(got[step] - ref[step]) < 1e-4, (step, got[step], ref[step])
    assert (logits(model_dir, single / "adapter") - logits(model_dir, nodes / "adapter")).abs().max() < 1e-4
