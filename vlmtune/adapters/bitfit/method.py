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
    """Unfreeze the biases of ``tower``."""
    biases = [p for name, p in tower.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        raise AdapterError(
            f"adapters.{tower_name}.method=bitfit: the {tower_name} tower has no bias parameters"
        )
    for p in biases:
        p.requires_grad_(True)


METHOD = Method(name="bitfit", kind="tower", label="BitFit", hook=bitfit_hook, uses_r=False)
