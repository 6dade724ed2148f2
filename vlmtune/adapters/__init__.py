"""Adapter methods on plain PyTorch, attachable per tower (language / vision / projector)."""

from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.inject import (
    AdapterError,
    adapter_layers,
    attach,
    merge,
    register_layer_method,
    register_tower_method,
)
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.peft_io import load_adapter, save_adapter
from vlmtune.adapters.report import format_report, param_report
from vlmtune.adapters.spec import AdapterSpec

__all__ = [
    "AdapterError",
    "AdapterSpec",
    "DoraLinear",
    "LoraLinear",
    "adapter_layers",
    "attach",
    "format_report",
    "load_adapter",
    "merge",
    "param_report",
    "register_layer_method",
    "register_tower_method",
    "save_adapter",
]
