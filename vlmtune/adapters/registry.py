"""The one list of adapter methods: name -> :class:`~vlmtune.adapters.method.Method`.

Adding a method is one folder ``vlmtune/adapters/<method>/`` (layer + ``method.py`` with its options
dataclass, build/hook and PEFT mapping) and one line in ``REGISTERED`` below. ``attach``,
``peft_io`` and ``analysis.weights`` ask this module; none of them names a method.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from vlmtune.adapters.bitfit.method import METHOD as BITFIT
from vlmtune.adapters.bottleneck.method import ADAPTER, BOTTLENECK, HOULSBY, PARALLEL
from vlmtune.adapters.dora.method import METHOD as DORA
from vlmtune.adapters.dylora.method import METHOD as DYLORA
from vlmtune.adapters.lora.method import METHOD as LORA
from vlmtune.adapters.method import Method, PeftLayer
from vlmtune.adapters.pin.method import METHOD as PIN
from vlmtune.adapters.prompt_tuning.method import METHOD as PROMPT
from vlmtune.adapters.vera.method import DVORA, VERA
from vlmtune.adapters.vpt.method import METHOD as VPT
from vlmtune.core.adapter_spec import DEFAULT_LORA_ALPHA, WHOLE_TOWER_METHODS
from vlmtune.core.errors import AdapterError

REGISTERED: tuple[Method, ...] = (
    LORA,
    DORA,
    DYLORA,
    VERA,
    DVORA,
    HOULSBY,
    PARALLEL,
    BOTTLENECK,
    ADAPTER,
    PROMPT,
    VPT,
    PIN,
    BITFIT,
)
METHODS: dict[str, Method] = {m.name: m for m in REGISTERED}


def register(method: Method) -> None:
    """Add (or replace) a method at run time, e.g. from a plugin or a test."""
    METHODS[method.name] = method


def known_methods() -> list[str]:
    """Every method name a recipe may use, ``full`` and ``frozen`` included."""
    return sorted([*METHODS, *WHOLE_TOWER_METHODS])


def layer_method_names() -> list[str]:
    """Methods that wrap single ``nn.Linear`` layers (their update folds into the weight)."""
    return sorted(n for n, m in METHODS.items() if m.kind == "layer")


def get(name: str, tower: str) -> Method:
    """The method ``adapters.<tower>.method`` names, or a one-line error listing the known ones."""
    if name not in METHODS:
        raise AdapterError(
            f"adapters.{tower}.method='{name}' is unknown; choose one of: {', '.join(known_methods())}"
        )
    return METHODS[name]


def size_summary(spec: dict) -> str:
    """``r=8 alpha=16`` for a saved spec (``vlmtune_adapter.json``), naming only what its method uses:
    nothing for full / frozen, ``r`` alone for VeRA/DVoRA, a size that is not a rank by its option
    (``width=16`` for bottleneck adapters, ``length=10`` for prompts and VPT, DyLoRA's ``max_rank``;
    when unset, the ``r`` it falls back to or the option's default), ``alpha`` (the recipe's, or the
    default it falls back to) for LoRA-type layers, then ``rslora`` and ``magnitude_only=[...]`` when set."""
    method = METHODS.get(spec.get("method", ""))
    if method is None:
        return ""
    parts = []
    if method.size_option is not None:
        parts.append(f"{method.size_option}={_size(method, spec)}")
    elif method.uses_r:
        parts.append(f"r={spec.get('r')}")
    if method.kind == "layer" and method.uses_alpha:
        alpha = spec.get("alpha")
        parts.append(f"alpha={DEFAULT_LORA_ALPHA if alpha is None else alpha:g}")
    if method.kind == "layer" and spec.get("rslora"):
        parts.append("rslora")
    if spec.get("magnitude_only"):
        parts.append(f"magnitude_only=[{', '.join(spec['magnitude_only'])}]")
    return " ".join(parts)


def _size(method: Method, spec: dict):
    """The value of ``method.size_option`` in ``spec``: set, else ``r`` (methods whose size falls back to
    it), else the option's default."""
    value = (spec.get("options") or {}).get(method.size_option)
    if value is not None:
        return value
    if method.uses_r:
        return spec.get("r")
    return {f.name: f.default for f in dataclasses.fields(method.options)}.get(method.size_option)


def _peft_layers() -> list[tuple[Method, PeftLayer]]:
    return [(m, p) for m in METHODS.values() for p in m.peft]


def peft_layer_of(layer: nn.Module) -> PeftLayer | None:
    """The PEFT mapping of a weight-adapter layer (by its exact class), None for other modules."""
    for _, p in _peft_layers():
        if type(layer) is p.layer_class:
            return p
    return None


def method_of(layer: nn.Module) -> Method | None:
    """The registered method whose layer class ``layer`` is."""
    for m, p in _peft_layers():
        if type(layer) is p.layer_class:
            return m
    return None


def peft_layer_for(
    peft_type: str, tensors: set[str], use_dora: bool, method: str | None = None
) -> PeftLayer | None:
    """The layer class a PEFT folder's tensors for one module describe.

    ``method``: the method ``vlmtune_adapter.json`` records for the module (exact class, e.g. DyLoRA
    or LoRA inside a ``use_dora`` folder). Without it: the loadable class of ``peft_type`` whose
    tensor names are exactly ``tensors`` (under ``use_dora`` only DoRA classes), else the smallest
    one holding them (a folder missing a tensor: the strict check then names it), else None.
    """
    if method is not None and method in METHODS:
        for p in METHODS[method].peft:
            if p.peft_type in (peft_type, None) and (  # None: a folder from before it left PEFT (DVoRA)
                p.tensors == tensors or p.tensors | {"lora_magnitude_vector"} == tensors
            ):
                return p
    fits = [
        p for _, p in _peft_layers() if p.loadable and p.peft_type == peft_type and (p.dora or not use_dora)
    ]
    exact = [p for p in fits if p.tensors == tensors]
    if exact:
        return exact[0]
    # an incomplete set: the smallest class holding it, so that the strict check names what is missing
    wider = sorted((p for p in fits if tensors < p.tensors), key=lambda p: len(p.tensors))
    return wider[0] if wider else None
