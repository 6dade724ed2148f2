"""VPT in the registry: typed options and the tower hook.

Options: ``length`` (int >= 0, prompts per set; default 10) and ``deep`` (bool, one set per block;
default false). The spec's ``dropout`` is the prompt dropout.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlmtune.adapters.method import Method, option
from vlmtune.adapters.vpt.layer import add_vpt
from vlmtune.core.adapter_spec import AdapterSpec


@dataclass
class VptOptions:
    length: int = option(10, min=0, doc="number of prompt tokens per set")
    deep: bool = option(False, doc="one prompt set per block (VPT-deep) instead of one at the input")


def vpt_hook(
    model: nn.Module, tower: nn.Module, spec: AdapterSpec, options: VptOptions, tower_name: str
) -> None:
    add_vpt(tower, options.length, options.deep, spec.dropout)


METHOD = Method(name="vpt", kind="tower", label="VPT", options=VptOptions, hook=vpt_hook, uses_r=False)
