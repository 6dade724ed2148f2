"""Bottleneck adapters (Houlsby et al. 2019, He et al. 2022): the module and its registry entries."""

from vlmtune.adapters.bottleneck.layer import ACTIVATIONS, BottleneckAdapter, io_features

__all__ = ["ACTIVATIONS", "BottleneckAdapter", "io_features"]
