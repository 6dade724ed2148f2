"""VeRA (Kopiczko et al., ICLR 2024) and DVoRA (DoRA paper §5.4).

VeRA: one pair of frozen random matrices shared by every adapted layer, regenerated from a seed,
and two trainable scaling vectors per layer (VeRA eq. 1)::

    h = W0 x + b + Λ_b B Λ_d A drop(x)       A: (r, in_max), B: (out_max, r) shared, frozen
                                             d: (r,) init d_initial, b: (out,) init 0

A layer of shape (out, in) uses the slices ``A[:, :in]`` and ``B[:out, :]``. The shared pair is
kaiming-uniform with fan-in (bound ``sqrt(6 / fan_in)``), drawn A first then B from
``torch.Generator("cpu").manual_seed(seed)``, which reproduces PEFT 0.21's ``VeraModel``
bit for bit (same seed -> same matrices, so a folder without the projection still loads).

DVoRA: VeRA as the directional update of DoRA (DoRA eq. 5 with ΔV = Λ_b B Λ_d A)::

    W' = m * (W0 + ΔV) / ||W0 + ΔV||_c       m: (out,) init ||W0||_c
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from vlmtune.adapters.base import WeightAdapter
from vlmtune.adapters.dora.layer import row_norm_lowrank
from vlmtune.core.errors import AdapterError


def kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Uniform(-sqrt(6/fan_in), sqrt(6/fan_in)) with fan_in = shape[1], drawn from ``generator``."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjection(nn.Module):
    """The frozen shared pair: ``vera_A`` (r, in_max) and ``vera_B`` (out_max, r), fp32.

    One instance is referenced by every VeRA/DVoRA layer of a model. Its buffers are not in the
    model's state dict; ``save_adapter`` writes them only when ``save_projection`` is true.
    """

    def __init__(self, r: int, in_max: int, out_max: int, seed: int = 0, save_projection: bool = True):
        super().__init__()
        self.r, self.seed, self.save_projection = r, seed, save_projection
        gen = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("vera_A", kaiming_uniform((r, in_max), gen), persistent=False)
        self.register_buffer("vera_B", kaiming_uniform((out_max, r), gen), persistent=False)

    @torch.no_grad()
    def load(self, vera_a: torch.Tensor, vera_b: torch.Tensor, where: str = "adapter") -> None:
        """Replace the pair with saved tensors (shapes must be at least what the layers need)."""
        need_a, need_b = tuple(self.vera_A.shape), tuple(self.vera_B.shape)
        if vera_a.shape[0] != need_a[0] or vera_a.shape[1] < need_a[1]:
            raise AdapterError(
                f"{where}: vera_A has shape {tuple(vera_a.shape)}, need ({need_a[0]}, >={need_a[1]})"
            )
        if vera_b.shape[1] != need_b[1] or vera_b.shape[0] < need_b[0]:
            raise AdapterError(
                f"{where}: vera_B has shape {tuple(vera_b.shape)}, need (>={need_b[0]}, {need_b[1]})"
            )
        dev = self.vera_A.device
        self.vera_A = vera_a.float().to(dev).contiguous()
        self.vera_B = vera_b.float().to(dev).contiguous()

    def extra_repr(self) -> str:
        a, b = self.vera_A.shape, self.vera_B.shape
        return f"r={self.r}, A={tuple(a)}, B={tuple(b)}, seed={self.seed}"


def shared_projection(
    r: int,
    seed: int,
    layer_shapes: list[tuple[int, int]],
    save_projection: bool = True,
    saved: tuple[torch.Tensor, torch.Tensor] | None = None,
    where: str = "adapter",
) -> VeraProjection:
    """The one shared pair of a model: sized for its largest adapted layer (PEFT ``VeraModel._find_dim``:
    ``in_max``/``out_max`` over the (out, in) ``layer_shapes``), or as ``saved`` (vera_A, vera_B) when a
    folder holds the pair, loaded from it."""
    in_max = max(i for _, i in layer_shapes)
    out_max = max(o for o, _ in layer_shapes)
    if saved is not None:
        in_max, out_max = saved[0].shape[1], saved[1].shape[0]
    proj = VeraProjection(r, in_max, out_max, seed=seed, save_projection=save_projection)
    if saved is not None:
        proj.load(*saved, where=where)
    return proj


class VeraLinear(WeightAdapter):
    """A frozen ``nn.Linear`` plus ``Λ_b B Λ_d A`` with shared frozen A, B (VeRA eq. 1).

    Shapes: x (..., in) -> (..., out); vera_lambda_d (r,); vera_lambda_b (out,).
    """

    method = "vera"

    def __init__(
        self,
        base_layer: nn.Linear,
        projection: VeraProjection,
        dropout: float = 0.0,
        d_initial: float = 0.1,
    ) -> None:
        super().__init__(base_layer)
        a, b = projection.vera_A, projection.vera_B
        if a.shape[1] < base_layer.in_features or b.shape[0] < base_layer.out_features:
            raise ValueError(
                f"shared VeRA projection {tuple(a.shape)}/{tuple(b.shape)} is smaller than layer "
                f"{base_layer.in_features}->{base_layer.out_features}"
            )
        self.vera_projection = projection  # shared module: named_modules lists it once
        self.r, self.d_initial = projection.r, d_initial
        w = base_layer.weight
        self.vera_lambda_b = nn.Parameter(
            torch.zeros(base_layer.out_features, device=w.device, dtype=w.dtype)
        )
        self.vera_lambda_d = nn.Parameter(torch.full((self.r,), d_initial, device=w.device, dtype=w.dtype))
        self.vera_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def sliced(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A[:, :in], B[:out, :]) of the shared pair, in ``dtype``."""
        p = self.vera_projection
        return p.vera_A[:, : self.in_features].to(dtype), p.vera_B[: self.out_features, :].to(dtype)

    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Λ_d A, Λ_b B) so that the update is their product: shapes (r, in), (out, r)."""
        a, b = self.sliced(self.vera_lambda_d.dtype)
        return self.vera_lambda_d[:, None] * a, self.vera_lambda_b[:, None] * b

    def delta_weight(self) -> torch.Tensor:
        """Dense update ``Λ_b B Λ_d A``, shape (out, in)."""
        a, b = self.lowrank_factors()
        return b @ a

    def lowrank_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``Λ_b B Λ_d A drop(x)`` without forming the (out, in) update."""
        a, b = self.sliced(x.dtype)
        h = F.linear(self.vera_dropout(x), a) * self.vera_lambda_d.to(x.dtype)
        return F.linear(h, b) * self.vera_lambda_b.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.lowrank_branch(x)

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"vera_lambda_b": self.vera_lambda_b, "vera_lambda_d": self.vera_lambda_d}

    def extra_repr(self) -> str:
        return f"r={self.r}, d_initial={self.d_initial}, merged={self.merged}"


class DVoraLinear(VeraLinear):
    """DoRA's magnitude with a VeRA direction (DoRA §5.4): ``m * (W0 + ΔV) / ||W0 + ΔV||_c``.

    Shapes: as :class:`VeraLinear` plus lora_magnitude_vector (out,). The norm is computed without
    forming ``W0 + ΔV`` (``row_norm_lowrank``) and detached unless ``detach_norm=False``.
    """

    method = "dvora"

    def __init__(
        self,
        base_layer: nn.Linear,
        projection: VeraProjection,
        dropout: float = 0.0,
        d_initial: float = 0.1,
        detach_norm: bool = True,
    ) -> None:
        super().__init__(base_layer, projection, dropout, d_initial)
        self.detach_norm = detach_norm
        w = base_layer.weight
        self.lora_magnitude_vector = nn.Parameter(w.detach().float().norm(dim=1).to(w.dtype))

    def weight_norm(self) -> torch.Tensor:
        """||W0 + ΔV||_c, shape (out,), fp32."""
        w = self.base_layer.weight
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            a, b = self.lowrank_factors()
            sq = w.detach().float().pow(2).sum(dim=1)
            return row_norm_lowrank(sq, w, a, b, 1.0)

    def merge_scale(self) -> torch.Tensor:
        """``m / ||W0 + dW_VeRA||_c``: DoRA's magnitude over the VeRA-updated direction."""
        return self.lora_magnitude_vector.float() / self.weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        scale = (self.lora_magnitude_vector.float() / self.weight_norm()).to(x.dtype)
        y = scale * (F.linear(x, self.base_layer.weight) + self.lowrank_branch(x))
        bias = self.base_layer.bias
        return y if bias is None else y + bias

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._adapter_tensors(), "lora_magnitude_vector": self.lora_magnitude_vector}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", detach_norm={self.detach_norm}"
