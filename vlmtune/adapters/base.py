"""Shared plumbing for adapters that wrap one ``nn.Linear`` with a mergeable weight update.

Every such layer (LoRA, DoRA, DyLoRA, VeRA, DVoRA, magnitude-only DoRA) derives from
:class:`WeightAdapter`: ``merge`` / ``unmerge`` / ``merged_linear`` / ``adapter_state(prefix)`` /
``load_adapter_tensor``.
"""

from __future__ import annotations

import torch
from torch import nn

from vlmtune.core.errors import AdapterError


class WeightAdapter(nn.Module):
    """Base for ``LoraLinear``, ``VeraLinear``, ``MagnitudeOnlyLinear``...: frozen ``base_layer`` + adapter tensors.

    Subclasses define ``_adapter_tensors() -> {name: tensor}`` (the saved names), ``merge`` and
    ``unmerge``.
    """

    method = "adapter"
    adapter_module = True  # vlmtune.adapters.report counts everything but base_layer as adapter
    weight_adapter = True  # vlmtune.adapters.attach.adapter_layers finds it

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.merged = False
        base_layer.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The additive update of the weight, (out, in) or a broadcastable 0."""
        raise NotImplementedError

    def merge_scale(self) -> torch.Tensor | None:
        """Per-output-feature factor of the merged weight, (out,) fp32: ``m / ||W0 + dW||_c`` for
        weight-decomposed methods (DoRA eq. 5), ``None`` for purely additive ones (LoRA, VeRA)."""
        return None

    def _weight_changed(self) -> None:
        """Drop caches derived from W0 (called after merge / unmerge)."""

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- scale * (W0 + dW) in fp32, cast back; ``scale`` is kept for an exact ``unmerge``."""
        if self.merged:
            return
        w = self.base_layer.weight
        scale = self.merge_scale()  # from the unmerged weight
        merged = w.float() + self.delta_weight().float()
        w.copy_((merged if scale is None else scale[:, None] * merged).to(w.dtype))
        self._merged_scale = scale
        self.merged = True
        self._weight_changed()

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        w = self.base_layer.weight
        scale = self._merged_scale
        merged = w.float() if scale is None else w.float() / scale[:, None]
        w.copy_((merged - self.delta_weight().float()).to(w.dtype))
        self._merged_scale = None
        self.merged = False
        self._weight_changed()

    def merged_linear(self) -> nn.Linear:
        """Merge and return the plain ``nn.Linear`` that replaces this wrapper."""
        self.merge()
        return self.base_layer

    def adapter_state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Saved tensors under ``{prefix}.{name}`` keys."""
        return {f"{prefix}.{k}": v.detach() for k, v in self._adapter_tensors().items()}

    @torch.no_grad()
    def load_adapter_tensor(self, name: str, value: torch.Tensor, where: str = "adapter") -> None:
        """Copy one saved tensor in, refusing a name or shape that does not fit this layer."""
        targets = self._adapter_tensors()
        if name not in targets:
            raise AdapterError(
                f"{where}: '{name}' is not a tensor of a {self.method} layer ({', '.join(targets)})"
            )
        target = targets[name]
        if target.shape != value.shape:
            raise AdapterError(
                f"{where}: {name} has shape {tuple(value.shape)} but this {self.method} layer "
                f"({self.in_features}->{self.out_features}) needs {tuple(target.shape)}; "
                "the adapter was trained on a base model with other sizes or another rank"
            )
        if self.merged:
            raise AdapterError(f"{where}: cannot load into a merged layer; unmerge first")
        target.copy_(value.to(target.dtype))
