"""Where a training step's time goes: data wait, vision tower, LM forward, backward, optimizer.

The trainer times each phase of every optimizer step with :meth:`StepTimer.phase` (wall clock;
``torch.cuda.synchronize`` at the edges on CUDA, so queued kernels land in the phase that issued
them). The vision tower's forward is timed by hooks on the pipeline's ``vision`` tower modules,
and subtracted from the forward phase: ``lm_forward = forward - vision`` (the LM, the projector
and the loss). ``data`` is the time ``next(batches)`` blocks: collation in the main process with
``data.num_workers=0``, only the wait for a prefetched batch with workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PHASES = ("data", "vision", "lm_forward", "backward", "optimizer")


class StepTimer:
    """Seconds per phase, summed over the steps of a run."""

    def __init__(self, device: torch.device, vision_modules: list[nn.Module] = ()) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self._vision_start: float | None = None
        self._phase: str | None = None
        self._handles = []
        for module in vision_modules:
            self._handles.append(module.register_forward_pre_hook(self._vision_in))
            self._handles.append(module.register_forward_hook(self._vision_out))

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _vision_in(self, *_) -> None:
        if self._phase == "forward" and self._vision_start is None:  # not recomputation in backward
            self._vision_start = self._now()

    def _vision_out(self, *_) -> None:
        if self._vision_start is not None:
            self.seconds["vision"] += self._now() - self._vision_start
            self._vision_start = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``; ``forward`` is booked as ``lm_forward`` minus the vision time in it."""
        vision_before = self.seconds["vision"]
        self._phase, start = name, self._now()
        try:
            yield
        finally:
            elapsed = self._now() - start
            self._phase = None
            if name == "forward":
                self.seconds["lm_forward"] += elapsed - (self.seconds["vision"] - vision_before)
            else:
                self.seconds[name] += elapsed

    def summary(self) -> dict[str, float]:
        """``time/<phase>_ms`` per optimizer step and ``time/<phase>_share`` of the timed total."""
        total = max(sum(self.seconds.values()), 1e-12)
        steps = max(self.steps, 1)
        out = {f"time/{k}_ms": 1e3 * v / steps for k, v in self.seconds.items()}
        out.update({f"time/{k}_share": v / total for k, v in self.seconds.items()})
        return out

    def format(self) -> str:
        """One line: ``step time (N steps): data 1.2% (3.4 ms) | vision ...``."""
        s = self.summary()
        parts = [f"{k} {100 * s[f'time/{k}_share']:.1f}% ({s[f'time/{k}_ms']:.1f} ms)" for k in PHASES]
        return f"step time ({self.steps} steps, per step): " + " | ".join(parts)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def vision_modules(model: nn.Module, towers: dict[str, list[str]]) -> list[nn.Module]:
    """The modules of the ``vision`` tower that exist in ``model`` (none for a pipeline without one)."""
    found = []
    for name in towers.get("vision", []):
        try:
            found.append(model.get_submodule(name))
        except AttributeError:
            continue
    return found
