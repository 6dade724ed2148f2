"""DoRA (Liu et al., ICML 2024): the layer, the magnitude-only layer (§5.6) and its registry entry."""

from vlmtune.adapters.dora.layer import DoraLinear, row_norm_lowrank
from vlmtune.adapters.dora.magnitude import MagnitudeOnlyLinear

__all__ = ["DoraLinear", "MagnitudeOnlyLinear", "row_norm_lowrank"]
