"""Multi-task batching as in VL-Adapter / VL-T5: every batch holds one task, tasks take turns.

An epoch visits every record once. Each task's records are shuffled (seeded by ``seed + epoch``)
and cut into batches of that task's own size; the batches are then interleaved round-robin
(``vqa, caption, nlvr, vqa, caption, nlvr, ...``), a task leaving the rotation when its batches run
out. So per epoch task ``t`` contributes ``ceil(n_t / b_t)`` batches, and while all tasks still
have batches, each gets one turn per cycle.

The plan is a list of index batches into the record list: a ``DataLoader(batch_sampler=...)`` takes
it directly, and it is a pure function of ``(records' tasks, sizes, seed, epoch)``, so a resumed run
rebuilds the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from vlmtune.data.errors import DataError


def task_indices(tasks: Sequence[str]) -> dict[str, list[int]]:
    """Task -> positions of its records, tasks in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(t, []).append(i)
    return groups


def round_robin_batches(
    tasks: Sequence[str],
    batch_sizes: dict[str, int] | int,
    seed: int = 0,
    epoch: int = 0,
    default_batch_size: int = 16,
    shuffle: bool = True,
) -> list[list[int]]:
    """Index batches for one epoch: single-task batches of ``batch_sizes[task]``, round-robin.

    ``tasks[i]`` is the task of record ``i``; a task missing from ``batch_sizes`` uses
    ``default_batch_size``. Raises :class:`DataError` for a size <= 0.
    """
    groups = task_indices(tasks)
    per_task: list[list[list[int]]] = []
    for k, (task, idx) in enumerate(groups.items()):
        bs = batch_sizes if isinstance(batch_sizes, int) else batch_sizes.get(task, default_batch_size)
        if bs <= 0:
            raise DataError(f"data.task_batch_sizes.{task} must be > 0, got {bs}")
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + k)
            idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        per_task.append([idx[i : i + bs] for i in range(0, len(idx), bs)])
    plan: list[list[int]] = []
    for turn in range(max((len(b) for b in per_task), default=0)):
        plan.extend(batches[turn] for batches in per_task if turn < len(batches))
    return plan


def batches_per_epoch(
    tasks: Sequence[str], batch_sizes: dict[str, int] | int, default_batch_size: int = 16
) -> int:
    groups = task_indices(tasks)
    total = 0
    for task, idx in groups.items():
        bs = batch_sizes if isinstance(batch_sizes, int) else batch_sizes.get(task, default_batch_size)
        total += math.ceil(len(idx) / bs)
    return total


class RoundRobinBatchSampler(Sampler[list[int]]):
    """``DataLoader(records, batch_sampler=RoundRobinBatchSampler(...))``; call ``set_epoch(e)``."""

    def __init__(
        self,
        tasks: Sequence[str],
        batch_sizes: dict[str, int] | int,
        seed: int = 0,
        default_batch_size: int = 16,
    ) -> None:
        self.tasks, self.batch_sizes, self.seed = list(tasks), batch_sizes, seed
        self.default_batch_size = default_batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(
            round_robin_batches(self.tasks, self.batch_sizes, self.seed, self.epoch, self.default_batch_size)
        )

    def __len__(self) -> int:
        return batches_per_epoch(self.tasks, self.batch_sizes, self.default_batch_size)
