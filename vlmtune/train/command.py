"""``vlmtune train RECIPE [key=value ...] [--resume [RUN]]``: train, evaluate before/after, save.

Prints the trainable-parameter report, a progress bar, then the benchmark score of the base model
and of the tuned model; everything lands in the run folder (see vlmtune.train.run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmtune.core.config import ConfigError, RunConfig, load_config, to_dict


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
    parser.add_argument(
        "--data-changed-ok",
        action="store_true",
        help="--resume even though the training data differs from the run's (count or contents)",
    )
    parser.add_argument("--output-dir", default=None, help="run folder (default: train.output_dir)")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no messages, errors only (results: the run folder's eval.json)",
    )
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


def typed_keys(overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The dotted keys of ``key=value`` overrides (``train.lr=1e-4`` -> ``train.lr``)."""
    from vlmtune.core.config import parse_override

    return {".".join(parse_override(text)[0]) for text in overrides}


def check_same_config(run: Path, cfg: RunConfig, typed: set[str] | None = None) -> None:
    """A resumed run trains what its folder's ``config.yaml`` says: any other difference is one line naming
    the keys (only the :data:`RESUMABLE` ones may change). ``typed``: compare only these keys (and what
    they contain) and the recipe, for a ``cfg`` built on the run's own config (:func:`resumed_config`)."""
    import yaml

    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = _flat(yaml.safe_load(saved_path.read_text()) or {}), _flat(to_dict(cfg))

    def compared(key: str) -> bool:
        return typed is None or key == "recipe" or any(key == t or key.startswith(t + ".") for t in typed)

    differ = sorted(
        k
        for k in saved.keys() | now.keys()
        if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE) and compared(k)
    )
    if differ:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in differ[:3])
        more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConfigError(
            f"--resume: {run} was trained with another config: {shown}{more}; resume with the same recipe and "
            "overrides (only steps, epochs, logging and evaluation may change) or start a new run"
        )


def find_run(arg: str, cfg: RunConfig) -> tuple[Path, Path | None]:
    """(run folder, the checkpoint ``arg`` names or None) for ``--resume [arg]`` (``latest``: the newest
    run folder of ``cfg``'s recipe)."""
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
    if run.is_file():
        raise ConfigError(
            f"--resume: {run} is a file, not a run folder; name the run folder (or a checkpoint)"
        )
    if not run.is_dir():
        raise ConfigError(f"--resume: run folder {run} does not exist")
    return run, None


def resumed_config(run: Path, cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """The config ``--resume`` trains with: the run's own ``config.yaml`` (read from any directory by
    :func:`~vlmtune.recipes.run_folder.run_config`) with only the keys typed now on top; ``cfg`` (the
    recipe + overrides) for a folder without one that holds a complete vlmtune checkpoint (e.g. one copied
    out of a run). Any other folder is not a run (a user's own folder): refused before anything is written
    there. Typed keys that change what is trained, or another recipe, are refused (:func:`check_same_config`)."""
    from vlmtune.recipes.run_folder import run_config
    from vlmtune.train.checkpoint import checkpoint_dirs

    if not (run / "config.yaml").is_file():
        if checkpoint_dirs(run):
            return cfg
        raise ConfigError(
            f"--resume: {run} is not a run folder (no config.yaml); name a run folder that vlmtune train made, "
            "or drop --resume to start a new run"
        )
    resumed = run_config(run, overrides)
    recipe, resumed.recipe = resumed.recipe, cfg.recipe  # the recipe typed now, compared with the run's
    check_same_config(run, resumed, typed_keys(overrides))
    resumed.recipe = recipe
    return resumed


def _resolve_resume(arg: str, cfg: RunConfig, typed: set[str] | None = None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint folder) for ``--resume``; ``typed``: see :func:`check_same_config`."""
    from vlmtune.train.checkpoint import checkpoint_dirs, newest_loadable_checkpoint

    run, named = find_run(arg, cfg)
    if named is not None:
        return run, named
    check_same_config(run, cfg, typed)
    ckpt = newest_loadable_checkpoint(run, say=lambda msg: print(msg, flush=True))
    if ckpt is None and checkpoint_dirs(run):
        raise ConfigError(f"--resume: no checkpoint of {run} can be read (see above); start a new run")
    if ckpt is None:  # killed before its first complete checkpoint: nothing to lose, start over
        print(f"--resume: {run} has no complete checkpoint yet; starting from step 0", flush=True)
    elif ckpt != checkpoint_dirs(run)[-1]:
        print(f"--resume: resuming from {ckpt.name}, the newest checkpoint that loads", flush=True)
    return run, ckpt


def interrupted_note(run_dir: Path, recipe: str, save_every: int) -> str:
    """What a Ctrl-C leaves in ``run_dir`` and the command that continues it (one line; '' when nothing was
    written yet)."""
    import shlex

    from vlmtune.train.checkpoint import checkpoint_dirs

    if not (run_dir / "config.yaml").is_file():
        return ""
    again = f"vlmtune train {shlex.quote(recipe)} --resume {shlex.quote(str(run_dir))}"
    ckpts = checkpoint_dirs(run_dir)
    if ckpts:
        step = int(ckpts[-1].name.split("-")[-1])
        return f"{run_dir}: newest complete checkpoint at step {step}; continue with: {again}"
    if not save_every:
        return (
            f"{run_dir}: no checkpoint: set train.save_every=N to be able to resume "
            f"(`{again} train.save_every=N` starts it over at step 0)"
        )
    return f"{run_dir}: no checkpoint yet (train.save_every={save_every}); `{again}` starts it over at step 0"


def say_redirected(named: Path, chosen: Path) -> None:
    """``--output-dir DIR`` names a folder that is not empty: train never writes into it (it numbers the run
    ``DIR-2``, as for ``runs/<recipe>``) and says so on stderr, also with ``--quiet``."""
    import sys

    if chosen != named:
        print(
            f"vlmtune train: {named} is not empty (not a run of this recipe?); writing to {chosen}; "
            f"use --resume {named} to continue a run there",
            file=sys.stderr,
            flush=True,
        )


def run(
    cfg: RunConfig,
    run_dir: Path,
    resume_from: Path | None = None,
    quiet: bool = False,
    data_changed_ok: bool = False,
) -> dict:
    """Train ``cfg`` into ``run_dir`` (:func:`vlmtune.recipes.finetune` on the preset-aware builder); returns
    the eval summary written to ``eval.json``."""
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes import finetune

    return finetune(cfg, run_dir, build_pipeline, resume_from, quiet, data_changed_ok)


def relaunch(args: argparse.Namespace, num_processes: int) -> int:
    """``vlmtune train ... --num-processes N``: the same command in N processes on this machine
    (``torchrun --standalone``; gloo on CPU, nccl on CUDA). Returns the launcher's exit code."""
    import subprocess
    import sys

    argv = ["train", args.recipe, *args.overrides]
    argv += ["--resume", args.resume] if args.resume else []
    argv += ["--output-dir", args.output_dir] if args.output_dir else []
    argv += ["--quiet"] if args.quiet else []
    argv += ["--data-changed-ok"] if getattr(args, "data_changed_ok", False) else []
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={num_processes}",
    ]
    return subprocess.run([*launcher, "-m", "vlmtune", *argv], check=False).returncode


def main(args: argparse.Namespace) -> int:
    import sys
    from contextlib import nullcontext

    from vlmtune.core.errors import USER_ERRORS as user_error_types_
    from vlmtune.core.io import claim
    from vlmtune.models.qlora import check_4bit
    from vlmtune.recipes.run_folder import absolute_model_path
    from vlmtune.train import distributed as ddp
    from vlmtune.train.fsdp import check_config as check_fsdp
    from vlmtune.train.run import first_missing, next_run_dir, remove_if_empty, remove_if_unstarted
    from vlmtune.train.trainer import TrainingError

    cfg = load_config(args.recipe, args.overrides)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # stderr is for the one-line error
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    if not args.resume:
        absolute_model_path(cfg)  # the run records its base from any directory
    resume_arg, typed = args.resume, None
    if args.resume:  # the run's own config, with only what is typed now on top
        run_folder, named = find_run(args.resume, cfg)
        cfg = resumed_config(run_folder, cfg, args.overrides)
        if args.output_dir:
            cfg.train.output_dir = args.output_dir
        resume_arg, typed = str(named or run_folder), typed_keys(args.overrides)
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
                choice = _resolve_resume(resume_arg, cfg, typed)
            else:
                choice = (next_run_dir(cfg.train.output_dir, cfg.recipe), None)
                if args.output_dir:
                    say_redirected(Path(cfg.train.output_dir.format(recipe=cfg.recipe or "run")), choice[0])
        except ConfigError as e:
            choice = e
    choice = ddp.broadcast_object(choice)
    if isinstance(choice, ConfigError):
        raise choice
    run_dir, resume_from = choice
    fresh = not run_dir.exists()
    created = first_missing(run_dir)  # the folders this run makes (its parents too, when new)
    try:
        with claim(run_dir) if ddp.is_main() else nullcontext():  # one run per folder
            run(cfg, run_dir, resume_from, quiet=args.quiet, data_changed_ok=args.data_changed_ok)
    except TrainingError as e:
        print(f"vlmtune train: error: {e}", flush=True)
        return 1
    except user_error_types_:
        if fresh and ddp.is_main():
            remove_if_unstarted(run_dir, created)  # stopped before the first checkpoint: leave no run folder
        raise
    except KeyboardInterrupt:  # cli prints "interrupted" (exit 130); say what is left and how to go on
        if ddp.is_main():
            if fresh:
                remove_if_empty(run_dir)
            note = interrupted_note(run_dir, args.recipe, cfg.train.save_every)
            if note:
                print(f"vlmtune train: {note}", file=sys.stderr, flush=True)
        raise
    return 0
