"""DyLoRA in the registry: typed options and the rank sampler installed after attaching.

Options: ``max_rank`` (the largest rank trained; default: the spec's ``r``), ``min_rank`` (default 1),
``seed`` (of the per-step rank draw; default: unseeded). PEFT has no DyLoRA: the folder holds the
``max_rank`` tensors as a plain LoRA (read back by vlmtune as DyLoRA from ``vlmtune_adapter.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlmtune.adapters.dylora.layer import DyLoraLinear, RankSampler
from vlmtune.adapters.lora.method import LORA_TENSORS, lora_kwargs
from vlmtune.adapters.method import Method, PeftLayer, option
from vlmtune.core.adapter_spec import AdapterSpec, lora_alpha


@dataclass
class DyLoraOptions:
    max_rank: int | None = option(None, min=1, doc="largest rank trained (default: r)")
    min_rank: int = option(1, min=1, doc="smallest rank drawn per step")
    seed: int | None = option(None, doc="seed of the per-step rank draw")


def max_rank(spec: AdapterSpec, options: DyLoraOptions) -> int:
    return spec.r if options.max_rank is None else options.max_rank


def build(base: nn.Linear, spec: AdapterSpec, options: DyLoraOptions, shared) -> DyLoraLinear:
    return DyLoraLinear(base, max_rank(spec, options), lora_alpha(spec), spec.dropout, spec.rslora)


def install_rank_sampler(model: nn.Module, spec: AdapterSpec, options: DyLoraOptions) -> None:
    """One rank per training forward for every DyLoRA layer (a pre-hook on the root)."""
    old = getattr(model, "_vlmtune_rank_sampler", None)
    if old is not None:
        old[1].remove()
    sampler = RankSampler(options.min_rank, max_rank(spec, options), options.seed)
    handle = model.register_forward_pre_hook(sampler)
    object.__setattr__(model, "_vlmtune_rank_sampler", (sampler, handle))


METHOD = Method(
    name="dylora",
    kind="layer",
    label="DyLoRA",
    options=DyLoraOptions,
    build=build,
    after_attach=install_rank_sampler,
    size_option="max_rank",
    peft=(
        PeftLayer(
            DyLoraLinear,
            "LORA",
            LORA_TENSORS,
            False,
            lambda base, i: DyLoraLinear(base, **lora_kwargs(i)),
            False,
        ),
    ),
)
