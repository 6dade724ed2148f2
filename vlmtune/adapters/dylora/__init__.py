"""DyLoRA (Valipour et al., EACL 2023): the layer, the rank sampler and its registry entry."""

from vlmtune.adapters.dylora.layer import DyLoraLinear, RankSampler, dylora_layers, set_dylora_rank

__all__ = ["DyLoraLinear", "RankSampler", "dylora_layers", "set_dylora_rank"]
