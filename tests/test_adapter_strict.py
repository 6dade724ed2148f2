"""Strict adapter loading: a missing, unexpected or mis-shaped tensor is one line naming the folder and
the keys (``load_adapter`` and ``vlmtune merge``); ``save_adapter`` without specs writes a loadable config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from toy_models import perturb_trainable

from vlmtune.adapters import AdapterError, AdapterSpec, attach, load_adapter, save_adapter

TOWERS = {"language": ["lm"]}
SPEC = AdapterSpec(method="dora", r=4, alpha=8, targets=["q", "v"])
KEY = "base_model.model.lm.q_proj.lora_B.weight"


def lm(hidden: int = 16) -> nn.Module:
    model = nn.Module()
    model.lm = nn.Module()
    model.lm.q_proj = nn.Linear(hidden, hidden)
    model.lm.v_proj = nn.Linear(hidden, hidden)
    return model


def corrupt(folder: Path, case: str) -> str:
    """Edit the folder's PEFT file for ``case``; returns a key the error must name."""
    path = folder / "adapter_model.safetensors"
    tensors = load_file(str(path))
    if case == "missing":
        del tensors[KEY]
    elif case == "extra":
        tensors[KEY.replace("q_proj", "k_proj")] = tensors[KEY].clone()
    else:
        tensors[KEY] = torch.zeros(tensors[KEY].shape[0], tensors[KEY].shape[1] + 1)
    save_file(tensors, str(path))
    return KEY.replace("q_proj", "k_proj") if case == "extra" else KEY


CASES = {"missing": "missing", "extra": "unexpected", "shape": "wrong shape"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("towers", [TOWERS, None], ids=["towers", "plain"])
def test_load_refuses_bad_tensor(tmp_path, case: str, towers) -> None:
    torch.manual_seed(0)
    model = lm()
    attach(model, TOWERS, {"language": SPEC})
    folder = save_adapter(model, tmp_path / "a", specs={"language": SPEC}, base_name_or_path="lm")
    key = corrupt(folder, case)
    with pytest.raises(AdapterError) as err:
        load_adapter(lm(), folder, towers=towers)
    msg = str(err.value)
    if case == "extra" and towers is None:  # a plain PEFT folder: layers come from the keys themselves
        assert "\n" not in msg and str(folder) in msg and "'lm.k_proj' does not exist" in msg, msg
    else:
        assert "\n" not in msg and str(folder) in msg and key in msg and CASES[case] in msg, msg


def test_magnitude_missing_in_a_dora_peft_folder_is_refused(tmp_path) -> None:
    """``use_dora`` with a layer that saved no magnitude used to load as DoRA with ||W0||, silently."""
    model = lm()
    attach(model, TOWERS, {"language": SPEC})
    folder = save_adapter(model, tmp_path / "a")
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    del tensors["base_model.model.lm.v_proj.lora_magnitude_vector"]
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "vlmtune_adapter.json").unlink()
    with pytest.raises(
        AdapterError, match=r"1 adapter tensor\(s\) missing.*lm\.v_proj\.lora_magnitude_vector"
    ):
        load_adapter(lm(), folder)


@pytest.mark.parametrize(
    "specs",
    [
        {"language": AdapterSpec(method="dora", r=4, alpha=8, targets=["q"])},
        {"language": AdapterSpec(method="lora", r=2, alpha=4, dropout=0.1, rslora=True, targets=["q", "v"])},
        {"language": AdapterSpec(method="dora", r=4, alpha=8, targets=["q"], magnitude_only=["v"])},
        {"language": AdapterSpec(method="vera", r=8, targets=["q", "v"], options={"projection_prng_key": 3})},
    ],
    ids=["dora", "lora-rslora", "dora-magnitude-only", "vera"],
)
def test_save_without_specs_writes_a_config_that_loads_back(tmp_path, specs) -> None:
    torch.manual_seed(0)
    model = lm()
    attach(model, TOWERS, specs)
    perturb_trainable(model, 0.1)
    model.eval()
    folder = save_adapter(model, tmp_path / "a")
    meta = json.loads((folder / "vlmtune_adapter.json").read_text())
    assert meta["specs"] and meta["towers"], meta
    x = torch.randn(3, 16)
    for towers in (TOWERS, None):
        torch.manual_seed(1)
        other = lm()
        other.load_state_dict(
            {k: v for k, v in model.state_dict().items() if "base_layer" not in k}, strict=False
        )
        for name, mod in model.named_modules():  # same base weights
            if hasattr(mod, "base_layer"):
                other.get_submodule(name).load_state_dict(mod.base_layer.state_dict())
        load_adapter(other, folder, towers=towers).eval()
        assert {type(m).__name__ for m in other.modules()} == {type(m).__name__ for m in model.modules()}
        torch.testing.assert_close(other.lm.q_proj(x), model.lm.q_proj(x))
        torch.testing.assert_close(other.lm.v_proj(x), model.lm.v_proj(x))


@pytest.fixture(scope="module")
def llava_adapter(model_dir, tmp_path_factory) -> Path:
    from vlmtune.core.config import load_config
    from vlmtune.presets import build_pipeline

    cfg = load_config("llava-dora", [f"model.name_or_path={model_dir}"])
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    return save_adapter(
        pipe.model, tmp_path_factory.mktemp("strict") / "adapter", cfg.adapters.specs(), str(model_dir)
    )


@pytest.mark.parametrize("case", list(CASES))
def test_merge_cli_refuses_bad_tensor_in_one_line(llava_adapter, tmp_path, capsys, case: str) -> None:
    import shutil

    from vlmtune.cli import main

    folder = tmp_path / "adapter"
    shutil.copytree(llava_adapter, folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = sorted(k for k in tensors if k.endswith("lora_B.weight"))[0]
    if case == "missing":
        del tensors[key]
    elif case == "extra":
        tensors[key.replace("layers.0.", "layers.99.")] = tensors[key].clone()
        key = key.replace("layers.0.", "layers.99.")
    else:
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    capsys.readouterr()
    assert main(["merge", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder) in err and key in err and CASES[case] in err, err
    assert not (tmp_path / "out").exists()
