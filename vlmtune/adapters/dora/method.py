"""DoRA in the registry: its two layer classes (full DoRA, magnitude-only §5.6) and PEFT mapping.

PEFT: a ``LoraConfig`` with ``use_dora: true``; tensors ``lora_A.weight``, ``lora_B.weight`` and
``lora_magnitude_vector`` (out,). A magnitude-only layer writes just the magnitude (``rank_pattern``
1): PEFT builds a DoRA layer with B = 0 there, which computes the same function.
"""

from __future__ import annotations

from torch import nn

from vlmtune.adapters.dora.layer import DoraLinear
from vlmtune.adapters.dora.magnitude import MagnitudeOnlyLinear
from vlmtune.adapters.lora.method import LORA_TENSORS, lora_kwargs
from vlmtune.adapters.method import Method, PeftLayer
from vlmtune.core.adapter_spec import lora_alpha

MAGNITUDE = "lora_magnitude_vector"


def build(base: nn.Linear, spec, options, shared) -> DoraLinear:
    return DoraLinear(base, spec.r, lora_alpha(spec), spec.dropout, spec.rslora, spec.detach_norm)


METHOD = Method(
    name="dora",
    kind="layer",
    label="DoRA",
    build=build,
    magnitude=True,
    peft=(
        PeftLayer(
            DoraLinear,
            "LORA",
            LORA_TENSORS | {MAGNITUDE},
            True,
            lambda base, i: DoraLinear(base, **lora_kwargs(i)),
        ),
        PeftLayer(
            MagnitudeOnlyLinear,
            "LORA",
            frozenset({MAGNITUDE}),
            True,
            lambda base, i: MagnitudeOnlyLinear(base),
        ),
    ),
)
