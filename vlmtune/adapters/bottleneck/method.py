"""Bottleneck adapters in the registry: ``houlsby`` (serial), ``parallel``, and ``bottleneck`` /
``adapter`` (placement from ``options.placement``).

Options: ``width`` (int >= 1, the bottleneck size; default: the spec's ``r``, kept for recipes
written before), ``scaling`` (float s; 1.0, He et al. use 4 for the FFN), ``activation`` (relu | gelu
| silu | tanh), and for ``bottleneck`` / ``adapter`` ``placement`` (serial | parallel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from vlmtune.adapters.bottleneck.layer import BottleneckAdapter
from vlmtune.adapters.method import Method, option
from vlmtune.adapters.targets import matches
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError


@dataclass
class PlacedBottleneckOptions:
    width: int | None = option(None, min=1, doc="bottleneck size (default: r)")
    scaling: float = option(1.0, doc="scale s of the adapter output")
    activation: Literal["relu", "gelu", "silu", "tanh"] = option("relu", doc="nonlinearity")


@dataclass
class BottleneckOptions(PlacedBottleneckOptions):
    placement: Literal["serial", "parallel"] = option("serial", doc="on the module's output or beside it")


def bottleneck_hook(placement: str | None):
    """The tower hook of one bottleneck method (``placement`` None: from the options)."""

    def attach_bottleneck(model: nn.Module, tower: nn.Module, spec: AdapterSpec, options, name: str) -> None:
        place = placement or options.placement
        width = spec.r if options.width is None else options.width
        names = spec.target_names()
        found = [rel for rel, m in tower.named_modules() if rel and matches(rel, names)]
        found = [rel for rel in found if not any(rel.startswith(o + ".") for o in found)]  # outermost
        for rel in found:  # none: a tower can have several prefixes; check_attached tells
            parent, _, child = rel.rpartition(".")
            holder = tower.get_submodule(parent) if parent else tower
            try:
                adapter = BottleneckAdapter(
                    getattr(holder, child), width, place, options.scaling, options.activation
                )
            except ValueError as e:
                raise AdapterError(f"adapters.{name}: cannot wrap '{rel}': {e}") from None
            setattr(holder, child, adapter)

    return attach_bottleneck


def check_attached(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> None:
    """One-line error when a bottleneck spec matched nothing in the tower."""
    if not any(isinstance(m, BottleneckAdapter) for p in prefixes for m in model.get_submodule(p).modules()):
        raise AdapterError(
            f"adapters.{tower}.targets={spec.targets} matched no module under {prefixes} for a bottleneck "
            "adapter (serial: e.g. [o, down]; parallel: e.g. [mlp])"
        )


def _method(name: str, placement: str | None) -> Method:
    options = PlacedBottleneckOptions if placement else BottleneckOptions
    hook = bottleneck_hook(placement)
    return Method(
        name=name,
        kind="tower",
        label="bottleneck",
        options=options,
        hook=hook,
        check=check_attached,
        size_option="width",
    )


HOULSBY = _method("houlsby", "serial")
PARALLEL = _method("parallel", "parallel")
BOTTLENECK = _method("bottleneck", None)
ADAPTER = _method("adapter", None)
