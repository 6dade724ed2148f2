"""Adapter methods on plain PyTorch, attachable per tower (language / vision / projector).

Layout: one folder per method (``lora/``, ``dora/``, ``dylora/``, ``vera/``, ``bottleneck/``,
``prompt_tuning/``, ``vpt/``, ``pin/``, ``bitfit/``: layer + ``method.py``), one ``registry``, one
``targets``, one ``attach`` and one PEFT-format module (``peft_io``).
"""

from vlmtune.adapters.attach import adapter_layers, attach, merge
from vlmtune.adapters.bottleneck import BottleneckAdapter
from vlmtune.adapters.dora import DoraLinear, MagnitudeOnlyLinear
from vlmtune.adapters.dylora import DyLoraLinear, set_dylora_rank
from vlmtune.adapters.lora import LoraLinear
from vlmtune.adapters.method import Method, PeftLayer
from vlmtune.adapters.peft_io import load_adapter, read_base_info, save_adapter
from vlmtune.adapters.prompt_tuning import SoftPrompt
from vlmtune.adapters.registry import known_methods, register
from vlmtune.adapters.report import format_report, param_report
from vlmtune.adapters.vera import DVoraLinear, VeraLinear, VeraProjection
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError

__all__ = [
    "AdapterError",
    "AdapterSpec",
    "BottleneckAdapter",
    "DVoraLinear",
    "DoraLinear",
    "DyLoraLinear",
    "LoraLinear",
    "MagnitudeOnlyLinear",
    "Method",
    "PeftLayer",
    "SoftPrompt",
    "VeraLinear",
    "VeraProjection",
    "adapter_layers",
    "attach",
    "format_report",
    "known_methods",
    "load_adapter",
    "merge",
    "param_report",
    "read_base_info",
    "register",
    "save_adapter",
    "set_dylora_rank",
]
