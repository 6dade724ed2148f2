"""DoRA: weight-decomposed low-rank adaptation (Liu et al., ICML 2024).

    W' = m * (W0 + s B A) / ||W0 + s B A||_c                          (DoRA eq. 5)

``||.||_c`` is the norm of each output feature (a row of PyTorch's (out, in) weight), ``m`` is a
trainable (out,) vector initialised to ``||W0||_c`` and the norm is treated as a constant in the
backward pass by default (paper §4.3, ``detach_norm=True``).

Two choices make DoRA cost about what LoRA costs (see ``benchmarks/adapters.py``):

* **No dense (out, in) update.**  The squared row norm expands into low-rank terms

      ||W0_i + s (BA)_i||^2 = ||W0_i||^2 + 2 s <B_i, (W0 A^T)_i> + s^2 B_i (A A^T) B_i^T

  ``||W0||^2`` is cached once (W0 is frozen); ``W0 A^T`` is (out, r) and ``A A^T`` is (r, r).
  Everything after the (out, r) product is accumulated in fp32, also for bf16 weights. The result
  is exact (same algebra), not an approximation.
* **One pass over W0.**  ``y = (m / n) * (W0 x + s B A drop(x)) + b`` reuses the base product.
  With adapter dropout this applies dropout to the low-rank branch only; PEFT instead runs a second
  base GEMM on ``drop(x)`` for the magnitude term. With dropout 0 and in eval mode both are equal.
  The whole expression is one autograd function (:func:`vlmtune.adapters.lora.lowrank_linear`):
  it saves ``z = W0 x + s B A drop(x)`` once for ``dm = sum_t dy_t z_t / n`` and nothing else
  beyond what LoRA saves.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vlmtune.adapters.lora.layer import LoraLinear, is_quantized, lowrank_linear
from vlmtune.core.errors import AdapterError


def row_norm_lowrank(
    base_sq_norm: torch.Tensor,
    base_weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Row norms of ``W0 + s B A`` without forming it.

    Args: base_sq_norm (out,) fp32 = ||W0_i||^2; base_weight W0 (out, in); lora_a A (r, in);
    lora_b B (out, r). Returns (out,) fp32.
    """
    acc = torch.promote_types(base_weight.dtype, torch.float32)  # fp32 for bf16/fp16, else as is
    w0_at = F.linear(lora_a.to(base_weight.dtype), base_weight).to(acc)  # (r, out) = (W0 A^T)^T
    a32, b32 = lora_a.to(acc), lora_b.to(acc)
    cross = (b32 * w0_at.t()).sum(dim=1)  # <B_i, (W0 A^T)_i>
    gram = a32 @ a32.t()  # (r, r)
    quad = ((b32 @ gram) * b32).sum(dim=1)  # B_i G B_i^T
    sq = base_sq_norm + (2.0 * scaling) * cross + (scaling * scaling) * quad
    return sq.clamp_min(0.0).sqrt()


class DoraLinear(LoraLinear):
    """LoRA on the direction plus a learned magnitude per output feature (DoRA eq. 5).

    Shapes: x (..., in) -> (..., out); A (r, in); B (out, r); m (out,).
    """

    method = "dora"

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        detach_norm: bool = True,
    ) -> None:
        if is_quantized(base_layer):
            raise AdapterError(
                "DoRA on a 4-bit quantised layer is not supported; use method=lora with model.load_in_4bit"
            )
        super().__init__(base_layer, r, alpha, dropout, rslora)
        self.detach_norm = detach_norm
        self._base_sq_norm: torch.Tensor | None = None
        self._base_sq_key: tuple | None = None
        self._norm_cache: tuple | None = None
        w = base_layer.weight
        self.lora_magnitude_vector = nn.Parameter(self.base_sq_norm().sqrt().to(w.dtype))

    def base_sq_norm(self) -> torch.Tensor:
        """||W0_i||^2 in fp32, cached: W0 is frozen while the adapter is unmerged.

        The cache is keyed on W0's storage, device and version counter, so an in-place write to W0
        (``load_state_dict``, ``copy_``) recomputes it.
        """
        w = self.base_layer.weight
        key = (w.device, w.data_ptr(), w._version)
        if self._base_sq_norm is None or self._base_sq_key != key:
            with torch.no_grad():
                self._base_sq_norm = w.to(torch.promote_types(w.dtype, torch.float32)).pow(2).sum(dim=1)
            self._base_sq_key = key
        return self._base_sq_norm

    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B A||_c, shape (out,), fp32; detached unless ``detach_norm=False``.

        A training forward (train mode, grad enabled) always recomputes it.  In eval mode or under
        ``no_grad`` (evaluation, generation: one token per forward) a detached norm is cached, keyed
        on the storage and version counter of W0, A and B, so any in-place update recomputes it.
        """
        a, b = self.lora_weights()
        w = self.base_layer.weight
        track = torch.is_grad_enabled() and not self.detach_norm
        cacheable = (
            not track
            and not (self.training and torch.is_grad_enabled())
            and a is self.lora_A.weight
            and b is self.lora_B.weight
        )
        key = (*((t.device, t.data_ptr(), t._version, t.shape) for t in (w, a, b)), self.scaling)
        if cacheable and self._norm_cache is not None and self._norm_cache[0] == key:
            return self._norm_cache[1]
        with torch.set_grad_enabled(track):
            norm = row_norm_lowrank(self.base_sq_norm(), w, a, b, self.scaling)
        self._norm_cache = (key, norm) if cacheable else None
        return norm

    def magnitude_scale(self) -> torch.Tensor:
        """``m / ||W0 + s B A||_c``, shape (out,), fp32."""
        norm = self.weight_norm()
        return self.lora_magnitude_vector.to(norm.dtype) / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        a, b = self.lora_weights()
        base = self.base_layer
        return lowrank_linear(
            x, base.weight, base.bias, a, b, self.scaling, self.dropout_p, self.magnitude_scale()
        )

    def merge_scale(self) -> torch.Tensor:
        """``m / ||W0 + s B A||_c`` (DoRA eq. 5): the merged weight is this times ``W0 + s B A``."""
        return self.lora_magnitude_vector.float() / self.weight_norm()

    def _weight_changed(self) -> None:
        self._base_sq_norm = None

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._adapter_tensors(), "lora_magnitude_vector": self.lora_magnitude_vector}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", detach_norm={self.detach_norm}"
