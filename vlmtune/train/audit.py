"""Placement and gradient audit of a run (adapters where nobody meant them, adapters that learn nothing).

Before the first step (:func:`check_placement`): a per-tower table of the adapted modules (counts by
leaf name) and a one-line error if a parameter outside the towers the recipe adapts is trainable
(e.g. a bare ``q_proj`` target also matching the vision tower, LLaVA issue 1647).

After the first backward (:func:`check_gradients`): every adapter tensor that got no gradient
(``grad is None``) or, in a layer none of whose tensors got a non-zero gradient, an all-zero one is
named and the run stops unless ``train.allow_dead_adapters=true``. A layer is judged as a whole
because LoRA's ``lora_A`` gets an exactly-zero gradient on step 1 (``dL/dA = s B^T g x^T`` with
``B = 0``) while ``lora_B`` gets a non-zero one. When no adapter anywhere got a non-zero gradient
(a zero-initialised classification head zeroes them all on step 1), zero gradients are judged at the
first step where some adapter gets one; missing gradients (``None``) are judged at once.

Reentrant activation checkpointing runs a block's backward only if one of its inputs requires grad;
a frozen vision tower's embeddings do not, so its adapters would get none (peft issue 2880):
:func:`tower_inputs_require_grad` marks those inputs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from vlmtune.adapters.attach import adapter_layers
from vlmtune.adapters.registry import layer_method_names
from vlmtune.adapters.report import adapter_module_paths, placement_lines
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError

SHOWN = 5  # names shown in an error line


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == q or name.startswith(q + ".") for q in prefixes)


def _first(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def adapted_prefixes(towers: dict[str, list[str]], specs: dict[str, AdapterSpec]) -> list[str]:
    """Prefixes of the towers whose spec is not ``frozen``."""
    return [q for t, s in specs.items() if s is not None and s.method != "frozen" for q in towers.get(t, [])]


def adapted_paths(model: nn.Module, towers: dict[str, list[str]], specs: dict[str, AdapterSpec]) -> list[str]:
    """Weight-adapter layer paths, the modules tower methods added (bottleneck adapters at the modules they
    wrap, soft prompts...), and the prefixes of towers adapted as a whole (full, BitFit)."""
    paths = [path for path, _ in adapter_layers(model)]
    for tower, spec in specs.items():
        if spec is not None and spec.method not in ("frozen", *layer_method_names()) and tower in towers:
            paths.extend(adapter_module_paths(model, towers[tower]) or towers[tower])
    return paths


def check_placement(model: nn.Module, towers: dict[str, list[str]], specs: dict[str, AdapterSpec]) -> str:
    """The per-tower placement table; raises :class:`AdapterError` (one line) naming trainable parameters
    outside the towers whose spec is not ``frozen``."""
    requested = [
        q for t, s in specs.items() if s is not None and s.method != "frozen" for q in towers.get(t, [])
    ]
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not _under(n, requested)]
    if outside:
        raise AdapterError(
            f"{len(outside)} trainable parameter(s) outside the adapted towers: {_first(outside)}; "
            "adapt their tower in the recipe or leave them frozen"
        )
    return "\n".join(placement_lines(towers, specs, adapted_paths(model, towers, specs)))


def _trainable(layer: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for name, p in layer.named_parameters():
        if p.requires_grad and not name.startswith("base_layer."):
            yield name, p


def dead_adapter_tensors(model: nn.Module) -> tuple[list[str], bool]:
    """(dead tensors, conclusive). Dead: no gradient, or an all-zero one in a layer that got no non-zero
    gradient. When no adapter layer at all got a non-zero gradient (the cause is upstream: a zero-initialised
    head, as the ViT recipes use, zeroes every backbone gradient on step 1), only the ``grad is None``
    tensors are listed and the result is not conclusive: judge zero gradients again on the next step."""
    none: list[str] = []
    zero: list[str] = []
    any_live = False
    for path, layer in adapter_layers(model):
        tensors = list(_trainable(layer))
        live = any(p.grad is not None and bool(p.grad.ne(0).any()) for _, p in tensors)
        any_live |= live
        none.extend(f"{path}.{name}" for name, p in tensors if p.grad is None)
        zero.extend(f"{path}.{name}" for name, p in tensors if p.grad is not None and not live)
    return (sorted(none + zero) if any_live else none), any_live or not zero


def check_gradients(model: nn.Module, allow_dead: bool) -> tuple[list[str], bool]:
    """(dead adapter tensors, conclusive) after a backward; raises :class:`AdapterError` (one line)
    on dead tensors unless ``allow_dead``. Call again after the next backward while not conclusive."""
    dead, conclusive = dead_adapter_tensors(model)
    if dead and not allow_dead:
        raise AdapterError(
            f"{len(dead)} adapter tensor(s) got no or an all-zero gradient after backward: {_first(dead)}; "
            "the adapter is detached from the loss (frozen inputs under checkpointing?) or set "
            "train.allow_dead_adapters=true"
        )
    return dead, conclusive


def _mark_inputs(_module: nn.Module, args: tuple, kwargs: dict) -> None:
    """The hidden states going in (first positional, ``inputs_embeds`` or ``hidden_states``), not masks."""
    for value in (*args[:1], kwargs.get("inputs_embeds"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            value.requires_grad_(True)


def tower_inputs_require_grad(model: nn.Module, prefixes: list[str]) -> list:
    """Make the floating inputs of the checkpointed encoders under ``prefixes`` require grad (modules
    with a ``gradient_checkpointing`` attribute, as transformers marks them). Returns the hook handles."""
    return [
        module.register_forward_pre_hook(_mark_inputs, with_kwargs=True)
        for name, module in model.named_modules()
        if _under(name, prefixes) and hasattr(module, "gradient_checkpointing")
    ]
