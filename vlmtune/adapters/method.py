"""What one adapter method is, as the registry sees it: typed options, how to attach, how to save.

Each ``vlmtune/adapters/<method>/method.py`` builds one (or a few) :class:`Method` objects and
:mod:`vlmtune.adapters.registry` lists them. Two kinds:

* ``layer`` methods wrap single ``nn.Linear`` layers (LoRA, DoRA, DyLoRA, VeRA, DVoRA); they give
  ``build(base, spec, options, shared) -> WeightAdapter`` and a :class:`PeftLayer` per layer class
  (the PEFT layer type and tensor names that class reads and writes);
* ``tower`` methods change a whole tower (prompts, bottleneck adapters, VPT, PIN, BitFit); they give
  ``hook(model, tower_module, spec, options, tower_name)`` and optionally ``check(model, prefixes,
  spec, tower_name)``, run once after the hooks of every prefix. A tower may be several prefixes (a
  family tower minus what it does not use: LLaVA's vision tower is its embeddings, pre-norm, the layers
  up to the feature layer and post-norm); a ``whole_tower`` method (VPT) is hooked once, on the smallest
  module holding every prefix (the ViT itself), the others on each prefix.

Options are a dataclass per method: ``parse_options`` turns the recipe's ``adapters.<tower>.options``
mapping into it, refusing an unknown key or a value of the wrong type in one line that names the
tower, the method, the option and the accepted ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError


@dataclass(frozen=True)
class PeftLayer:
    """How one layer class maps onto a PEFT layer.

    ``peft_type``: ``LORA`` or ``VERA`` (``adapter_config.json``), or None when PEFT has no such layer
    (DVoRA: its tensors go to ``trainable_extras``, listed under ``not_in_peft``); ``tensors``: the leaf names under
    ``base_model.model.<path>.`` it writes (and a plain PEFT folder has for it); ``dora``: PEFT builds
    it with ``use_dora`` (it carries ``lora_magnitude_vector``); ``from_peft(base, info)`` rebuilds the
    layer from a folder's config and tensor shapes (``info``: :class:`PeftLayerInfo`); ``loadable``:
    a plain PEFT folder with these tensors is read as this class (False for DyLoRA, saved as LoRA).
    """

    layer_class: type[nn.Module]
    peft_type: str | None
    tensors: frozenset[str]
    dora: bool
    from_peft: Callable[[nn.Linear, PeftLayerInfo], nn.Module]
    loadable: bool = True


@dataclass
class PeftLayerInfo:
    """What a PEFT folder says about one adapted layer: its path, the config and its tensor shapes;
    ``shared`` is the method family's shared state (VeRA's projection) when it has one."""

    path: str
    config: dict
    shapes: dict[str, tuple[int, ...]]
    shared: Any = None


@dataclass
class NoOptions:
    """The options of a method that takes none (``adapters.<tower>.options`` must be empty)."""


@dataclass(frozen=True)
class Method:
    """One registered adapter method. See the module docstring for the two kinds."""

    name: str
    kind: str  # "layer" | "tower"
    options: type = field(default_factory=lambda: NoOptions)
    label: str = ""  # name used in messages ("VPT", "PIN"); defaults to the method name
    build: Callable[..., nn.Module] | None = None  # layer: (base, spec, options, shared) -> layer
    hook: Callable[..., None] | None = None  # tower: (model, tower_module, spec, options, tower_name)
    check: Callable[[nn.Module, list[str], AdapterSpec, str], None] | None = None
    peft: tuple[PeftLayer, ...] = ()  # layer classes this method creates, with their PEFT mapping
    family: str | None = None  # layer methods sharing model-wide state (VeRA/DVoRA: "vera")
    shared: Callable[[list[nn.Linear], list[AdapterSpec], list[Any]], Any] | None = None
    magnitude: bool = False  # accepts ``magnitude_only`` targets (DoRA §5.6)
    after_attach: Callable[[nn.Module, AdapterSpec, Any], None] | None = None  # e.g. DyLoRA's rank sampler
    uses_alpha: bool = True  # False (VeRA, DVoRA): setting ``adapters.<tower>.alpha`` is an error
    uses_r: bool = True  # False (VPT, PIN, BitFit): ``adapters.<tower>.r`` sets nothing (sizes are options)
    layer_options: Callable[[nn.Module], dict] | None = None  # options that rebuild an attached layer
    size_option: str | None = None  # the option that is the size when it is not ``r`` (width, length)
    whole_tower: bool = False  # tower: hook once on the module holding every prefix, + ``prefixes=`` (VPT)

    @property
    def display(self) -> str:
        return self.label or self.name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, str(tp))


def accepted_options(cls: type) -> str:
    """``name (type), ...`` of an options dataclass, for messages and docs."""
    hints = typing.get_type_hints(cls)
    return ", ".join(f"{f.name} ({_type_name(hints[f.name])})" for f in dataclasses.fields(cls)) or "none"


def _fits(value: Any, tp: Any) -> bool:
    """Whether a YAML value has the annotated type (an int is a valid float; a bool is no number)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list | tuple) and all(_fits(v, typing.get_args(tp)[0]) for v in value)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, tp)


def _below_min(value: Any, low: float) -> bool:
    items = value if isinstance(value, list | tuple) else [value]
    return any(v is not None and v < low for v in items)


def parse_options(method: Method, spec: AdapterSpec, tower: str) -> Any:
    """``spec.options`` as ``method.options`` (a dataclass instance), checked for names, types and the
    ``min`` a field's metadata sets. Raises :class:`AdapterError` (one line) otherwise."""
    cls = method.options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    where = f"adapters.{tower}.options"
    unknown = sorted(set(spec.options) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise AdapterError(
            f"{where}: unknown {method.display} option(s) {', '.join(unknown)}{hint} for method "
            f"'{method.name}'; accepted: {accepted_options(cls)}"
        )
    for key, value in spec.options.items():
        tp, f = hints[key], fields[key]
        if not _fits(value, tp):
            raise AdapterError(
                f"{where}.{key} must be {_type_name(tp)} for method '{method.name}', got {value!r}"
            )
        low = f.metadata.get("min")
        if low is not None and _below_min(value, low):
            what = "every entry " if isinstance(value, list | tuple) else ""
            raise AdapterError(
                f"{where}.{key} must be {_type_name(tp)} with {what}>= {low} for method '{method.name}', "
                f"got {value!r}"
            )
    return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.options.items()})


def option(default: Any = None, *, min: float | None = None, doc: str = "") -> Any:  # noqa: A002
    """A dataclass field for an options class: default, lower bound ``min`` (checked by parse_options)."""
    meta = {"doc": doc, **({"min": min} if min is not None else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)
