"""Every registered adapter method goes through one contract on a tiny LLaVA (all three towers):

1. forward: attached, with its trainable tensors moved off their initial values, the model's output
   changes (``frozen``: nothing trains and nothing changes); the base weights stay frozen;
2. merge: a mergeable method's merged model gives the same output and has no adapter layer left; a
   method that adds layers refuses with a one-line ``AdapterError``;
3. save/load: the saved adapter folder, loaded onto a fresh base, gives the same output.

A new method registered without a case below fails ``test_every_registered_method_has_a_case``.
"""

from __future__ import annotations

import pytest
import torch
from toy_models import LLAVA_TOWERS, inputs, perturb_trainable, tiny_llava

from vlmtune.adapters import (
    AdapterError,
    AdapterSpec,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    save_adapter,
)
from vlmtune.adapters.registry import known_methods

# method -> (tower, spec, mergeable)
CASES: dict[str, tuple[str, AdapterSpec, bool]] = {
    "frozen": ("language", AdapterSpec(method="frozen"), True),
    "full": ("projector", AdapterSpec(method="full"), True),
    "lora": ("language", AdapterSpec(method="lora", r=4, targets=["q", "v"]), True),
    "dora": ("language", AdapterSpec(method="dora", r=4, targets=["q", "v", "down"]), True),
    "dylora": ("language", AdapterSpec(method="dylora", r=4, targets=["q", "v"]), True),
    "vera": ("language", AdapterSpec(method="vera", r=8, targets=["q", "v", "up"]), True),
    "dvora": ("language", AdapterSpec(method="dvora", r=8, targets=["q", "v", "up"]), True),
    "bitfit": ("vision", AdapterSpec(method="bitfit"), True),
    "houlsby": (
        "language",
        AdapterSpec(method="houlsby", targets=["o", "down"], options={"width": 4}),
        False,
    ),
    "parallel": ("language", AdapterSpec(method="parallel", targets=["mlp"], options={"width": 4}), False),
    "bottleneck": (
        "language",
        AdapterSpec(method="bottleneck", targets=["down"], options={"width": 4}),
        False,
    ),
    "adapter": (
        "language",
        AdapterSpec(method="adapter", targets=["down"], options={"width": 4, "placement": "parallel"}),
        False,
    ),
    "prompt": ("language", AdapterSpec(method="prompt", options={"length": 3}), False),
    "pin": ("projector", AdapterSpec(method="pin", options={"hidden": [16]}), False),
    "vpt": ("vision", AdapterSpec(method="vpt", options={"length": 3}), False),
}


def output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs()).logits


def attached(method: str) -> tuple[torch.nn.Module, dict[str, AdapterSpec]]:
    """A tiny LLaVA with ``method`` attached and every trainable tensor moved by a seeded step."""
    tower, spec, _ = CASES[method]
    model = tiny_llava()
    specs = {tower: spec}
    attach(model, LLAVA_TOWERS, specs)
    perturb_trainable(model, 0.2, seed=1)
    return model, specs


def test_every_registered_method_has_a_case() -> None:
    assert sorted(CASES) == known_methods(), "add the new method to CASES in tests/test_method_contract.py"


@pytest.mark.parametrize("method", known_methods())
def test_method_contract_forward_merge_save_load(method: str, tmp_path) -> None:
    base_out = output(tiny_llava())
    model, specs = attached(method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    out = output(model)
    assert torch.isfinite(out).all() and out.shape == base_out.shape
    if method == "frozen":
        assert not trainable and torch.equal(out, base_out)
    else:
        assert trainable and (out - base_out).abs().max() > 1e-4, (
            f"{method}: trained tensors do not reach the output"
        )
    if method not in (
        "full",
    ):  # ``full`` trains the tower's own weights, every other method leaves them frozen
        assert not any(n.endswith(("base_layer.weight",)) for n in trainable)

    fresh = tiny_llava()
    save_adapter(model, tmp_path / method, specs)
    load_adapter(fresh, tmp_path / method, towers=LLAVA_TOWERS)
    torch.testing.assert_close(output(fresh), out, rtol=1e-5, atol=1e-5)

    if CASES[method][2]:
        merge(model)
        assert not list(adapter_layers(model))
        torch.testing.assert_close(output(model), out, rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(AdapterError, match="cannot be merged"):
            merge(model)
