"""VeRA and DVoRA in the registry: typed options, the shared projection and PEFT mapping.

Options: ``projection_prng_key`` (int seed of the shared pair, default 0), ``save_projection`` (bool,
write the pair into the folder, default true), ``d_initial`` (float init of Λ_d, default 0.1).
VeRA has no ``alpha`` (the scale is learned in Λ_b, Λ_d): setting ``adapters.<tower>.alpha`` is an
error. PEFT: ``VeraConfig`` layer; tensors ``vera_lambda_b`` (out,), ``vera_lambda_d`` (r,), plus
``base_model.vera_A`` / ``base_model.vera_B`` once per model. DVoRA adds ``lora_magnitude_vector``;
PEFT 0.21 has no DVoRA (``VeraConfig`` has no DoRA option, its VeRA layer would ignore the magnitude), so
its PEFT type is None: its tensors go to ``trainable_extras.safetensors`` (``not_in_peft``), never into
a ``VeraConfig`` a PEFT reader would load as plain VeRA.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vlmtune.adapters.method import Method, PeftLayer, PeftLayerInfo, option
from vlmtune.adapters.vera.layer import DVoraLinear, VeraLinear, VeraProjection, shared_projection
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError

VERA_TENSORS = frozenset({"vera_lambda_b", "vera_lambda_d"})


@dataclass
class VeraOptions:
    projection_prng_key: int = option(0, doc="seed of the shared random pair A, B")
    save_projection: bool = option(True, doc="write vera_A / vera_B into the adapter folder")
    d_initial: float = option(0.1, doc="initial value of Λ_d")


def build_projection(
    bases: list[nn.Linear], specs: list[AdapterSpec], options: list[VeraOptions]
) -> VeraProjection:
    """The pair shared by every VeRA/DVoRA layer of the model (all towers)."""
    keys = {(s.r, o.projection_prng_key, o.save_projection) for s, o in zip(specs, options, strict=True)}
    if len(keys) > 1:
        raise AdapterError(
            "adapters: all VeRA/DVoRA towers share one projection, so r, options.projection_prng_key and "
            f"options.save_projection must be equal across towers (got {sorted(keys)})"
        )
    r, seed, save = keys.pop()
    proj = shared_projection(r, seed, [(b.out_features, b.in_features) for b in bases], save)
    return proj.to(bases[0].weight.device)


def layer_options(layer: VeraLinear) -> dict:
    """The options that rebuild ``layer`` (``save_adapter`` without tower specs)."""
    proj = layer.vera_projection
    return {
        "projection_prng_key": proj.seed,
        "save_projection": proj.save_projection,
        "d_initial": layer.d_initial,
    }


def _kwargs(spec: AdapterSpec, options: VeraOptions) -> dict:
    return {"dropout": spec.dropout, "d_initial": options.d_initial}


def _peft_kwargs(info: PeftLayerInfo) -> dict:
    return {"dropout": info.config.get("vera_dropout", 0.0), "d_initial": info.config.get("d_initial", 0.1)}


VERA = Method(
    name="vera",
    kind="layer",
    label="VeRA",
    options=VeraOptions,
    build=lambda base, spec, o, proj: VeraLinear(base, proj, **_kwargs(spec, o)),
    family="vera",
    shared=build_projection,
    uses_alpha=False,
    layer_options=layer_options,
    peft=(
        PeftLayer(
            VeraLinear, "VERA", VERA_TENSORS, False, lambda b, i: VeraLinear(b, i.shared, **_peft_kwargs(i))
        ),
    ),
)
DVORA = Method(
    name="dvora",
    kind="layer",
    label="DVoRA",
    options=VeraOptions,
    build=lambda base, spec, o, proj: DVoraLinear(
        base, proj, **_kwargs(spec, o), detach_norm=spec.detach_norm
    ),
    family="vera",
    shared=build_projection,
    uses_alpha=False,
    layer_options=layer_options,
    magnitude=True,
    peft=(
        PeftLayer(
            DVoraLinear,
            None,
            VERA_TENSORS | {"lora_magnitude_vector"},
            True,
            lambda b, i: DVoraLinear(b, i.shared, **_peft_kwargs(i)),
            loadable=False,
        ),
    ),
)
