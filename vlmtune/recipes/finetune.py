"""The fine-tune workflow: seed -> build -> attach -> fit -> eval -> save, in one place.

Everything that trains goes through here: ``vlmtune train`` (:func:`finetune`), the presets' builders,
``vlmtune bench`` and the benchmarks (:func:`seeded_pipeline` + :func:`fit`). ``build(cfg) -> Pipeline``
is passed in (the commands pass the preset-aware ``presets.build_pipeline``; recipes sit below presets).

RNG order (what makes runs reproducible, and the shipped presets byte-identical):
``seed_everything(train.seed)`` -> ``build`` -> [``between(pipeline)``, e.g. the base evaluation] ->
[``seed_everything(train.seed)`` again when ``reseed``, so adapter init does not depend on what ran
before] -> ``attach``. Reading records touches no global RNG, so where it happens does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig
    from vlmtune.models.base import Pipeline
    from vlmtune.train.trainer import Trainer

Build = Callable[["RunConfig"], "Pipeline"]


def seeded_pipeline(
    cfg: RunConfig,
    build: Build,
    reseed: bool = False,
    between: Callable[[Pipeline], None] | None = None,
) -> Pipeline:
    """seed -> ``build(cfg)`` -> ``between(pipeline)`` -> [seed again] -> attach ``cfg.adapters``."""
    from vlmtune.adapters import attach
    from vlmtune.train.trainer import seed_everything

    seed_everything(cfg.train.seed)
    pipeline = build(cfg)
    if between is not None:
        between(pipeline)
    if reseed:
        seed_everything(cfg.train.seed)
    attach(pipeline.model, pipeline.towers, cfg.adapters.specs())
    return pipeline


def fit(
    pipeline: Pipeline,
    cfg: RunConfig,
    records: Sequence[dict],
    run_dir: str | Path,
    quiet: bool = True,
    resume_from: str | Path | None = None,
    around: Callable[[Pipeline, Sequence[dict]], AbstractContextManager] | None = None,
) -> tuple[Trainer, dict[str, Any]]:
    """Train ``pipeline`` on ``records`` into ``run_dir``; ``around(pipeline, records)``, when given, is a
    context manager the training runs inside. Returns the trainer and ``fit``'s result."""
    from vlmtune.train.trainer import Trainer

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with around(pipeline, records) if around else nullcontext():
        trainer = Trainer(pipeline, cfg, records, run_dir, quiet=quiet)
        result = trainer.fit(resume_from=resume_from)
    return trainer, result


def finetune(
    cfg: RunConfig,
    run_dir: Path,
    build: Build,
    resume_from: Path | None = None,
    quiet: bool = False,
    data_changed_ok: bool = False,
) -> dict:
    """``vlmtune train``: preflight -> base eval -> attach -> fit -> save adapter -> tuned eval -> ``eval.json``.

    Returns the summary written to ``eval.json``. With several processes only the main one evaluates
    and writes. ``resume_from``: the training data must be the run's (:func:`check_same_data`) unless
    ``data_changed_ok``."""
    from vlmtune.adapters.peft_io import not_in_peft_line
    from vlmtune.core.config import applied_model_defaults, to_dict
    from vlmtune.core.io import atomic_write_json
    from vlmtune.recipes.preflight import preflight, preflight_model
    from vlmtune.recipes.run_folder import (
        TRAIN_DATA_FILE,
        check_same_data,
        data_fingerprint,
        keep_typed_data_paths,
        write_base_identity,
        write_data_paths,
        write_manifest,
    )
    from vlmtune.train import distributed as ddp
    from vlmtune.train.checkpoint import save_final_adapter
    from vlmtune.train.evaluate import describe, evaluate, headline
    from vlmtune.train.fsdp import consolidated
    from vlmtune.train.run import write_config

    t0 = time.perf_counter()
    main_proc = ddp.is_main()  # with several processes only the main one evaluates and writes
    say = (lambda *_: None) if quiet or not main_proc else (lambda msg: print(msg, flush=True))
    if applied_model_defaults(cfg):
        say(
            f"recipe settings for {cfg.model.name_or_path}: {applied_model_defaults(cfg)} (type a key to change it)"
        )
    checked = preflight(cfg, run_dir, say, progress=not quiet and main_proc)  # before the base is loaded
    train_records, eval_records = checked.train, checked.eval
    fingerprint = data_fingerprint(train_records)
    if resume_from is not None:  # before the base is loaded
        check_same_data(run_dir, fingerprint, data_changed_ok, say)
    config = to_dict(
        cfg
    )  # as given: building fills in `targets: [default]`, which --resume compares unfilled
    summary: dict = {"recipe": cfg.recipe, "benchmark": cfg.eval.benchmark, "eval_records": len(eval_records),
                     "eval_records_total": checked.eval_total}  # fmt: skip

    base_info: dict = {}  # the base's identity, also recorded in the adapter folder

    def before_attach(pipeline: Pipeline) -> None:
        preflight_model(pipeline, cfg, checked, say)
        summary["eval_records"] = len(eval_records)  # less the records skipped for this model
        if main_proc:  # all checked: the first writes into the run folder
            write_config(run_dir, keep_typed_data_paths(run_dir, config))  # resumed: as the run typed them
            write_data_paths(run_dir, cfg)  # eval and merge find the data from any directory
            atomic_write_json(fingerprint, run_dir / TRAIN_DATA_FILE)  # what --resume checks
            checked.write(run_dir)
            classes = getattr(pipeline, "classes", None)  # a classifier's head order: eval/merge use it
            base_info.update(write_base_identity(run_dir, cfg.model.name_or_path, pipeline.model, classes))
        if main_proc and eval_records and cfg.train.eval_at_start:
            base = evaluate(
                pipeline, eval_records, cfg.eval, run_dir / "eval" / "base", not quiet, checked.eval_total
            )
            summary["base"] = base
            say(f"base  model {cfg.eval.benchmark}: {describe(base)}")

    pipeline = seeded_pipeline(cfg, build, reseed=True, between=before_attach)
    trainer, summary["train"] = fit(pipeline, cfg, train_records, run_dir, quiet, resume_from)
    with consolidated(pipeline.model):  # FSDP: every process sends its shards to the main one
        if main_proc:
            adapter = save_final_adapter(
                pipeline.model, run_dir, cfg.adapters.specs(), cfg.model.name_or_path, base_info or None
            )
            write_manifest(run_dir, adapter)
            note = not_in_peft_line(adapter)
            if note:
                say(f"{adapter}: {note}")
    if not main_proc:
        ddp.barrier()  # wait for the main process's adapter and evaluation
        return summary
    if eval_records and cfg.train.eval_at_end and trainer.sharded:
        say(f"FSDP run: no evaluation in the training processes; run `vlmtune eval {run_dir}`")
    elif eval_records and cfg.train.eval_at_end:
        tuned = evaluate(
            pipeline, eval_records, cfg.eval, run_dir / "eval" / "tuned", not quiet, checked.eval_total
        )
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
