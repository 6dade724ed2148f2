"""Adapter methods on plain PyTorch, attachable per tower (language / vision / projector)."""

from vlmtune.adapters.bottleneck import BottleneckAdapter
from vlmtune.adapters.dora import DoraLinear
from vlmtune.adapters.dylora import DyLoraLinear, set_dylora_rank
from vlmtune.adapters.granularity import MagnitudeOnlyLinear
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
from vlmtune.adapters.prompt_tuning import SoftPrompt
from vlmtune.adapters.report import format_report, param_report
from vlmtune.adapters.vera import DVoraLinear, VeraLinear, VeraProjection
from vlmtune.core.adapter_spec import AdapterSpec

__all__ = [
    "AdapterError",
    "AdapterSpec",
    "BottleneckAdapter",
    "DVoraLinear",
    "DoraLinear",
    "DyLoraLinear",
    "LoraLinear",
    "MagnitudeOnlyLinear",
    "SoftPrompt",
    "VeraLinear",
    "VeraProjection",
    "adapter_layers",
    "attach",
    "format_report",
    "load_adapter",
    "merge",
    "param_report",
    "register_layer_method",
    "register_tower_method",
    "save_adapter",
    "set_dylora_rank",
]

# Tower methods register themselves on import.
from vlmtune.adapters import bitfit, pin, vpt  # noqa: E402,F401
