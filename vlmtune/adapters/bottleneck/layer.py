"""Bottleneck adapters: Houlsby et al. (ICML 2019) serial and He et al. (ICLR 2022) parallel.

    serial   (Houlsby):  h = f(x);  h <- h + s * W_up act(W_down h)
    parallel (He et al.): h = f(x) + s * W_up act(W_down x)

``f`` is the wrapped module: for Houlsby's placement wrap the attention output projection and
the FFN's output projection (``targets: [o, down]`` / ``[out_proj, fc2]``); for He et al.'s
parallel adapter wrap the whole FFN block (``targets: [mlp]``). W_down: (width, d_in) with a
bias, W_up: (d_out, width) with a bias, zero-initialised, so the model starts unchanged. Methods and
options: :mod:`vlmtune.adapters.bottleneck.method`.

These add layers, so they cannot be merged; their tensors are saved by model key in the
adapter folder's ``trainable_extras.safetensors``.
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def io_features(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear layer, or of a block: first linear's input, last linear's output."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no nn.Linear to read its width from")
    return linears[0].in_features, linears[-1].out_features


class BottleneckAdapter(nn.Module):
    """``base_layer`` plus a down-act-up bottleneck, serial (on its output) or parallel (on its input).

    Shapes: x (..., d_in) -> (..., d_out); adapter_down (width, d_in); adapter_up (d_out, width).
    """

    adapter_module = True  # counted as adapter parameters by the report; not mergeable

    def __init__(
        self,
        base_layer: nn.Module,
        width: int,
        placement: str = "serial",
        scaling: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if placement not in ("serial", "parallel"):
            raise ValueError(f"placement must be serial or parallel, got {placement!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        d_in, d_out = io_features(base_layer)
        if placement == "serial":
            d_in = d_out
        ref = next(base_layer.parameters())
        self.base_layer, self.width, self.placement, self.scaling = base_layer, width, placement, scaling
        self.method = "houlsby" if placement == "serial" else "parallel"
        self.adapter_down = nn.Linear(d_in, width, device=ref.device, dtype=ref.dtype)
        self.adapter_up = nn.Linear(width, d_out, device=ref.device, dtype=ref.dtype)
        self.adapter_act = ACTIVATIONS[activation]()
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def branch(self, h):
        return self.adapter_up(self.adapter_act(self.adapter_down(h))) * self.scaling

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        if self.placement == "serial":
            first = first + self.branch(first)
        else:
            x = args[0] if args else next(iter(kwargs.values()))
            first = first + self.branch(x)
        return (first, *out[1:]) if isinstance(out, tuple) else first

    def extra_repr(self) -> str:
        return f"width={self.width}, placement={self.placement}, scaling={self.scaling}"
