"""DoRA tuning granularity (DoRA paper §5.6): magnitude only on some modules.

With no directional update, DoRA eq. 5 reduces to a learned per-output-feature rescaling::

    W' = m * W0 / ||W0||_c,      y = (m / ||W0||_c) * (W0 x) + b       m: (out,) init ||W0||_c

so the layer has no A/B at all. Table 6's cheaper setting is ``method: dora``,
``targets: [q, k, v]``, ``magnitude_only: [o, gate, up, down]``.

On disk the magnitude goes under PEFT's DoRA key ``<path>.lora_magnitude_vector`` with no
``lora_A``/``lora_B``; the path is listed in ``target_modules`` with ``rank_pattern`` 1, so PEFT
loads it as a DoRA layer whose B is zero, which computes the same function.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vlmtune.adapters.base import WeightAdapter


class MagnitudeOnlyLinear(WeightAdapter):
    """A frozen ``nn.Linear`` whose output features are rescaled by a trainable magnitude.

    Shapes: x (..., in) -> (..., out); lora_magnitude_vector (out,).
    """

    method = "dora_magnitude"
    r = 1  # rank written to rank_pattern so PEFT builds a (zero-B) DoRA layer here

    def __init__(self, base_layer: nn.Linear, alpha: float = 1.0) -> None:
        super().__init__(base_layer)
        self.alpha, self.rslora = alpha, False
        w = base_layer.weight
        self.lora_magnitude_vector = nn.Parameter(self.base_norm().to(w.dtype))

    def base_norm(self) -> torch.Tensor:
        """||W0||_c, shape (out,), fp32 (W0 is frozen, so this is a constant)."""
        with torch.no_grad():
            return self.base_layer.weight.float().norm(dim=1)

    def delta_weight(self) -> torch.Tensor:
        """No direction update: the weight only rescales."""
        return torch.zeros((), device=self.base_layer.weight.device)

    def merge_scale(self) -> torch.Tensor:
        """``m / ||W0||_c``."""
        return self.lora_magnitude_vector.float() / self.base_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        scale = (self.lora_magnitude_vector.float() / self.base_norm()).to(x.dtype)
        y = scale * F.linear(x, self.base_layer.weight)
        bias = self.base_layer.bias
        return y if bias is None else y + bias

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_magnitude_vector": self.lora_magnitude_vector}

    def extra_repr(self) -> str:
        return f"magnitude only, merged={self.merged}"
