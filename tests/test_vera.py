"""VeRA against peft 0.21 (outputs, gradients, merge, save/load both ways) and DVoRA math."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from toy_models import TARGETS, TOWERS, Block, Toy, assert_close, peft_twins

from vlmtune.adapters import (
    AdapterError,
    AdapterSpec,
    DVoraLinear,
    VeraLinear,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    param_report,
    save_adapter,
)
from vlmtune.adapters.targets import replace_module
from vlmtune.adapters.vera import VeraProjection

peft = pytest.importorskip("peft")

R = 8


def vera_spec(method: str = "vera", **options) -> AdapterSpec:
    return AdapterSpec(method=method, r=R, targets=TARGETS, options=options)


def make_pair(seed: int = 0, save_projection: bool = True):
    """peft VeRA with random (non-identity) scaling vectors, and vlmtune VeRA with the same ones."""
    cfg = peft.VeraConfig(
        r=R,
        target_modules=TARGETS,
        projection_prng_key=seed,
        save_projection=save_projection,
        init_weights=False,
    )
    spec = vera_spec(projection_prng_key=seed, save_projection=save_projection)
    base, ours, ref, pairs = peft_twins(cfg, spec)
    for _, layer, src in pairs:
        with torch.no_grad():
            src.vera_lambda_b["default"].normal_()  # peft's init_weights=False leaves b = 1
            layer.vera_lambda_b.copy_(src.vera_lambda_b["default"])
            layer.vera_lambda_d.copy_(src.vera_lambda_d["default"])
    return base, ours, ref


@pytest.mark.parametrize("seed", [0, 1234])
def test_shared_projection_is_peft_bit_for_bit(seed: int) -> None:
    _, ours, ref = make_pair(seed)
    proj = next(layer for _, layer in adapter_layers(ours)).vera_projection
    assert proj.vera_A.shape == (R, 48) and proj.vera_B.shape == (48, R)  # largest in / out over targets
    assert torch.equal(proj.vera_A, ref.base_model.vera_A["default"])
    assert torch.equal(proj.vera_B, ref.base_model.vera_B["default"])
    layers = [layer for _, layer in adapter_layers(ours)]
    assert len(layers) == 8 and all(layer.vera_projection is proj for layer in layers)


def test_init_is_identity_and_only_vectors_train() -> None:
    torch.manual_seed(0)
    base = Toy()
    model = copy.deepcopy(base)
    attach(model, TOWERS, {"language": vera_spec()})
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=0)  # b = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("vera_lambda_b", "vera_lambda_d")) for n in trainable)
    layer = model.layers[0].up_proj
    assert torch.all(layer.vera_lambda_d == 0.1) and layer.vera_lambda_b.shape == (48,)
    rows = {r.name: r for r in param_report(model, TOWERS)}
    assert rows["language"].trainable == 2 * (4 * R + 32 + 32 + 48 + 32)  # 4 layers per block


def test_forward_and_gradients_match_peft() -> None:
    _, ours, ref = make_pair()
    x = torch.randn(3, 5, 32)
    y_ours, y_ref = ours(x), ref(x)
    assert_close(y_ours, y_ref)
    w = torch.randn_like(y_ref)
    (y_ours * w).sum().backward()
    (y_ref * w).sum().backward()
    ref_layers = dict(ref.named_modules())
    for path, layer in adapter_layers(ours):
        src = ref_layers[f"base_model.model.{path}"]
        assert_close(layer.vera_lambda_b.grad, src.vera_lambda_b["default"].grad)
        assert_close(layer.vera_lambda_d.grad, src.vera_lambda_d["default"].grad)


def test_nonzero_scaling_vectors_change_the_output() -> None:
    base, ours, _ = make_pair()
    x = torch.randn(2, 32)
    assert (ours(x) - base(x)).abs().max() > 1e-3


def test_merge_matches_peft_and_forward() -> None:
    _, ours, ref = make_pair()
    x = torch.randn(4, 32)
    expected = ours(x)
    merged_ref = ref.merge_and_unload()
    merge(ours)
    assert not list(adapter_layers(ours))
    assert_close(ours(x), expected)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), merged_ref.named_parameters(), strict=True):
        assert n1 == n2
        assert_close(p1, p2)


@pytest.mark.parametrize("save_projection", [True, False])
def test_vlmtune_folder_loads_in_peft(tmp_path, save_projection: bool) -> None:
    _, ours, _ = make_pair(seed=7, save_projection=save_projection)
    x = torch.randn(2, 7, 32)
    expected = ours(x)
    save_adapter(ours, tmp_path / "a", base_name_or_path="toy")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "VERA" and cfg["projection_prng_key"] == 7 and cfg["r"] == R
    torch.manual_seed(0)
    loaded = peft.PeftModel.from_pretrained(Toy(), tmp_path / "a")
    assert_close(loaded(x), expected)


@pytest.mark.parametrize("save_projection", [True, False])
def test_peft_folder_loads_in_vlmtune(tmp_path, save_projection: bool) -> None:
    _, _, ref = make_pair(seed=3, save_projection=save_projection)
    x = torch.randn(2, 7, 32)
    expected = ref(x)
    ref.save_pretrained(tmp_path / "p")
    torch.manual_seed(0)
    fresh = Toy()
    load_adapter(fresh, tmp_path / "p")
    layers = dict(adapter_layers(fresh))
    assert len(layers) == 8 and all(type(m) is VeraLinear for m in layers.values())
    assert_close(fresh(x), expected)


def test_roundtrip_with_meta_and_saved_projection_wins(tmp_path) -> None:
    """A saved projection is used as is, even if the seed would regenerate another one."""
    _, ours, _ = make_pair()
    proj = next(layer for _, layer in adapter_layers(ours)).vera_projection
    with torch.no_grad():
        proj.vera_A.mul_(2.0)
    x = torch.randn(3, 32)
    expected = ours(x)
    save_adapter(ours, tmp_path / "a", specs={"language": vera_spec()})
    torch.manual_seed(0)
    fresh = load_adapter(Toy(), tmp_path / "a", towers=TOWERS)
    assert_close(fresh(x), expected)


def test_projection_shape_mismatch_is_one_line_error(tmp_path) -> None:
    _, ours, _ = make_pair()
    save_adapter(ours, tmp_path / "a")
    proj = VeraProjection(R, 16, 16)
    with pytest.raises(AdapterError, match="vera_A"):
        proj.load(torch.zeros(R + 1, 48), torch.zeros(48, R), where="x")


def test_towers_must_share_rank() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Block(), Block()

    with pytest.raises(AdapterError, match="share one projection"):
        attach(
            Two(),
            {"language": ["a"], "vision": ["b"]},
            {"language": vera_spec(), "vision": AdapterSpec(method="vera", r=4, targets=["q_proj"])},
        )


# ---- DVoRA: DoRA eq. 5 with the VeRA update as ΔV -------------------------------------------------


def random_dvora() -> DVoraLinear:
    torch.manual_seed(2)
    base = nn.Linear(16, 24)
    proj = VeraProjection(R, 16, 24, seed=0)
    layer = DVoraLinear(base, proj)
    with torch.no_grad():
        layer.vera_lambda_b.normal_()
        layer.vera_lambda_d.normal_()
        layer.lora_magnitude_vector.mul_(torch.rand(24) + 0.5)
    return layer


def dense_dvora_weight(layer: DVoraLinear) -> torch.Tensor:
    a = layer.vera_projection.vera_A[:, :16]
    b = layer.vera_projection.vera_B[:24]
    v = layer.base_layer.weight + torch.diag(layer.vera_lambda_b) @ b @ torch.diag(layer.vera_lambda_d) @ a
    return layer.lora_magnitude_vector[:, None] * v / v.norm(dim=1, keepdim=True)


def test_dvora_starts_as_base_layer() -> None:
    base = nn.Linear(16, 24)
    layer = DVoraLinear(base, VeraProjection(R, 16, 24))
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_magnitude_vector.detach(), base.weight.norm(dim=1))


def test_dvora_forward_merge_unmerge() -> None:
    layer = random_dvora()
    x = torch.randn(3, 16)
    expected = x @ dense_dvora_weight(layer).T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    w0 = layer.base_layer.weight.detach().clone()
    w_merged = dense_dvora_weight(layer).detach()
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, w_merged, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_dvora_gradients_follow_detach_norm(detach_norm: bool) -> None:
    """detach_norm=False: gradients of the dense equation; True: the norm is a constant (DoRA §4.3)."""
    layer = random_dvora()
    layer.detach_norm = detach_norm
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    got = (layer.vera_lambda_b.grad.clone(), layer.vera_lambda_d.grad.clone())
    for p in (layer.vera_lambda_b, layer.vera_lambda_d):
        p.grad = None
    a = layer.vera_projection.vera_A[:, :16]
    b = layer.vera_projection.vera_B[:24]
    v = layer.base_layer.weight + (layer.vera_lambda_b[:, None] * b) @ (layer.vera_lambda_d[:, None] * a)
    norm = v.norm(dim=1, keepdim=True)
    w = layer.lora_magnitude_vector[:, None] * v / (norm.detach() if detach_norm else norm)
    (x @ w.T + layer.base_layer.bias).square().sum().backward()
    torch.testing.assert_close(got[0], layer.vera_lambda_b.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], layer.vera_lambda_d.grad, rtol=1e-4, atol=1e-5)


def test_dvora_attach_save_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = Toy()
    spec = vera_spec("dvora")
    attach(model, TOWERS, {"language": spec})
    assert all(isinstance(m, DVoraLinear) for _, m in adapter_layers(model))
    with torch.no_grad():
        for _, m in adapter_layers(model):
            m.vera_lambda_b.normal_()
            m.lora_magnitude_vector.mul_(1.5)
    x = torch.randn(2, 32)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs={"language": spec})
    for folder_towers in (TOWERS, None):  # with vlmtune's meta, and PEFT-style from the tensors
        torch.manual_seed(0)
        fresh = load_adapter(Toy(), tmp_path / "a", towers=folder_towers)
        assert all(isinstance(m, DVoraLinear) for _, m in adapter_layers(fresh))
        assert_close(fresh(x), expected)
    merge(model)
    assert_close(model(x), expected)


def test_mixed_families_lora_and_vera_roundtrip(tmp_path) -> None:
    """LoRA in one tower and VeRA in another: LoRA goes to the PEFT file, VeRA vectors to extras."""

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = Block(), Block()

        def forward(self, x):
            return self.b(self.a(x))

    towers = {"language": ["a"], "vision": ["b"]}
    specs = {"language": AdapterSpec(method="lora", r=2, targets=["q_proj"]), "vision": vera_spec()}
    model = Two()
    attach(model, towers, specs)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for name, p in layer.named_parameters():
                if not name.startswith("base_layer"):
                    p.normal_()
    x = torch.randn(2, 32)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs=specs)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["target_modules"] == ["a.q_proj"]
    fresh = load_adapter(Two(), tmp_path / "a", towers=towers)
    assert_close(fresh(x), expected)


# ---- DVoRA in a PEFT folder: PEFT 0.21 has no DVoRA, so it must never load it as plain VeRA --------------
DVORA_TENSORS = ("lora_magnitude_vector", "vera_lambda_b", "vera_lambda_d")
VERA_PAIR = ("base_model.vera_A", "base_model.vera_B")  # saved with the DVoRA tensors (save_projection)


def trained_dvora(model: nn.Module, towers: dict, spec: AdapterSpec) -> None:
    """Attach DVoRA and move its vectors and magnitude away from their (identity) init."""
    attach(model, towers, {"language": spec})
    with torch.no_grad():
        for _, m in adapter_layers(model):
            if isinstance(m, DVoraLinear):
                m.vera_lambda_b.normal_()
                m.lora_magnitude_vector.mul_(1.5)


def test_dvora_folder_is_refused_by_peft_and_exact_in_vlmtune(tmp_path) -> None:
    torch.manual_seed(0)
    model, spec = Toy(), vera_spec("dvora")
    trained_dvora(model, TOWERS, spec)
    x = torch.randn(2, 7, 32)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs={"language": spec})
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    meta = json.loads((tmp_path / "a" / "vlmtune_adapter.json").read_text())
    paths = [p for p, _ in adapter_layers(model)]
    assert cfg["peft_type"] == "LORA" and not any(p in cfg["target_modules"] for p in paths)
    assert meta["not_in_peft"] == sorted([*(f"{p}.{t}" for p in paths for t in DVORA_TENSORS), *VERA_PAIR])
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="DVoRA layers exist only in vlmtune"):
        peft.PeftModel.from_pretrained(Toy(), tmp_path / "a")  # never a silent VeRA without magnitude
    for towers in (TOWERS, None):
        torch.manual_seed(0)
        fresh = load_adapter(Toy(), tmp_path / "a", towers=towers)
        assert all(isinstance(m, DVoraLinear) for _, m in adapter_layers(fresh))
        assert_close(fresh(x), expected, rtol=1e-6)


def test_dvora_with_lora_folder_loads_lora_exactly_in_peft(tmp_path) -> None:
    """DVoRA on one block, LoRA on the other: PEFT gets the LoRA layers (exact), DVoRA is not_in_peft."""
    towers = {"language": ["layers.0"], "vision": ["layers.1"]}
    lora = AdapterSpec(method="lora", r=2, alpha=4, targets=["q_proj", "up_proj"])
    specs = {"language": vera_spec("dvora"), "vision": lora}
    torch.manual_seed(0)
    model = Toy()
    attach(model, towers, specs)
    with torch.no_grad():
        for _, m in adapter_layers(model):
            for name, p in m.named_parameters():
                if not name.startswith("base_layer"):
                    p.normal_()
    x = torch.randn(2, 7, 32)
    expected = model(x)
    save_adapter(model, tmp_path / "a", specs=specs)
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    meta = json.loads((tmp_path / "a" / "vlmtune_adapter.json").read_text())
    assert cfg["target_modules"] == ["layers.1.q_proj", "layers.1.up_proj"] and not cfg["use_dora"]
    dvora = [p for p, m in adapter_layers(model) if isinstance(m, DVoraLinear)]
    assert len(dvora) == 4
    assert meta["not_in_peft"] == sorted([*(f"{p}.{t}" for p in dvora for t in DVORA_TENSORS), *VERA_PAIR])
    lora_only = copy.deepcopy(model)  # what PEFT can compute: the LoRA block, DVoRA block as the base
    for path in dvora:
        replace_module(lora_only, path, lora_only.get_submodule(path).base_layer)
    torch.manual_seed(0)
    loaded = peft.PeftModel.from_pretrained(Toy(), tmp_path / "a")
    assert_close(loaded(x), lora_only(x))
    assert (loaded(x) - expected).abs().max() > 1e-3  # the DVoRA block is really missing in PEFT
    torch.manual_seed(0)
    fresh = load_adapter(Toy(), tmp_path / "a", towers=towers)
    assert_close(fresh(x), expected, rtol=1e-6)


def test_dvora_folder_written_before_the_fix_still_loads(tmp_path) -> None:
    """Older folders hold DVoRA tensors in adapter_model.safetensors under a VeraConfig: vlmtune reads them."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model, spec = Toy(), vera_spec("dvora")
    trained_dvora(model, TOWERS, spec)
    x = torch.randn(2, 7, 32)
    expected = model(x)
    folder = save_adapter(model, tmp_path / "a", specs={"language": spec})
    proj = next(m for _, m in adapter_layers(model)).vera_projection
    extras = load_file(folder / "trainable_extras.safetensors")
    old = {f"base_model.model.{k}": v for k, v in extras.items() if k not in VERA_PAIR}
    old |= {"base_model.vera_A": proj.vera_A, "base_model.vera_B": proj.vera_B}
    save_file(old, folder / "adapter_model.safetensors")
    (folder / "trainable_extras.safetensors").unlink()
    paths = sorted(p for p, _ in adapter_layers(model))
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "VERA", "r": R, "target_modules": paths})
    )
    meta = json.loads((folder / "vlmtune_adapter.json").read_text())
    for key in ("not_in_peft", "layout"):
        meta.pop(key)
    (folder / "vlmtune_adapter.json").write_text(json.dumps(meta))
    torch.manual_seed(0)
    fresh = load_adapter(Toy(), folder, towers=TOWERS)
    assert all(isinstance(m, DVoraLinear) for _, m in adapter_layers(fresh))
    assert_close(fresh(x), expected, rtol=1e-6)
    with pytest.raises(AdapterError, match="older vlmtune with DVoRA layers"):
        load_adapter(Toy(), folder)


def test_dvora_tuned_weights_for_analysis_from_a_subset_of_bases(tmp_path) -> None:
    """``vlmtune analyze`` rebuilds W_t of DVoRA layers (now in trainable_extras) from the q/v bases alone:
    the saved shared pair, not one regenerated for the subset, gives the merged weights."""
    from vlmtune.analysis import finetuned_weights

    torch.manual_seed(0)
    model, spec = Toy(), vera_spec("dvora")
    trained_dvora(model, TOWERS, spec)
    folder = save_adapter(model, tmp_path / "a", specs={"language": spec})
    layers = dict(adapter_layers(model))
    w0 = {p: m.base_layer.weight.detach() for p, m in layers.items() if p.endswith(("q_proj", "v_proj"))}
    got = finetuned_weights(folder, w0)
    assert sorted(got) == sorted(w0)
    for path, wt in got.items():
        assert_close(wt, layers[path].merged_linear().weight.detach().float(), rtol=1e-6)
