"""The adapter registry: typed options per method (one-line errors naming tower, method, option and the
accepted ones), VeRA's seed / save_projection / alpha, lm_head as a target, a new method as one
``Method`` object, and the base recorded in an adapter folder (``base_info``, loadable base path)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from toy_models import LLAVA_TOWERS, inputs, tiny_llava

from vlmtune.adapters import (
    AdapterError,
    AdapterSpec,
    LoraLinear,
    Method,
    adapter_layers,
    attach,
    load_adapter,
    read_base_info,
    registry,
    save_adapter,
)
from vlmtune.adapters.lora.method import LORA_TENSORS, lora_kwargs
from vlmtune.adapters.method import PeftLayer, option

BAD_OPTIONS = [  # (tower, spec, words the one-line error must contain)
    ("language", AdapterSpec(method="vera", r=4, targets=["q"], options={"projection_prng_key": "3"}),
     ["adapters.language.options.projection_prng_key must be int", "'vera'", "'3'"]),
    ("language", AdapterSpec(method="vera", r=4, targets=["q"], options={"save_projection": "yes"}),
     ["adapters.language.options.save_projection must be bool", "'vera'"]),
    ("language", AdapterSpec(method="dvora", r=4, targets=["q"], options={"seed": 3}),
     ["adapters.language.options: unknown DVoRA option(s) seed", "'dvora'",
      "accepted: projection_prng_key (int), save_projection (bool), d_initial (float)"]),
    ("language", AdapterSpec(method="lora", r=4, targets=["q"], options={"rank": 3}),
     ["adapters.language.options: unknown LoRA option(s) rank", "accepted: none"]),
    ("language", AdapterSpec(method="houlsby", targets=["o"], options={"width": 0}),
     ["adapters.language.options.width must be int or null with >= 1", "'houlsby'"]),
    ("language", AdapterSpec(method="houlsby", targets=["o"], options={"placement": "parallel"}),
     ["unknown bottleneck option(s) placement", "accepted: width (int or null), scaling (float), activation"]),
    ("language", AdapterSpec(method="adapter", targets=["o"], options={"activation": "swish"}),
     ["adapters.language.options.activation must be relu | gelu | silu | tanh", "'adapter'"]),
    ("language", AdapterSpec(method="prompt", options={"length": 2.5}),
     ["adapters.language.options.length must be int or null", "'prompt'"]),
    ("language", AdapterSpec(method="dylora", r=4, targets=["q"], options={"r_min": 2}),
     ["unknown DyLoRA option(s) r_min", "accepted: max_rank (int or null), min_rank (int), seed (int or null)"]),
    ("vision", AdapterSpec(method="vpt", options={"deep": 1}),
     ["adapters.vision.options.deep must be bool", "'vpt'"]),
    ("projector", AdapterSpec(method="pin", options={"hidden": [16, "x"]}),
     ["adapters.projector.options.hidden must be list of int", "'pin'"]),
]  # fmt: skip


@pytest.mark.parametrize("tower,spec,words", BAD_OPTIONS, ids=[c[1].method for c in BAD_OPTIONS])
def test_unknown_or_ill_typed_option_is_one_line_naming_tower_method_and_option(tower, spec, words) -> None:
    with pytest.raises(AdapterError) as err:
        attach(tiny_llava(), LLAVA_TOWERS, {tower: spec})
    msg = str(err.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("method", ["vera", "dvora"])
def test_vera_refuses_alpha_and_accepts_it_unset(method: str) -> None:
    with pytest.raises(
        AdapterError,
        match=r"adapters.language.alpha=8.0: (VeRA|DVoRA) has no alpha .*add adapters.language.alpha=null",
    ):
        attach(
            tiny_llava(),
            LLAVA_TOWERS,
            {"language": AdapterSpec(method=method, r=4, alpha=8.0, targets=["q"])},
        )
    spec = AdapterSpec(
        method=method, r=4, targets=["q"], options={"projection_prng_key": 7, "save_projection": False}
    )
    model = tiny_llava()
    attach(model, LLAVA_TOWERS, {"language": spec})
    proj = next(layer for _, layer in adapter_layers(model)).vera_projection
    assert (proj.seed, proj.save_projection) == (7, False)


def test_renamed_options_mean_what_they_say() -> None:
    """bottleneck ``width``, prompt ``length``, DyLoRA ``max_rank``/``min_rank`` set the sizes; ``r`` is
    their default only when the option is not given."""
    model = tiny_llava()
    specs = {
        "language": AdapterSpec(method="dylora", r=8, targets=["q"], options={"max_rank": 3, "min_rank": 2}),
        "vision": AdapterSpec(method="houlsby", r=8, targets=["fc2"], options={"width": 5}),
    }
    attach(model, LLAVA_TOWERS, specs)
    dylora = next(layer for _, layer in adapter_layers(model))
    assert dylora.r == 3 and model._vlmtune_rank_sampler[0].r_min == 2
    bottleneck = next(m for m in model.modules() if type(m).__name__ == "BottleneckAdapter")
    assert bottleneck.adapter_down.weight.shape[0] == 5
    model = tiny_llava()
    attach(model, LLAVA_TOWERS, {"language": AdapterSpec(method="prompt", r=8, options={"length": 3})})
    assert next(m for m in model.modules() if type(m).__name__ == "SoftPrompt").num_tokens == 3


def test_lm_head_is_targetable_and_round_trips(tmp_path) -> None:
    model = tiny_llava()
    attach(model, LLAVA_TOWERS, {"language": AdapterSpec(method="lora", r=2, targets=["lm_head"])})
    assert [p for p, _ in adapter_layers(model)] == ["lm_head"]
    with torch.no_grad():
        model.lm_head.lora_B.weight.normal_()
    out = model(**inputs()).logits
    save_adapter(model, tmp_path / "a")
    fresh = load_adapter(tiny_llava(), tmp_path / "a")
    torch.testing.assert_close(fresh(**inputs()).logits, out)


@dataclass
class HalfOptions:
    share: float = option(0.5, min=0.0, doc="fraction of the LoRA update kept")


class HalfLora(LoraLinear):
    """A LoRA whose update is scaled by ``share`` (a stand-in for a new method)."""

    method = "halflora"


def test_a_new_method_is_one_method_object_and_one_registry_entry(monkeypatch, tmp_path) -> None:
    def build(base, spec, options: HalfOptions, shared):
        return HalfLora(base, spec.r, (spec.alpha or 16.0) * options.share)

    def from_peft(base, info):
        return HalfLora(base, **lora_kwargs(info))

    peft_layer = PeftLayer(HalfLora, "LORA", LORA_TENSORS, False, from_peft, loadable=False)
    new = Method(name="halflora", kind="layer", options=HalfOptions, build=build, peft=(peft_layer,))
    monkeypatch.setitem(registry.METHODS, "halflora", new)
    model = tiny_llava()
    specs = {"language": AdapterSpec(method="halflora", r=2, targets=["q"], options={"share": 0.25})}
    attach(model, LLAVA_TOWERS, specs)
    layers = [layer for _, layer in adapter_layers(model)]
    assert layers and all(type(layer) is HalfLora and layer.alpha == 4.0 for layer in layers)
    with torch.no_grad():
        for layer in layers:
            layer.lora_B.weight.normal_()
    out = model(**inputs()).logits
    save_adapter(model, tmp_path / "a", specs)
    for towers in (LLAVA_TOWERS, None):
        fresh = load_adapter(tiny_llava(), tmp_path / "a", towers)
        assert {type(layer) for _, layer in adapter_layers(fresh)} == {HalfLora}
        torch.testing.assert_close(fresh(**inputs()).logits, out)
    with pytest.raises(AdapterError, match="unknown halflora option"):
        attach(
            tiny_llava(),
            LLAVA_TOWERS,
            {"language": AdapterSpec(method="halflora", targets=["q"], options={"x": 1})},
        )


def test_base_info_round_trips_and_the_loadable_base_is_recorded(tmp_path) -> None:
    model = tiny_llava()
    model.config._name_or_path = "/models/resolved-folder"  # what from_pretrained records
    attach(model, LLAVA_TOWERS, {"language": AdapterSpec(method="lora", r=2, targets=["q"])})
    info = {"fingerprint": "sha256:abc", "files": 3}
    save_adapter(model, tmp_path / "a", base_name_or_path="shapes-tiny", base_info=info)
    assert read_base_info(tmp_path / "a") == info
    meta = json.loads((tmp_path / "a" / "vlmtune_adapter.json").read_text())
    assert (
        meta["base_model_name_or_path"] == "shapes-tiny"
        and meta["base_model_path"] == "/models/resolved-folder"
    )
    peft_cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert peft_cfg["base_model_name_or_path"] == "/models/resolved-folder"
    save_adapter(model, tmp_path / "b")
    assert read_base_info(tmp_path / "b") is None
    assert read_base_info(tmp_path / "no-such-folder") is None


def test_sweep_unsets_alpha_for_vera_and_old_folders_with_the_ignored_default_still_load(tmp_path) -> None:
    from vlmtune.core.config import load_config
    from vlmtune.sweep import alpha_override

    assert alpha_override("language", "vera", 16) == "adapters.language.alpha=null"
    assert alpha_override("language", "dora", 16) == "adapters.language.alpha=16"
    cfg = load_config(
        "vlbart-dora", ["adapters.language.method=vera", alpha_override("language", "vera", 256)]
    )
    assert cfg.adapters.language.alpha is None
    specs = {"language": AdapterSpec(method="vera", r=4, targets=["q", "v"])}
    model = tiny_llava()
    attach(model, LLAVA_TOWERS, specs)
    save_adapter(model, tmp_path / "a", specs)
    meta_path = tmp_path / "a" / "vlmtune_adapter.json"
    meta = json.loads(meta_path.read_text())
    meta["specs"]["language"]["alpha"] = 16.0  # what folders written before recorded
    meta_path.write_text(json.dumps(meta))
    load_adapter(tiny_llava(), tmp_path / "a", LLAVA_TOWERS)
