"""PIN: Positional Insert (Dorkenwald, Barazani, Snoek, Asano, CVPR 2024).

    v'_p = v_p + MLP(PE(p)),      p = 0..N-1 (token index of the vision features)

``PE`` is a fixed 1-D sinusoidal table (N, F) (F = 64); the MLP is F -> h_1 -> ... -> D with SiLU +
LayerNorm after each hidden layer (paper: 64 -> 512 -> 768 -> D). The insert is input-agnostic: the
same (N, D) term is added to every image's features, right before the module that consumes the
frozen vision encoder's output (LLaVA: the projector; Flamingo: the Perceiver). The whole VLM stays
frozen; only the MLP trains, by next-token prediction of box text.

The output layer starts at zero, so an untrained PIN leaves the model exactly as it was.
Recipe: ``adapters.projector: {method: pin, options: {hidden: [512, 768], freq_dim: 64}}``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from vlmtune.core.errors import AdapterError


def sinusoid_table(n: int, dim: int, device=None) -> torch.Tensor:
    """(n, dim): [sin(p w_i), cos(p w_i)] with w_i = 10000^(-2i/dim) (Vaswani et al., 2017)."""
    if dim % 2:
        raise AdapterError(f"PIN freq_dim must be even, got {dim}")
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.empty(n, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class PositionalInsert(nn.Module):
    """MLP(PE) -> (N, D), added to features (B, N, D)."""

    adapter_module = True  # counted as added parameters by vlmtune.adapters.report

    def __init__(self, dim: int, freq_dim: int = 64, hidden: tuple[int, ...] = (512, 768)) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        layers: list[nn.Module] = []
        d = freq_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.SiLU(), nn.LayerNorm(h)]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(d, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, n: int) -> torch.Tensor:
        """The insert for ``n`` tokens, (n, D)."""
        table = sinusoid_table(n, self.freq_dim, self.out.weight.device).to(self.out.weight.dtype)
        return self.out(self.mlp(table))

    def add_to(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> x + PIN (broadcast over the batch)."""
        if x.dim() != 3:
            raise AdapterError(
                f"PIN expects vision features (B, N, D); got a tensor of shape {tuple(x.shape)}"
            )
        return x + self(x.shape[1]).to(x.dtype)


def _pre_hook(pin: PositionalInsert, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if args:
        return (pin.add_to(args[0]), *args[1:]), kwargs
    key = next(iter(kwargs))
    return args, {**kwargs, key: pin.add_to(kwargs[key])}


def input_dim(module: nn.Module) -> int:
    """Feature width a module consumes: ``in_features`` of its first linear layer."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise AdapterError(f"PIN: {type(module).__name__} has no linear layer to infer the feature width from")


def add_pin(module: nn.Module, freq_dim: int = 64, hidden: tuple[int, ...] = (512, 768)) -> PositionalInsert:
    """Attach a PIN in front of ``module`` (as ``module.pin``, trainable) and return it."""
    if hasattr(module, "pin"):
        raise AdapterError(f"{type(module).__name__} already has a PIN attached")
    ref = next(module.parameters())
    pin = PositionalInsert(input_dim(module), freq_dim, tuple(hidden)).to(ref.device)
    module.pin = pin
    module.register_forward_pre_hook(partial(_pre_hook, pin), with_kwargs=True)
    pin.requires_grad_(True)
    return pin
