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
from vlmtune.core.errors import AdapterError


@dataclass
class VptOptions:
    length: int = option(10, min=0, doc="number of prompt tokens per set")
    deep: bool = option(False, doc="one prompt set per block (VPT-deep) instead of one at the input")


def vpt_hook(
    model: nn.Module,
    tower: nn.Module,
    spec: AdapterSpec,
    options: VptOptions,
    tower_name: str,
    prefixes: list[str] | None = None,
) -> None:
    """Prompts on the ViT ``tower`` holding the whole tower (``Method.whole_tower``), or a one-line refusal.

    The prompts module lives on the ViT when it is the tower's one prefix (``<tower>.vpt``), else on the
    tower's first prefix (its embeddings: LLaVA's vision tower minus its unused last layers), so that it
    stays inside the tower's prefixes (the training audit, the saved extras)."""
    holder = None
    if prefixes and len(prefixes) > 1:
        holder = model.get_submodule(prefixes[0])
    try:
        add_vpt(tower, options.length, options.deep, spec.dropout, holder=holder)
    except AdapterError as e:
        raise AdapterError(f"adapters.{tower_name}.method=vpt: {e}") from None


METHOD = Method(
    name="vpt",
    kind="tower",
    label="VPT",
    options=VptOptions,
    hook=vpt_hook,
    uses_r=False,
    whole_tower=True,
    size_option="length",
)
