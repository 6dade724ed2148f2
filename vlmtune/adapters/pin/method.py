"""PIN in the registry: typed options and the tower hook.

Options: ``hidden`` (list of positive ints, the MLP's hidden widths; default [512, 768]) and
``freq_dim`` (positive even int, the sinusoid table's width; default 64). Recipe:
``adapters.projector: {method: pin, options: {hidden: [512, 768], freq_dim: 64}}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlmtune.adapters.method import Method, option
from vlmtune.adapters.pin.layer import add_pin
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError


@dataclass
class PinOptions:
    hidden: list[int] = option([512, 768], min=1, doc="hidden widths of the MLP")
    freq_dim: int = option(64, min=2, doc="width of the sinusoid table (even)")


def pin_hook(
    model: nn.Module, tower: nn.Module, spec: AdapterSpec, options: PinOptions, tower_name: str
) -> None:
    """Add a PIN in front of the tower that consumes the vision features."""
    if tower_name == "vision":
        raise AdapterError(
            "adapters.vision.method=pin: PIN is added to the vision encoder's *output*; attach it to the "
            "projector tower (adapters.projector.method=pin)"
        )
    if options.freq_dim % 2:
        raise AdapterError(
            f"adapters.{tower_name}.options.freq_dim must be a positive even integer, got {options.freq_dim!r}"
        )
    add_pin(tower, options.freq_dim, tuple(options.hidden))


METHOD = Method(name="pin", kind="tower", label="PIN", options=PinOptions, hook=pin_hook, uses_r=False)
