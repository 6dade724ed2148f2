"""Round-robin multi-task batching (VL-Adapter): per-task batch sizes, proportions, determinism."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from vlmtune.data.errors import DataError
from vlmtune.data.multitask import RoundRobinBatchSampler, batches_per_epoch, round_robin_batches

TASKS = ["vqa"] * 100 + ["caption"] * 30 + ["nlvr"] * 12


def test_single_task_batches_with_per_task_sizes_cover_the_epoch_once() -> None:
    plan = round_robin_batches(TASKS, {"vqa": 16, "caption": 8, "nlvr": 4}, seed=0, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(len(TASKS)))
    kinds = [{TASKS[i] for i in b} for b in plan]
    assert all(len(k) == 1 for k in kinds)
    per_task = [k.pop() for k in kinds]
    # ceil(100/16)=7, ceil(30/8)=4, ceil(12/4)=3 batches -> mixing proportions 7:4:3 per epoch
    assert {t: per_task.count(t) for t in set(per_task)} == {"vqa": 7, "caption": 4, "nlvr": 3}
    assert len(plan) == batches_per_epoch(TASKS, {"vqa": 16, "caption": 8, "nlvr": 4}) == 14
    sizes = {t: max(len(b) for b, k in zip(plan, per_task) if k == t) for t in ("vqa", "caption", "nlvr")}
    assert sizes == {"vqa": 16, "caption": 8, "nlvr": 4}
    # round robin: one turn each while all tasks have batches left, then the rest
    assert per_task[:9] == ["vqa", "caption", "nlvr"] * 3
    assert per_task[9:] == ["vqa", "caption", "vqa", "vqa", "vqa"]


def test_equal_turns_in_every_window_while_all_tasks_remain() -> None:
    tasks = ["a"] * 64 + ["b"] * 64
    plan = round_robin_batches(tasks, {"a": 8, "b": 2}, seed=1)  # 8 batches of a, 32 of b
    order = [tasks[b[0]] for b in plan]
    assert order[:16] == ["a", "b"] * 8
    assert order[16:] == ["b"] * 24


def test_deterministic_per_epoch_and_reshuffled_across_epochs() -> None:
    sizes = {"vqa": 16, "caption": 8, "nlvr": 4}
    assert round_robin_batches(TASKS, sizes, seed=3, epoch=1) == round_robin_batches(
        TASKS, sizes, seed=3, epoch=1
    )
    assert round_robin_batches(TASKS, sizes, seed=3, epoch=1) != round_robin_batches(
        TASKS, sizes, seed=3, epoch=2
    )


def test_sampler_drives_a_dataloader_and_rejects_bad_sizes() -> None:
    records = [{"id": str(i), "task": t} for i, t in enumerate(TASKS)]
    sampler = RoundRobinBatchSampler([r["task"] for r in records], {"vqa": 50}, default_batch_size=10)
    loader = DataLoader(records, batch_sampler=sampler, collate_fn=lambda b: b)
    batches = list(loader)
    assert len(batches) == len(sampler) == 2 + 3 + 2
    assert [len(b) for b in batches[:3]] == [50, 10, 10]
    with pytest.raises(DataError, match="task_batch_sizes.nlvr"):
        round_robin_batches(TASKS, {"nlvr": 0})
