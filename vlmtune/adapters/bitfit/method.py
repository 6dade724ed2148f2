"""BitFit (Ben Zaken et al., ACL 2022): train only the bias terms of a tower.

``method: bitfit`` marks every ``bias`` parameter under the tower trainable; nothing is added, so
the trainable share is the tower's biases (about 0.1% of ViT-B). Mergeable trivially (no new tensors).
No options.
"""

from __future__ import annotations

from torch import nn

from vlmtune.adapters.method import Method
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError


def bitfit_hook(model: nn.Module, tower: nn.Module, spec: AdapterSpec, options, tower_name: str) -> None:
    """Unfreeze the biases of one prefix of the tower (a tower may be several prefixes)."""
    for p in _biases(tower):
        p.requires_grad_(True)


def check_biases(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower_name: str) -> None:
    """Refuse a tower with no bias under any of its prefixes (after every prefix was hooked)."""
    if not any(_biases(model.get_submodule(p)) for p in prefixes):
        raise AdapterError(
            f"adapters.{tower_name}.method=bitfit: the {tower_name} tower ({', '.join(prefixes)}) has no bias "
            "parameters; choose another method for it"
        )


def _biases(module: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]


METHOD = Method(
    name="bitfit", kind="tower", label="BitFit", hook=bitfit_hook, check=check_biases, uses_r=False
)
