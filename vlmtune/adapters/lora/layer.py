"""LoRA for ``nn.Linear`` (Hu et al., 2021).

    h = W0 x + b + s * B A drop(x),      s = alpha / r   (rsLoRA: alpha / sqrt(r))

A: (r, in) kaiming-uniform, B: (out, r) zero, so the adapted layer starts as the base layer.
The wrapper keeps the frozen base layer as ``base_layer`` and names its tensors like PEFT
(``lora_A.weight``, ``lora_B.weight``) so that state dicts map one-to-one onto PEFT's format.

The training step runs through :func:`lowrank_linear`, one autograd function for the base GEMM,
the low-rank branch and (for DoRA) the per-feature output scale: the low-rank product is added in
place onto the base output (``addmm_``), the backward pass fuses ``dx = dz W0 + (dz B) A`` and
saves ``x`` plus a 1-byte dropout mask instead of a dropped copy of ``x`` (``x`` is usually held
by other layers too: q/k/v share it); the dropout scale ``1 / (1 - p)`` is applied to the (N, r)
products, not to x.  See ``benchmarks/adapters.py`` for the measured effect.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from vlmtune.adapters.base import WeightAdapter


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def drop_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask (same shape as ``x``) of the entries inverted dropout zeroes: ``u < p`` for one
    fp32 uniform draw per entry, so P(drop) = p exactly (Bernoulli sampling). The kept entries'
    ``1 / (1 - p)`` factor is applied by the caller to the small (N, r) low-rank products instead of
    to x (N, in); on CPU this is about half the cost of ``F.dropout`` (benchmarks/adapters.py)."""
    return torch.rand(x.shape, dtype=torch.float32, device=x.device) < p


class _LowRankLinear(torch.autograd.Function):
    """y = scale * (x W0^T + s (drop(x) A^T) B^T) + b; shapes x (N, in), W0 (out, in), A (r, in),
    B (out, r), scale (out,) or None, b (out,) or None.  W0 gets no gradient (frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, dropout_p, scale):
        mask = drop_mask(x, dropout_p) if dropout_p > 0 else None
        if mask is None:
            u = x @ lora_a.t()  # (N, r)
        else:  # drop(x) A^T = (x with dropped entries zeroed) A^T / (1 - p)
            u = (torch.where(mask, 0.0, x) @ lora_a.t()).mul_(1.0 / (1.0 - dropout_p))
        z = (x @ weight.t()).addmm_(u, lora_b.t(), alpha=scaling)  # W0 x + s B A drop(x), in place
        save_z = scale is not None and ctx.needs_input_grad[7]
        if scale is None:
            y = z if bias is None else z.add_(bias)
        elif save_z:
            y = z * scale if bias is None else torch.addcmul(bias, z, scale)
        else:
            y = z.mul_(scale) if bias is None else z.mul_(scale).add_(bias)
        ctx.scaling, ctx.dropout_p = scaling, dropout_p
        ctx.save_for_backward(x, mask, u, z if save_z else None, weight, lora_a, lora_b, scale)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, mask, u, z, weight, lora_a, lora_b, scale = ctx.saved_tensors
        s, p = ctx.scaling, ctx.dropout_p
        need = ctx.needs_input_grad
        gx = g_bias = g_a = g_b = g_scale = None
        gy = gy.contiguous()
        if need[2]:
            g_bias = gy.sum(0)
        if need[7]:
            g_scale = (gy * z).sum(0, dtype=torch.float32)  # sum_t dy_t * z_t  -> dm via autograd
        gz = gy if scale is None else gy * scale
        gu = (gz @ lora_b).mul_(s)  # (N, r)
        if need[4]:
            g_b = (gz.t() @ u).mul_(s)
        if mask is not None:
            gu.mul_(1.0 / (1.0 - p))  # the dropout scale, on the (N, r) side
        if need[3]:  # drop(x) recomputed from x and the 1-byte mask: one elementwise pass
            g_a = gu.t() @ (x if mask is None else torch.where(mask, 0.0, x))
        if need[0]:
            gx = gz @ weight
            if mask is None:
                gx.addmm_(gu, lora_a)
            else:
                gx.add_((gu @ lora_a).masked_fill_(mask, 0))
        return gx, None, g_bias, g_a, g_b, None, None, g_scale


def lowrank_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * (W0 x + s B A drop(x)) + b`` for x (..., in) -> (..., out), one pass over W0.

    ``weight`` W0 (out, in) is frozen (no gradient); ``scale`` (out,) is DoRA's ``m / ||W'||_c``
    (None for LoRA).  Dropout (``dropout_p`` > 0, pass 0 in eval mode) acts on the low-rank branch
    only.  Under autocast every operand is cast to the autocast dtype first, as ``F.linear`` would.
    """
    dtype = weight.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    lead = x.shape[:-1]
    args = [
        t if t is None or t.dtype == dtype else t.to(dtype) for t in (x, weight, bias, lora_a, lora_b, scale)
    ]
    x2 = args[0].reshape(-1, x.shape[-1])
    with torch.autocast(x.device.type, enabled=False):
        y = _LowRankLinear.apply(x2, args[1], args[2], args[3], args[4], scaling, dropout_p, args[5])
    return y.reshape(*lead, y.shape[-1])


def is_quantized(layer: nn.Module) -> bool:
    """A bitsandbytes-style layer whose weight is packed integers, not a float matrix."""
    return not layer.weight.is_floating_point()


class LoraLinear(WeightAdapter):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``s * B @ A``.

    Shapes: x (..., in) -> (..., out); A (r, in); B (out, r).
    """

    method = "lora"

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank must be > 0, got r={r}")
        super().__init__(base_layer)
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = lora_scaling(r, alpha, rslora)
        w = base_layer.weight
        # 4-bit bases (QLoRA): adapters in the layer's compute dtype (bf16), fp32 without one
        dtype = (
            w.dtype
            if w.is_floating_point()
            else (getattr(base_layer, "compute_dtype", None) or torch.float32)
        )
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ kaiming-uniform(a=sqrt(5)) like ``nn.Linear``; B = 0 (LoRA paper §4.1)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def lora_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The effective ``(A (r, in), B (out, r))``; subclasses (VeRA, DyLoRA) override this."""
        return self.lora_A.weight, self.lora_B.weight

    @property
    def dropout_p(self) -> float:
        """Adapter dropout probability in effect now (0 in eval mode)."""
        drop = self.lora_dropout
        return drop.p if isinstance(drop, nn.Dropout) and self.training else 0.0

    def delta_weight(self) -> torch.Tensor:
        """Dense update ``s * B @ A`` of shape (out, in)."""
        a, b = self.lora_weights()
        return self.scaling * (b @ a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        a, b = self.lora_weights()
        base = self.base_layer
        if is_quantized(base):  # QLoRA: the 4-bit layer computes W0 x itself; the adapter math is unchanged
            u = nn.functional.dropout(x, self.dropout_p, self.training) @ a.to(x.dtype).t()
            return base(x) + (u @ b.to(x.dtype).t()) * self.scaling
        return lowrank_linear(x, base.weight, base.bias, a, b, self.scaling, self.dropout_p)

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": self.lora_A.weight, "lora_B.weight": self.lora_B.weight}

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"
