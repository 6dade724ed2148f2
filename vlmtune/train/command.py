"""``vlmtune train RECIPE [key=value ...] [--resume [RUN]]``: train, evaluate before/after, save.

Prints the trainable-parameter report, a progress bar, then the benchmark score of the base model
and of the tuned model; everything lands in the run folder (see vlmtune.train.run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vlmtune.core.config import ConfigError, RunConfig, applied_model_defaults, load_config, to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name from configs/ (or a YAML path)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="RUN",
        help="continue from the newest checkpoint of RUN (a run folder or checkpoint; default: latest run)",
    )
    parser.add_argument("--output-dir", default=None, help="run folder (default: train.output_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--num-processes",
        type=int,
        default=0,
        metavar="N",
        help="data-parallel processes on this machine (re-launches through torchrun; default: "
        "train.num_processes). Several machines: accelerate launch -m vlmtune train ...",
    )


# keys a resumed run may change: how long to train and how to log/evaluate, not what is trained
RESUMABLE = ("train.max_steps", "train.epochs", "train.output_dir", "train.num_processes", "train.log_every",
             "train.save_every", "train.keep_last", "train.eval_at_start", "train.eval_at_end", "eval.",
             "data.num_workers", "data.max_eval_samples")  # fmt: skip


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_config(run: Path, cfg: RunConfig) -> None:
    """A resumed run trains what its folder's ``config.yaml`` says: any other difference is one line naming
    the keys (only the :data:`RESUMABLE` ones may change)."""
    import yaml

    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flat(yaml.safe_load(saved_path.read_text()) or {}), _flat(to_dict(cfg))
    differ = sorted(
        k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE)
    )
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ[:3])
        more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConfigError(
            f"--resume: {run} was trained with another config: {shown}{more}; resume with the same recipe and "
            "overrides (only steps, epochs, logging and evaluation may change) or start a new run"
        )


def _resolve_resume(arg: str, cfg: RunConfig) -> tuple[Path, Path | None]:
    """(run folder, checkpoint folder) for ``--resume``."""
    from vlmtune.train.checkpoint import checkpoint_dirs, newest_loadable_checkpoint
    from vlmtune.train.run import latest_run_dir

    if arg == "latest":
        run = latest_run_dir(cfg.train.output_dir, cfg.recipe)
        if run is None:
            raise ConfigError(
                f"--resume: no run folder matches {cfg.train.output_dir.format(recipe=cfg.recipe)}"
            )
    else:
        run = Path(arg)
    if (run / "done").is_file() and run.parent.name == "checkpoints":
        return run.parent.parent, run
    if not run.is_dir():
        raise ConfigError(f"--resume: run folder {run} does not exist")
    check_same_config(run, cfg)
    ckpt = newest_loadable_checkpoint(run, say=lambda msg: print(msg, flush=True))
    if ckpt is None and checkpoint_dirs(run):
        raise ConfigError(f"--resume: no checkpoint of {run} can be read (see above); start a new run")
    if ckpt is None:  # killed before its first complete checkpoint: nothing to lose, start over
        print(f"--resume: {run} has no complete checkpoint yet; starting from step 0", flush=True)
    elif ckpt != checkpoint_dirs(run)[-1]:
        print(f"--resume: resuming from {ckpt.name}, the newest checkpoint that loads", flush=True)
    return run, ckpt


def run(cfg: RunConfig, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir``; returns the eval summary written to ``eval.json``."""
    from vlmtune.adapters import attach, save_adapter
    from vlmtune.core.io import atomic_write_json
    from vlmtune.data.errors import ErrorLog
    from vlmtune.data.records import load_split
    from vlmtune.eval.conversation import benchmark_for
    from vlmtune.presets import build_pipeline
    from vlmtune.train import distributed as ddp
    from vlmtune.train.evaluate import describe, evaluate, headline
    from vlmtune.train.fsdp import consolidated
    from vlmtune.train.run import write_config
    from vlmtune.train.trainer import Trainer, seed_everything

    t0 = time.perf_counter()
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, flush=True))
    seed_everything(cfg.train.seed)
    main_proc = ddp.is_main()  # with several processes only the main one evaluates and writes
    say = say if main_proc else (lambda *_: None)
    if main_proc:
        write_config(run_dir, to_dict(cfg))
    if applied_model_defaults(cfg):
        say(
            f"recipe settings for {cfg.model.name_or_path}: {applied_model_defaults(cfg)} (type a key to change it)"
        )
    errors = ErrorLog()
    with ddp.main_process_first():  # the main process fills the dataset cache
        train_records = load_split(cfg, cfg.data.train, "train", cfg.data.max_train_samples, errors)
    if cfg.data.turns_per_image > 1:
        from vlmtune.data.multiturn import pack_turns

        train_records = pack_turns(
            train_records, cfg.data.turns_per_image, cfg.data.template_seed, cfg.train.seed
        )
    eval_records = (
        load_split(cfg, cfg.data.eval, "test", cfg.data.max_eval_samples, errors) if cfg.data.eval else []
    )
    if errors.count:
        errors.write(run_dir / "data_errors.json")
        say(f"data: {errors.summary()}")
    if (chosen := benchmark_for(eval_records, cfg.eval.benchmark)) != cfg.eval.benchmark:
        say(f"eval: data.eval holds conversations: benchmark {chosen} instead of {cfg.eval.benchmark} "
            f"(answers generated up to eval.max_new_tokens={cfg.eval.max_new_tokens} tokens)")  # fmt: skip
        cfg.eval.benchmark = chosen
        if main_proc:  # the run folder says what was evaluated (`vlmtune eval RUN` reads it)
            write_config(run_dir, to_dict(cfg))
    pipeline = build_pipeline(cfg)
    say(f"run folder: {run_dir}  |  train {len(train_records)} records, eval {len(eval_records)}")
    summary: dict = {"recipe": cfg.recipe, "benchmark": cfg.eval.benchmark, "eval_records": len(eval_records)}
    if main_proc and eval_records and cfg.train.eval_at_start:
        base = evaluate(pipeline, eval_records, cfg.eval, run_dir / "eval" / "base", progress=not quiet)
        summary["base"] = base
        say(f"base  model {cfg.eval.benchmark}: {describe(base)}")
    seed_everything(cfg.train.seed)
    attach(pipeline.model, pipeline.towers, cfg.adapters.specs())
    trainer = Trainer(pipeline, cfg, train_records, run_dir, quiet=quiet)
    summary["train"] = trainer.fit(resume_from=resume_from)
    with consolidated(pipeline.model):  # FSDP: every process sends its shards to the main one
        if main_proc:
            save_adapter(pipeline.model, run_dir / "adapter", cfg.adapters.specs(), cfg.model.name_or_path)
    if not main_proc:
        ddp.barrier()  # wait for the main process's adapter and evaluation
        return summary
    if eval_records and cfg.train.eval_at_end and trainer.sharded:
        say(f"FSDP run: no evaluation in the training processes; run `vlmtune eval {run_dir}`")
    elif eval_records and cfg.train.eval_at_end:
        tuned = evaluate(pipeline, eval_records, cfg.eval, run_dir / "eval" / "tuned", progress=not quiet)
        summary["tuned"] = tuned
        value = headline(tuned)[1]
        line = f"tuned model {cfg.eval.benchmark}: {describe(tuned)}"
        if "base" in summary and headline(summary["base"])[1] is not None and value is not None:
            summary["delta"] = value - headline(summary["base"])[1]
            line += f"  ({summary['delta']:+.2f} vs base)"
        say(line)
    summary["wall_seconds"] = time.perf_counter() - t0
    atomic_write_json(summary, run_dir / "eval.json")
    say(f"saved adapter to {run_dir / 'adapter'}, results to {run_dir / 'eval.json'}")
    ddp.barrier()
    return summary


def relaunch(args: argparse.Namespace, num_processes: int) -> int:
    """``vlmtune train ... --num-processes N``: the same command in N processes on this machine
    (``torchrun --standalone``; gloo on CPU, nccl on CUDA). Returns the launcher's exit code."""
    import subprocess
    import sys

    argv = ["train", args.recipe, *args.overrides]
    argv += ["--resume", args.resume] if args.resume else []
    argv += ["--output-dir", args.output_dir] if args.output_dir else []
    argv += ["--quiet"] if args.quiet else []
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
    ]
    return subprocess.run([*launcher, "-m", "vlmtune", *argv], check=False).returncode


def main(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from vlmtune.core.io import claim
    from vlmtune.models.qlora import check_4bit
    from vlmtune.train import distributed as ddp
    from vlmtune.train.fsdp import check_config as check_fsdp
    from vlmtune.train.run import new_run_dir
    from vlmtune.train.trainer import TrainingError

    cfg = load_config(args.recipe, args.overrides)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    check_4bit(cfg)
    if cfg.train.fsdp:  # before any process starts or loads weights
        check_fsdp(cfg)
    num_processes = getattr(args, "num_processes", 0) or cfg.train.num_processes
    if num_processes > 1 and ddp.launched_world_size() == 1:
        return relaunch(args, num_processes)
    ddp.init_process_group()
    choice: tuple | ConfigError | None = None
    if ddp.is_main():  # one run folder for all processes
        try:
            if args.resume:
                choice = _resolve_resume(args.resume, cfg)
            else:
                choice = (new_run_dir(cfg.train.output_dir, cfg.recipe), None)
        except ConfigError as e:
            choice = e
    choice = ddp.broadcast_object(choice)
    if isinstance(choice, ConfigError):
        raise choice
    run_dir, resume_from = choice
    try:
        with claim(run_dir) if ddp.is_main() else nullcontext():  # one run per folder
            run(cfg, run_dir, resume_from, quiet=args.quiet)
    except TrainingError as e:
        print(f"vlmtune train: error: {e}", flush=True)
        return 1
    return 0
