"""DyLoRA (Valipour et al., EACL 2023): one LoRA trained for every rank up to ``r_max``.

Each training forward samples a rank ``b`` (one ``b`` for the whole model, uniform in
``[r_min, r_max]``) and uses the nested slice::

    h = W0 x + (alpha / b) * B[:, :b] A[:b, :] drop(x)

so the rank-``b`` slice is exactly a LoRA of rank ``b`` with those weights and the same ``alpha``.
In eval mode every layer uses its ``eval_rank`` (``r_max`` unless :func:`set_dylora_rank` chose
another); ``merge`` folds the update at that rank. The PEFT folder holds the full ``r_max``
tensors (a plain LoRA of rank ``r_max`` for PEFT).
"""

from __future__ import annotations

import torch
from torch import nn

from vlmtune.adapters.lora.layer import LoraLinear, lora_scaling


class DyLoraLinear(LoraLinear):
    """LoRA whose active rank ``rank`` <= ``r`` can change per step. A (r, in); B (out, r)."""

    method = "dylora"

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__(base_layer, r, alpha, dropout, rslora)
        self.eval_rank = r
        self.rank = r

    def set_rank(self, b: int) -> None:
        """Use the first ``b`` rank-one components (1 <= b <= r) with scaling ``alpha / b``."""
        b = max(1, min(int(b), self.r))
        if self.merged and b != self.rank:
            raise RuntimeError("cannot change the rank of a merged DyLoRA layer; unmerge first")
        self.rank = b
        self.scaling = lora_scaling(b, self.alpha, self.rslora)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / b) * B[:, :b] @ A[:b]``, shape (out, in)."""
        b = self.rank
        return self.scaling * (self.lora_B.weight[:, :b] @ self.lora_A.weight[:b])

    def merged_linear(self) -> nn.Linear:
        """Merge at ``eval_rank`` (the rank :func:`set_dylora_rank` chose) and return the plain layer."""
        self.set_rank(self.eval_rank)
        return super().merged_linear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        b = self.rank
        h = self.lora_dropout(x) @ self.lora_A.weight[:b].t()
        return y + (h @ self.lora_B.weight[:, :b].t()) * self.scaling

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, eval_rank={self.eval_rank}"


def dylora_layers(model: nn.Module) -> list[DyLoraLinear]:
    return [m for m in model.modules() if isinstance(m, DyLoraLinear)]


def set_dylora_rank(model: nn.Module, b: int) -> int:
    """Evaluate (and merge) every DyLoRA layer at rank ``b``. Returns the number of layers."""
    layers = dylora_layers(model)
    for layer in layers:
        layer.eval_rank = max(1, min(b, layer.r))
        layer.set_rank(layer.eval_rank)
    return len(layers)


class RankSampler:
    """Forward pre-hook on the root model: samples one rank per training forward for all layers."""

    def __init__(self, r_min: int, r_max: int, seed: int | None = None) -> None:
        if not 1 <= r_min <= r_max:
            raise ValueError(f"DyLoRA needs 1 <= r_min <= r_max, got r_min={r_min}, r_max={r_max}")
        self.r_min, self.r_max = r_min, r_max
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.last: int | None = None

    def sample(self) -> int:
        return int(torch.randint(self.r_min, self.r_max + 1, (1,), generator=self.generator))

    def __call__(self, module: nn.Module, args) -> None:
        if module.training:
            self.last = self.sample()
            for layer in dylora_layers(module):
                layer.set_rank(self.last)
        else:
            for layer in dylora_layers(module):
                layer.set_rank(layer.eval_rank)
