"""Peak memory of one training step, on CUDA and on CPU, for the benchmarks in this folder.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
  memory allocated before the step (weights, inputs): activations, temporaries and gradients.
* CPU: PyTorch has no allocator statistics for CPU, and RSS is blurred by malloc caching and by
  whatever ran earlier in the process.  :class:`TensorMemory` instead counts every tensor storage
  created by an ATen op while it is active (a ``TorchDispatchMode``), adds its size when it is
  allocated and subtracts it when the storage is freed (a weakref finalizer on the storage).  It
  sees the forward pass, autograd's backward (same thread on CPU) and parameter gradients; it does
  not see scratch buffers private to a kernel (e.g. oneDNN workspaces), which are the same for
  every variant of a layer.  Views and in-place results share an input's storage and are not
  counted twice.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemory(TorchDispatchMode):
    """Live and peak bytes of tensor storages allocated by ops run under this mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if _is_dense(t)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if _is_dense(t):
                self._track(t.untyped_storage(), inputs)
        return out

    def _track(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in inputs or key in self._sizes:
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)


def _is_dense(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type != "meta"


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by ``step()`` on top of what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with TensorMemory() as mem:
        step()
    return mem.peak
