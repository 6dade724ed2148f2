"""Data parallelism for the shared trainer: one global batch, sharded over processes.

The global batch of an optimizer step is the same as in a single-process run: ``grad_accum``
micro-batches of ``batch_size`` indices. Process ``r`` of ``W`` takes the ``r``-th contiguous slice
of every micro-batch. With a loss that is a mean over ``C_m`` terms (supervised tokens, or samples)
the single-process step loss is ``L = 1/A sum_m S_m / C_m`` (``S_m``: summed per-term losses of
micro-batch ``m``, ``A = grad_accum``). Process ``r`` computes ``L_{m,r} = S_{m,r} / C_{m,r}`` and
back-propagates ``L_{m,r} * C_{m,r} / (C_m A)``; summing the gradients over processes
(:func:`reduce_gradients`) then gives exactly ``dL`` -- no mean-of-means error when shard sizes
or token counts differ. A process whose slice is empty (a short last micro-batch) runs one
real record with weight 0, so every process does the same collectives.

Launch with ``accelerate launch -m vlmtune train RECIPE`` (or ``torchrun``); on CPU the backend
is gloo. Only the main process writes files (:func:`is_main`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

IGNORE_INDEX = -100
# accelerate DistributedType values the trainer handles (FSDP / DeepSpeed shard parameters: not yet)
SUPPORTED = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU")


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by the launcher (``accelerate launch`` / ``torchrun``), before init."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_process_group() -> tuple[int, int]:
    """Initialise the process group of a launched run through ``accelerate`` (gloo on CPU, nccl
    on CUDA); a no-op in a single-process run. Returns ``(rank, world size)``."""
    if launched_world_size() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    return world()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process (picklable objects, e.g. a run folder path)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over processes of a few float64 scalars (one collective)."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """The ``rank``-th of ``world_size`` contiguous, balanced slices (sizes differ by at most 1)."""
    n = len(indices)
    return indices[rank * n // world_size : (rank + 1) * n // world_size]


def loss_terms(batch: dict[str, Any], pipeline: Any = None) -> int:
    """How many terms the pipeline's mean loss averages over: ``pipeline.loss_terms(batch)`` if the
    pipeline defines it, else the label entries ``!= -100`` (supervised tokens of LLaVA /
    VL-BART, whose first label is always a masked prompt token; one per sample for classifiers),
    else the number of samples."""
    if pipeline is not None and hasattr(pipeline, "loss_terms"):
        return int(pipeline.loss_terms(batch))
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor):
        return int((labels != IGNORE_INDEX).sum())
    first = next(iter(batch.values()))
    return len(first) if hasattr(first, "__len__") else 1


def loss_weight(terms: int, total_terms: float, grad_accum: int) -> float:
    """Factor on a process's micro-batch loss: ``C_{m,r} / (C_m A)`` (0 when ``C_m`` is 0)."""
    return terms / (total_terms * grad_accum) if total_terms > 0 else 0.0


@torch.no_grad()
def reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over processes (the losses are pre-weighted, see the module docstring).

    One flat all-reduce per dtype. A parameter without a gradient on some process counts as 0
    there; one without a gradient on every process keeps ``grad=None`` (the optimizer skips it, as
    it would in a single-process run)."""
    if world()[1] == 1 or not params:
        return
    device = _comm_device()
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in live:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group]).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def _comm_device() -> torch.device:
    """Tensors for collectives live on the current CUDA device under nccl, else on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class NullLogger:
    """Stands in for ``MetricsLogger`` on processes other than the main one."""

    def log(self, record: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def main_process_first():
    """The main process runs the block first (e.g. to fill a dataset cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
