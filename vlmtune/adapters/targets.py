"""Which modules of a tower an adapter spec names (target resolution), and in-place module surgery.

A pipeline names its towers by module path prefix, e.g. for LLaVA
``{"language": ["model.language_model", "lm_head"], "vision": ["model.vision_tower"], ...}``.
Targets are resolved inside one tower only, so ``q_proj`` for the language tower never touches the
CLIP ``q_proj`` of the vision tower; a prefix that is itself one layer (``lm_head``) is targetable
by its own name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from torch import nn

from vlmtune.core.adapter_spec import AdapterSpec, expand_targets
from vlmtune.core.errors import AdapterError


def tower_modules(model: nn.Module, prefixes: list[str]) -> Iterator[tuple[str, str, nn.Module]]:
    """(full path, path relative to its tower prefix, module) for modules under ``prefixes``."""
    for name, module in model.named_modules():
        for prefix in prefixes:
            if name.startswith(prefix + "."):
                yield name, name[len(prefix) + 1 :], module
                break
            if name == prefix:  # a tower that is itself one layer (lm_head, Mllama's projector)
                yield name, name.rsplit(".", 1)[-1], module
                break


def matches(rel_path: str, names: list[str]) -> bool:
    """Whether a module path (relative to its tower) is named by ``names``: its leaf name equals one,
    or one ``re:<pattern>`` fully matches the path."""
    leaf = rel_path.rsplit(".", 1)[-1]
    for name in names:
        if name.startswith("re:"):
            if re.fullmatch(name[3:], rel_path):
                return True
        elif leaf == name:
            return True
    return False


def resolve_targets(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> list[str]:
    """Full paths of the ``nn.Linear`` layers in a tower that ``spec.targets`` names. Every entry of the
    list must match something (a typo such as ``qproj`` beside ``q_proj`` is an error naming it and the
    closest leaf names, not silently dropped); an alias matches when one of its expansions does."""
    linears = [(full, rel) for full, rel, m in tower_modules(model, prefixes) if isinstance(m, nn.Linear)]
    leaves = sorted({rel.rsplit(".", 1)[-1] for _, rel in linears})
    if not linears:
        bare = [n for n, _ in model.named_parameters() if any(n.startswith(q + ".") for q in prefixes)]
        raise AdapterError(
            f"adapters.{tower}.method={spec.method}: the {tower} tower ({', '.join(prefixes)}) has no linear "
            f"layer to wrap, its weights are bare parameters ({', '.join(bare[:3]) or 'none'}); only "
            f"adapters.{tower}.method=full trains it"
        )
    if not spec.targets:
        raise AdapterError(
            f"adapters.{tower}.targets is empty (targets=[default] names no layer of this family's {tower} "
            f"tower); name them, e.g. adapters.{tower}.targets=[{leaves[0]}] (linear layers there: {', '.join(leaves)})"
        )
    found = [full for full, rel in linears if matches(rel, spec.target_names())]
    if not found:
        raise AdapterError(
            f"adapters.{tower}.targets={spec.targets} matched no linear layer under {prefixes}; "
            f"linear layers there are named: {', '.join(leaves) or '(none)'}"
        )
    for target in spec.targets:
        if not any(matches(rel, expand_targets([target])) for _, rel in linears):
            close = difflib.get_close_matches(target.removeprefix("re:"), leaves, n=3, cutoff=0.5)
            raise AdapterError(
                f"adapters.{tower}.targets: '{target}' matches no linear layer under {prefixes}"
                + (
                    f"; did you mean {', '.join(close)}?"
                    if close
                    else f"; they are named: {', '.join(leaves)}"
                )
            )
    return found


def resolve_magnitude_only(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> list[str]:
    """Full paths of the linear layers that ``spec.magnitude_only`` names (DoRA §5.6)."""
    if not spec.magnitude_only:
        return []
    names = expand_targets(spec.magnitude_only)
    found = [
        full
        for full, rel, m in tower_modules(model, prefixes)
        if isinstance(m, nn.Linear) and matches(rel, names)
    ]
    if not found:
        raise AdapterError(
            f"adapters.{tower}.magnitude_only={spec.magnitude_only} matched no linear layer under {prefixes}"
        )
    return found


def set_trainable(model: nn.Module, path: str) -> None:
    """Train the module or parameter at ``path`` (a tower prefix may name a bare parameter, e.g. LLaVA-NeXT's
    ``model.image_newline`` or BLIP-2's ``query_tokens``)."""
    try:
        model.get_submodule(path).requires_grad_(True)
    except AttributeError:
        model.get_parameter(path).requires_grad_(True)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` in ``model`` (in place)."""
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def base_linear(model: nn.Module, path: str, where: object) -> nn.Linear:
    """The ``nn.Linear`` at ``path``, or a one-line :class:`AdapterError` naming ``where`` it was asked for."""
    try:
        base = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"{where}: module '{path}' does not exist in this base model") from None
    if not isinstance(base, nn.Linear):
        raise AdapterError(f"{where}: module '{path}' is {type(base).__name__}, not nn.Linear")
    return base
