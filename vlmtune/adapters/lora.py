"""LoRA for ``nn.Linear`` (Hu et al., 2021).

    h = W0 x + b + s * B A drop(x),      s = alpha / r   (rsLoRA: alpha / sqrt(r))

A: (r, in) kaiming-uniform, B: (out, r) zero, so the adapted layer starts as the base layer.
The wrapper keeps the frozen base layer as ``base_layer`` and names its tensors like PEFT
(``lora_A.weight``, ``lora_B.weight``) so that state dicts map one-to-one onto PEFT's format.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA, Kalajdzievski 2023)."""
    return alpha / math.sqrt(r) if rslora else alpha / r


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``s * B @ A``.

    Shapes: x (..., in) -> (..., out); A (r, in); B (out, r).
    """

    method = "lora"
    adapter_module = True  # see vlmtune.adapters.report

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be > 0, got r={r}")
        self.base_layer = base_layer
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = lora_scaling(r, alpha, rslora)
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()
        base_layer.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads ``layer.weight`` (dtype checks, ties) still works."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def reset_lora_parameters(self) -> None:
        """A ~ kaiming-uniform(a=sqrt(5)) like ``nn.Linear``; B = 0 (LoRA paper §4.1)."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """Dense update ``s * B @ A`` of shape (out, in)."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + s B A, computed in fp32 and cast back to the base dtype."""
        if self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() + self.delta_weight().float()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() - self.delta_weight().float()).to(w.dtype))
        self.merged = False

    def merged_linear(self) -> nn.Linear:
        """Merge and return the plain ``nn.Linear`` that replaces this wrapper."""
        self.merge()
        return self.base_layer

    def adapter_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """This layer's adapter tensors under PEFT key names (``{prefix}.lora_A.weight`` ...)."""
        return {
            f"{prefix}.lora_A.weight": self.lora_A.weight.detach(),
            f"{prefix}.lora_B.weight": self.lora_B.weight.detach(),
        }

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {"lora_A.weight": self.lora_A.weight, "lora_B.weight": self.lora_B.weight}

    @torch.no_grad()
    def load_adapter_tensor(self, name: str, value: torch.Tensor, where: str = "adapter") -> None:
        """Copy one saved tensor in, refusing a shape that does not fit this base layer."""
        from vlmtune.adapters.inject import AdapterError

        targets = self._adapter_tensors()
        if name not in targets:
            raise AdapterError(
                f"{where}: '{name}' is not a tensor of a {self.method} layer ({', '.join(targets)})"
            )
        target = targets[name]
        if target.shape != value.shape:
            raise AdapterError(
                f"{where}: {name} has shape {tuple(value.shape)} but this base layer "
                f"({self.in_features}->{self.out_features}, r={self.r}) needs {tuple(target.shape)}; "
                "the adapter was trained on a base model with other sizes"
            )
        if self.merged:
            raise AdapterError(f"{where}: cannot load into a merged layer; unmerge first")
        target.copy_(value.to(target.dtype))

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"
