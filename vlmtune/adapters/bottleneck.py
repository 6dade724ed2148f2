"""Bottleneck adapters: Houlsby et al. (ICML 2019) serial and He et al. (ICLR 2022) parallel.

    serial   (Houlsby):  h = f(x);  h <- h + s * W_up act(W_down h)
    parallel (He et al.): h = f(x) + s * W_up act(W_down x)

``f`` is the wrapped module: for Houlsby's placement wrap the attention output projection and
the FFN's output projection (``targets: [o, down]`` / ``[out_proj, fc2]``); for He et al.'s
parallel adapter wrap the whole FFN block (``targets: [mlp]``). W_down: (r, d_in) with a bias,
W_up: (d_out, r) with a bias, zero-initialised, so the model starts unchanged. ``r`` is the
bottleneck size. Methods ``houlsby`` / ``parallel``, or ``adapter`` (= ``bottleneck``) with option
``placement`` (serial | parallel),
``scaling`` s (1.0; He et al. use 4 for the FFN), ``activation`` (relu | gelu | silu | tanh).

These add layers, so they cannot be merged; their tensors are saved by model key in the
adapter folder's ``trainable_extras.safetensors``.
"""

from __future__ import annotations

from torch import nn

from vlmtune.adapters.inject import TOWER_CHECKS, _matches, register_tower_method
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError

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

    Shapes: x (..., d_in) -> (..., d_out); adapter_down (r, d_in); adapter_up (d_out, r).
    """

    adapter_module = True  # counted as adapter parameters by the report; not mergeable

    def __init__(
        self,
        base_layer: nn.Module,
        r: int,
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
        self.base_layer, self.r, self.placement, self.scaling = base_layer, r, placement, scaling
        self.method = "houlsby" if placement == "serial" else "parallel"
        self.adapter_down = nn.Linear(d_in, r, device=ref.device, dtype=ref.dtype)
        self.adapter_up = nn.Linear(r, d_out, device=ref.device, dtype=ref.dtype)
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
        return f"r={self.r}, placement={self.placement}, scaling={self.scaling}"


def _hook(placement: str | None):
    def attach_bottleneck(model: nn.Module, tower: nn.Module, spec: AdapterSpec, name: str) -> None:
        place = placement or spec.options.get("placement", "serial")
        names = spec.target_names()
        found = [rel for rel, m in tower.named_modules() if rel and _matches(rel, names)]
        found = [rel for rel in found if not any(rel.startswith(o + ".") for o in found)]  # outermost
        if not found:
            return  # a tower can have several prefixes; attach() checks that something matched
        for rel in found:
            parent, _, child = rel.rpartition(".")
            holder = tower.get_submodule(parent) if parent else tower
            try:
                adapter = BottleneckAdapter(
                    getattr(holder, child),
                    spec.r,
                    placement=place,
                    scaling=float(spec.options.get("scaling", 1.0)),
                    activation=str(spec.options.get("activation", "relu")),
                )
            except ValueError as e:
                raise AdapterError(f"adapters.{name}: cannot wrap '{rel}': {e}") from None
            setattr(holder, child, adapter)

    return attach_bottleneck


def check_attached(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> None:
    """One-line error when a bottleneck spec matched nothing in the tower."""
    if not any(isinstance(m, BottleneckAdapter) for p in prefixes for m in model.get_submodule(p).modules()):
        raise AdapterError(
            f"adapters.{tower}.targets={spec.targets} matched no module under {prefixes} for a bottleneck "
            "adapter (serial: e.g. [o, down]; parallel: e.g. [mlp])"
        )


for _name, _placement in (
    ("houlsby", "serial"),
    ("parallel", "parallel"),
    ("bottleneck", None),
    ("adapter", None),
):
    register_tower_method(_name, _hook(_placement))
    TOWER_CHECKS[_name] = check_attached
