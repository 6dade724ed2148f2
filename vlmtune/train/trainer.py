"""The training loop shared by every pipeline (LLaVA, VL-BART, ViT), on ``accelerate``.

It only calls ``pipeline.collate(records, train=True)`` and ``pipeline.loss(batch)``; model
specifics stay in the pipeline. Features: gradient accumulation, bf16/fp16 autocast where the
device supports it, warmup + cosine/linear/constant schedules, per-tower learning rates and LoRA+,
gradient clipping, gradient checkpointing, seeded determinism, atomic checkpoints with exact
``resume``, tqdm progress (loss, samples/s), metrics.jsonl + TensorBoard + loss_curve.png.

Data order: micro-batch ``m`` of the run is batch ``m % per_epoch`` of epoch ``m // per_epoch``,
whose sample order is ``randperm(n, seed + epoch)``; the position ``m`` is checkpointed, so a
resumed run sees exactly the batches, dropout masks and updates of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlmtune.adapters.report import format_report, param_report
from vlmtune.core.config import RunConfig
from vlmtune.data.packing import num_samples
from vlmtune.data.sampler import epoch_batch_count, grouped_batches
from vlmtune.models.base import TRUNCATION_SETS, Pipeline, move_batch
from vlmtune.models.qlora import is_quantized
from vlmtune.train import audit, fsdp
from vlmtune.train import distributed as ddp
from vlmtune.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vlmtune.train.optim import build_optimizer, build_scheduler, param_groups
from vlmtune.train.run import MetricsLogger, plot_loss_curve
from vlmtune.train.timing import StepTimer, vision_modules


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message is one line for the user."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels (warn where none exist)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` -> bf16 on CUDA with bf16 support, fp16 on other CUDA devices, else no."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def enable_checkpointing(model) -> bool:
    """Activation (gradient) checkpointing of transformers models, non-reentrant (works with
    frozen embeddings). Returns False for models without the switch."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        return False
    if hasattr(model, "config"):
        model.config.use_cache = False
    return True


def default_num_workers(device: torch.device, processes_on_machine: int = 1) -> int:
    """``data.num_workers`` when unset: 0 on CPU, where every core belongs to the step; on a GPU,
    ``min(4, cores / processes / 2)`` workers decode and collate the next batches while the GPU works."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, max(1, cores // max(1, processes_on_machine) // 2))


def _identity(batch):
    return batch


class CollateInWorker:
    """``pipeline.collate(records, train=True)`` inside a DataLoader worker (``data.num_workers > 0``):
    image decoding and preprocessing overlap the step. A worker's set of truncated records is a copy, so
    the batch carries the ids it added back (:meth:`received` adds them to the pipeline's)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, records: list[dict]) -> dict[str, Any]:
        before = {name: set(getattr(self.pipeline, name, ())) for name in TRUNCATION_SETS}
        batch = self.pipeline.collate(records, train=True)
        for name in TRUNCATION_SETS:
            batch[name] = sorted(set(getattr(self.pipeline, name, ())) - before[name])
        return batch

    @staticmethod
    def received(pipeline: Pipeline, batch: dict[str, Any]) -> dict[str, Any]:
        for name in TRUNCATION_SETS:
            cut = batch.pop(name, ())
            if cut:
                getattr(pipeline, name).update(cut)
        return batch


def _ids(batch: dict[str, Any], limit: int = 8) -> str:
    ids = [str(i) for i in batch.get("ids", [])]
    if not ids:
        return "(ids unknown)"
    return ", ".join(ids[:limit]) + (f" ... (+{len(ids) - limit})" if len(ids) > limit else "")


def out_of_memory_message(step: int, cfg: RunConfig) -> str:
    """One line naming the knobs that lower memory."""
    t = cfg.train
    return (
        f"out of memory at step {step} (train.batch_size={t.batch_size}, data.max_length={cfg.data.max_length}, "
        f"train.mixed_precision={t.mixed_precision}); lower train.batch_size and raise train.grad_accum, "
        "set model.gradient_checkpointing=true, lower data.max_length, or use train.mixed_precision=bf16"
    )


class Trainer:
    """Train ``pipeline.model`` on ``records`` as configured by ``cfg.train``; logs into ``run_dir``."""

    def __init__(
        self,
        pipeline: Pipeline,
        cfg: RunConfig,
        records: Sequence[dict],
        run_dir: str | Path,
        quiet: bool = False,
    ) -> None:
        if len(records) == 0:
            raise TrainingError("the training set is empty; check data.train")
        self.pipeline, self.cfg, self.records = pipeline, cfg, records
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        t = cfg.train
        self.accelerator = Accelerator(
            mixed_precision=resolve_mixed_precision(t.mixed_precision),
            cpu=not torch.cuda.is_available(),
        )
        self.rank, self.world_size = ddp.world()  # data parallel: see vlmtune.train.distributed
        kind = self.accelerator.distributed_type.value
        self.sharded = fsdp.requested(cfg, kind)  # FSDP2 (vlmtune.train.fsdp)
        if kind not in ddp.SUPPORTED and not self.sharded:
            raise TrainingError(
                f"accelerate distributed_type {kind} is not supported by the vlmtune trainer yet; "
                "launch with configs/accelerate/multi_gpu.yaml (data parallel) or train with model.load_in_4bit=true"
            )
        self.quiet = quiet or self.rank != 0
        self.num_workers = cfg.data.num_workers
        if self.num_workers is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            self.num_workers = default_num_workers(self.accelerator.device, local)
        self.micro_per_epoch = self._batches_per_epoch()
        steps = t.max_steps or math.ceil(t.epochs * self.micro_per_epoch / t.grad_accum)
        self.total_steps = max(1, steps)
        model = pipeline.model
        if cfg.model.gradient_checkpointing and enable_checkpointing(model):
            audit.tower_inputs_require_grad(
                model, audit.adapted_prefixes(pipeline.towers, cfg.adapters.specs())
            )
        if self.sharded:  # fully_shard moves one layer at a time to the device, then keeps its shard
            fsdp.check_config(cfg)
            fsdp.shard_model(model, cfg, self.accelerator.device)
        elif not is_quantized(model):  # a 4-bit (QLoRA) model is placed on its GPU when loaded
            model.to(self.accelerator.device)
        self.groups = param_groups(model, pipeline.towers, t, cfg.adapters.specs())
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = self.accelerator.prepare_optimizer(build_optimizer(self.groups, t))
        self.scheduler = build_scheduler(self.optimizer, t, self.total_steps)
        self.step = 0  # optimizer steps done
        self.micro = 0  # micro-batches consumed
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss (train.nonfinite=skip)
        self.gradients_audited = self.sharded  # FSDP holds gradient shards: the audit needs whole tensors

    # ------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.train.seed + epoch)
        return torch.randperm(len(self.records), generator=g).tolist()

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """Index micro-batches of one epoch: the pipeline's plan if it has one (e.g. VL-BART's
        round-robin single-task batches), else ``train.batch_size`` slices of a seeded permutation."""
        plan = getattr(self.pipeline, "epoch_batches", None)
        if plan is not None:
            return plan(self.records, epoch)
        if self.cfg.data.group_by_length:
            return grouped_batches(
                self._signed_lengths(), self.cfg.train.batch_size, self.cfg.train.seed + epoch
            )
        bs, order = self.cfg.train.batch_size, self._epoch_order(epoch)
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    def _batches_per_epoch(self) -> int:
        """``len(self._epoch_batches(e))``: the pipeline's plan, else :func:`epoch_batch_count` (what the
        preflight prints, from the records' modalities)."""
        if getattr(self.pipeline, "epoch_batches", None) is not None:
            return len(self._epoch_batches(0))
        group = self.cfg.data.group_by_length
        with_image = [n > 0 for n in self._signed_lengths()] if group else [True] * len(self.records)
        return epoch_batch_count(with_image, self.cfg.train.batch_size, group)

    def _signed_lengths(self) -> list[int]:
        """Per record: tokens, negative when text-only (computed once, for data.group_by_length)."""
        if getattr(self, "_lengths", None) is None:
            if not hasattr(self.pipeline, "sample_length"):
                raise TrainingError(
                    f"data.group_by_length is not supported by the {self.cfg.model.pipeline} pipeline; "
                    "set data.group_by_length=false"
                )
            self._lengths = [self.pipeline.sample_length(r) for r in self.records]
        return self._lengths

    def _batches(self):
        """``(collated micro-batch, real)`` from position ``self.micro`` on, forever (epoch after
        epoch). With several processes each takes its slice of every micro-batch; an empty slice
        is replaced by the micro-batch's first record with ``real=False`` (weight 0)."""
        while True:
            epoch, start = divmod(self.micro, self.micro_per_epoch)
            full = self._epoch_batches(epoch)[start:]
            if hasattr(self.pipeline, "set_epoch"):  # per-epoch choices in collate (instruction templates)
                self.pipeline.set_epoch(epoch)
            index_batches = [ddp.shard(b, self.rank, self.world_size) or b[:1] for b in full]
            real = [len(ddp.shard(b, self.rank, self.world_size)) > 0 for b in full]
            workers = self.num_workers
            loader = DataLoader(
                self.records,
                batch_sampler=index_batches,
                collate_fn=CollateInWorker(self.pipeline) if workers else _identity,
                num_workers=workers,
                generator=torch.Generator().manual_seed(0),  # keep the global RNG untouched
            )
            for item, is_real in zip(loader, real, strict=True):
                yield (
                    (
                        CollateInWorker.received(self.pipeline, item)
                        if workers
                        else self.pipeline.collate(item, train=True)
                    ),
                    is_real,
                )

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "micro": self.micro,
            **({} if self.sharded else {"optimizer": self.optimizer.state_dict()}),  # FSDP: DCP folder
            "scheduler": self.scheduler.state_dict(),
            **({"rng_ranks": ddp.gather_objects(rng_state())} if self.world_size > 1 else {}),
        }

    def resume(self, ckpt: str | Path) -> None:
        """Trainable tensors, optimizer, scheduler, data position and RNG of checkpoint ``ckpt``; says
        what it re-initialised (another process count, or a DDP checkpoint resumed with FSDP)."""
        state = load_checkpoint(ckpt, self.pipeline.model)
        sharded_optim = Path(ckpt) / fsdp.OPTIMIZER_DIR
        reinit = []
        if sharded_optim.is_dir():  # written by FSDP: re-sharded to this process count
            fsdp.load_optimizer(self.pipeline.model, self._torch_optimizer(), sharded_optim)
        elif self.sharded:
            reinit.append("optimizer state (the checkpoint holds an unsharded one; this run shards it)")
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.micro = state["step"], state["micro"]
        saved_ranks = len(state.get("rng_ranks", [])) or 1
        if saved_ranks == self.world_size and self.world_size > 1:  # every process resumes its own RNG
            set_rng_state(state["rng_ranks"][self.rank])
        elif saved_ranks != self.world_size:
            reinit.append(
                f"per-process RNG streams (saved by {saved_ranks} process(es), now {self.world_size}): "
                "dropout masks differ from an uninterrupted run"
            )
        if reinit:
            self._log(f"resume: adapter weights restored; re-initialised {'; '.join(reinit)}")

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap accelerate's wrapper

    def save(self) -> Path:
        """Checkpoint from the main process (every process must call it: it gathers RNG states)."""
        state, path = self.state(), None
        staged = fsdp.staging_dir(self.run_dir, self.step) if self.sharded else None
        if staged is not None:  # every process writes its optimizer shards
            fsdp.save_optimizer(self.pipeline.model, self._torch_optimizer(), staged)
            ddp.barrier()
        with fsdp.consolidated(self.pipeline.model):  # FSDP: whole trainable tensors on rank 0
            if self.rank == 0:
                path = self._save_checkpoint(state, {fsdp.OPTIMIZER_DIR: staged} if staged else None)
        ddp.barrier()
        return ddp.broadcast_object(path)

    def _save_checkpoint(self, state: dict[str, Any], move_in: dict[str, Path] | None) -> Path:
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.pipeline.model,
            state,
            self.cfg.adapters.specs(),
            getattr(self.pipeline, "name_or_path", None),
            keep_last=self.cfg.train.keep_last,
            move_in=move_in,
        )

    # ------------------------------------------------------------------ loop
    def plan(self) -> str:
        """One line: records, batches per epoch, and the optimizer steps they make, with the rule that
        set them (``train.max_steps`` when > 0, else ``train.epochs`` x batches per epoch / grad_accum)."""
        t = self.cfg.train
        epochs = self.total_steps * t.grad_accum / max(1, self.micro_per_epoch)
        rule = f"train.max_steps={t.max_steps}" if t.max_steps else f"train.epochs={t.epochs:g}"
        own_sizes = getattr(self.pipeline, "batch_sizes_text", None)  # VL-BART: per-task batch sizes
        sizes = f"of {own_sizes(self.records)}" if own_sizes else f"of <= {t.batch_size}"
        return (
            f"plan: {len(self.records):,} records -> {self.micro_per_epoch:,} batches {sizes} per "
            f"epoch (grad_accum {t.grad_accum}) -> {self.total_steps:,} optimizer steps = {epochs:.2f} epochs "
            f"({rule})"
        )

    def _log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def fit(self, resume_from: str | Path | None = None, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (or stop after ``stop_after`` steps, checkpointing first).

        Returns ``{"step", "loss" (mean of the last log window), "train_seconds"}``.
        """
        t = self.cfg.train
        model = self.pipeline.model
        self._log(format_report(param_report(model, self.pipeline.towers)))
        self._log(
            "adapted modules:\n"
            + audit.check_placement(model, self.pipeline.towers, self.cfg.adapters.specs())
        )
        self._log(
            "lr groups: "
            + ", ".join(
                f"{g['name']}={g['lr']:g} ({sum(p.numel() for p in g['params']):,})" for g in self.groups
            )
        )
        self._log(self.plan())
        if resume_from is not None:
            self.resume(resume_from)
        # rows past the step this fit starts from are an abandoned attempt's (past its last checkpoint, or
        # all of them when a run without a checkpoint starts over): the log stays one sequence of steps
        logger = MetricsLogger(self.run_dir, resumed_at=self.step) if self.rank == 0 else ddp.NullLogger()
        dropped = getattr(logger, "dropped", 0)
        note = f" (dropped {dropped} metrics row(s) logged after it)" if dropped else ""
        if resume_from is not None:
            self._log(f"resumed from {resume_from} at step {self.step}{note}")
            if self.step >= self.total_steps:
                self._log(f"nothing to do: the run is at step {self.step} of {self.total_steps}")
        elif dropped:
            self._log(f"starting at step {self.step}: dropped {dropped} metrics row(s) of an earlier attempt")
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=self.quiet, desc="train", dynamic_ncols=True
        )
        batches = self._batches()
        self.timer = StepTimer(self.accelerator.device, vision_modules(model, self.pipeline.towers))
        model.train()
        window_loss, window_steps, window_samples, window_tokens = 0.0, 0, 0, 0
        last_loss = float("nan")
        t0 = tick = time.perf_counter()
        try:
            while self.step < self.total_steps:
                step_loss, grad_norm = self._optimizer_step(batches, t)
                if step_loss is None:  # non-finite, skipped
                    continue
                n_samples, n_tokens = grad_norm[1], grad_norm[2]
                self.step += 1
                window_loss += step_loss
                window_steps += 1
                window_samples += n_samples
                window_tokens += n_tokens
                bar.update(1)
                stop = stop_after is not None and self.step >= stop_after
                last = stop or self.step == self.total_steps  # the step-time summary goes in its row
                if self.step % t.log_every == 0 or last:
                    elapsed = max(time.perf_counter() - tick, 1e-9)
                    last_loss = window_loss / window_steps
                    record = {
                        "loss": last_loss,
                        "grad_norm": grad_norm[0],
                        "samples_per_s": window_samples / elapsed,
                        "tokens_per_s": window_tokens / elapsed,
                        "epoch": self.micro / self.micro_per_epoch,
                        **{f"lr/{g['name']}": g["lr"] for g in self.optimizer.param_groups},
                        **(self.timer.summary() if last else {}),
                    }
                    logger.log(record, self.step)
                    bar.set_postfix(loss=f"{last_loss:.4f}", sps=f"{record['samples_per_s']:.1f}")
                    window_loss, window_steps, window_samples, window_tokens = 0.0, 0, 0, 0
                    tick = time.perf_counter()
                if (t.save_every and self.step % t.save_every == 0) or stop:
                    self.save()
                if stop:
                    break
        finally:
            self.timer.close()
            bar.close()
            logger.close()
        if self.timer.steps:
            self._log(self.timer.format())
        if self.step >= self.total_steps:
            self.save()
        if self.rank == 0:
            plot_loss_curve(self.run_dir)
        model.eval()
        if self.skipped_steps:
            self._log(f"skipped {self.skipped_steps} step(s) with a non-finite loss (train.nonfinite=skip)")
        truncated = getattr(self.pipeline, "truncated_answers", 0)
        if truncated and self.rank == 0:  # a data problem: reported even with --quiet
            print(
                f"warning: {truncated} training record(s) lost answer tokens to data.max_length="
                f"{self.cfg.data.max_length}; raise it to train on whole answers",
                flush=True,
            )
        questions = getattr(self.pipeline, "truncated_questions", 0)
        if questions and self.rank == 0:
            print(
                f"warning: {questions} training record(s) had their question cut to data.max_length="
                f"{self.cfg.data.max_length}; raise it to train on whole questions",
                flush=True,
            )
        return {
            "step": self.step,
            "loss": last_loss,
            "train_seconds": time.perf_counter() - t0,
            "skipped_nonfinite_steps": self.skipped_steps,
            **(fsdp.shard_report(model) if self.sharded else {}),
        }

    def _optimizer_step(self, batches, t) -> tuple[float | None, tuple[float, int, int]]:
        """``grad_accum`` micro-batches, clip, step. Returns (mean loss, (grad norm, samples, tokens))."""
        acc = self.accelerator
        total, samples, tokens = 0.0, 0, 0
        finite = True
        timer = self.timer
        timer.steps += 1
        for _ in range(t.grad_accum):
            with timer.phase("data"):
                batch, real = next(batches)
                batch = move_batch(batch, acc.device)
            self.micro += 1
            if self.world_size > 1:  # this process's share of the global mean loss
                terms = ddp.loss_terms(batch, self.pipeline) if real else 0
                scale = ddp.loss_weight(terms, ddp.all_reduce_sum([terms])[0], t.grad_accum)
            try:
                with acc.autocast(), timer.phase("forward"):
                    loss = self.pipeline.loss(batch)
                if not torch.isfinite(loss):
                    finite = False
                    if self.world_size > 1:  # skip or stop is decided together after the loop
                        if self.sharded:  # FSDP's reduce-scatter runs in backward: every process joins it
                            acc.backward(loss * 0)  # (the gradients are dropped with the step)
                        continue
                    if t.nonfinite == "stop":
                        raise TrainingError(
                            f"non-finite loss ({loss.item()}) at step {self.step + 1}, records "
                            f"{_ids(batch)}; lower train.lr, check those records, or set train.nonfinite=skip"
                        )
                    self.skipped_steps += 1
                    break
                with timer.phase("backward"):
                    acc.backward(loss / t.grad_accum if self.world_size == 1 else loss * scale)
            except torch.OutOfMemoryError:
                raise TrainingError(out_of_memory_message(self.step + 1, self.cfg)) from None
            total += loss.item() / t.grad_accum if self.world_size == 1 else loss.item() * scale
            samples += num_samples(batch)
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if isinstance(mask, torch.Tensor) else 0
        if self.world_size > 1:
            total, samples, tokens, bad = ddp.all_reduce_sum([total, samples, tokens, float(not finite)])
            samples, tokens, finite = int(samples), int(tokens), bad == 0
            if not finite and t.nonfinite == "stop":
                raise TrainingError(
                    f"non-finite loss at step {self.step + 1} on {int(bad)} of {self.world_size} "
                    "processes; lower train.lr, check the data, or set train.nonfinite=skip"
                )
            self.skipped_steps += int(not finite)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None, (0.0, 0, 0)
        if not self.gradients_audited:  # after the first backward (vlmtune.train.audit)
            dead, self.gradients_audited = audit.check_gradients(self.pipeline.model, t.allow_dead_adapters)
            if dead and self.gradients_audited:
                self._log(f"warning: {len(dead)} dead adapter tensor(s) (train.allow_dead_adapters=true)")
        with timer.phase("optimizer"):
            max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
            if self.sharded:  # FSDP reduce-scattered the gradients in backward
                norm = fsdp.clip_grad_norm_(self.params, max_norm)
            else:
                ddp.reduce_gradients(self.params)
                norm = acc.clip_grad_norm_(self.params, max_norm)
            self.optimizer.step()
            if not acc.optimizer_step_was_skipped:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total, (float(norm), samples, tokens)
