"""`vlmtune merge` proves itself: probe logits of the adapter model vs the reloaded merged folder go
into merge_check.json; a broken merge fails with one line; a plain peft folder merges onto its
recorded base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy_models import perturb_trainable

from vlmtune.adapters import attach, save_adapter
from vlmtune.adapters.attach import adapter_layers
from vlmtune.adapters.targets import replace_module
from vlmtune.cli import main


@pytest.fixture(scope="module")
def trained_adapter(model_dir, tmp_path_factory) -> Path:
    """The llava-dora adapter (DoRA language r=4 + full projector) with random, non-zero updates."""
    from vlmtune.core.config import load_config
    from vlmtune.presets import build_pipeline

    cfg = load_config("llava-dora", [f"model.name_or_path={model_dir}", "adapters.language.r=4"])
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    perturb_trainable(pipe.model, 0.05)
    folder = tmp_path_factory.mktemp("merge_check") / "adapter"
    return save_adapter(pipe.model, folder, cfg.adapters.specs(), str(model_dir))


def test_merge_writes_its_check(trained_adapter, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(trained_adapter), str(out)]) == 0
    check = json.loads((out / "merge_check.json").read_text())
    assert check["dtype"] == "float32" and check["bound"] == 1e-3 and check["ok"]
    assert 0 <= check["max_rel_logit_diff"] < 1e-4, check
    assert f"max relative logit difference {check['max_rel_logit_diff']:.3g}" in capsys.readouterr().out


@pytest.mark.parametrize("breakage", ["unfolded-layer", "perturbed-weight"])
def test_broken_merge_fails_in_one_line(trained_adapter, tmp_path, capsys, monkeypatch, breakage) -> None:
    import vlmtune.models.llava as llava

    real = llava.merge_adapters

    def broken(model):
        path, layer = next(iter(adapter_layers(model)))
        if breakage == "unfolded-layer":  # drop one adapter without folding it in
            replace_module(model, path, layer.base_layer)
            return real(model)
        real(model)
        with torch.no_grad():
            w = model.get_submodule(path).weight
            w.add_(torch.randn_like(w) * w.abs().mean())
        return model

    monkeypatch.setattr(llava, "merge_adapters", broken)
    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(trained_adapter), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "the merge is wrong" in err and str(out) in err, err
    check = json.loads((out / "merge_check.json").read_text())
    assert not check["ok"] and check["max_rel_logit_diff"] > 1e-3, check


def test_peft_folder_merges_onto_its_recorded_base(model_dir, tmp_path, capsys) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    base = LlavaForConditionalGeneration.from_pretrained(model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    folder = tmp_path / "peft"
    peft_model.save_pretrained(folder)
    assert not (folder / "vlmtune_adapter.json").exists()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        model_dir
    )
    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(folder), str(out)]) == 0, capsys.readouterr().err
    assert f"into {model_dir} ->" in capsys.readouterr().out
    merged = LlavaForConditionalGeneration.from_pretrained(out)
    assert merged.config.text_config.hidden_size == base.config.text_config.hidden_size
    assert json.loads((out / "merge_check.json").read_text())["ok"]
    want = peft_model.merge_and_unload()
    for name, p in merged.state_dict().items():
        torch.testing.assert_close(p, want.state_dict()[name], msg=name)


def test_merge_into_its_own_base_folder_is_refused(trained_adapter, model_dir, tmp_path, capsys) -> None:
    """Round-6 report: `vlmtune merge RUN BASE --overwrite` replaced the base's weights with the merged ones."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["merge", str(trained_adapter), str(base), "--base", str(base), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is the base model folder this merge reads" in err, err
    assert {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()} == before


def test_overwrite_drops_an_earlier_merges_weight_files_and_keeps_other_files(trained_adapter, tmp_path) -> None:
    """--overwrite onto an earlier, differently sharded merge: its shards and index would be read beside the
    new weights; they go, the user's own files stay."""
    out = tmp_path / "merged"
    out.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "NOTES.md"):  # fmt: skip
        (out / name).write_text("earlier")
    assert main(["merge", str(trained_adapter), str(out), "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "NOTES.md" in names, names
    assert not [n for n in names if n.startswith("model-0000") or n.endswith(".index.json")], names
