"""PIN: Positional Insert (Dorkenwald et al., CVPR 2024): the module and its registry entry."""

from vlmtune.adapters.pin.layer import PositionalInsert, add_pin, input_dim, sinusoid_table

__all__ = ["PositionalInsert", "add_pin", "input_dim", "sinusoid_table"]
