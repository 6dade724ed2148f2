"""LoRA (Hu et al., 2021): the layer and its registry entry."""

from vlmtune.adapters.lora.layer import LoraLinear, drop_mask, is_quantized, lora_scaling, lowrank_linear

__all__ = ["LoraLinear", "drop_mask", "is_quantized", "lora_scaling", "lowrank_linear"]
