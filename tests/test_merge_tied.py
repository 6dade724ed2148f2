"""``vlmtune merge`` of an adapted ``lm_head`` tied to the input embeddings (new-user report 5, item 2).

PaliGemma and Gemma 3 tie ``lm_head.weight`` to ``embed_tokens.weight``. Folding ``W0 + dW`` into the shared
tensor would change the input embeddings too; the merge unties the head first (its own copy,
``tie_word_embeddings=False`` in the config and the text config), so the merged folder reloads in plain
transformers with the adapter model's logits and the base's embeddings. A merge whose check fails leaves
only ``merge_check.json`` (``ok: false``) in the output folder, no model files.
"""

from __future__ import annotations

import json

import pytest
import torch
from toy_models import perturb_trainable
from transformers import AutoModelForImageTextToText

from vlmtune.adapters import attach, save_adapter
from vlmtune.cli import main
from vlmtune.core.config import load_config
from vlmtune.presets import build_pipeline

TIED = ["paligemma", "gemma3"]


def adapted_head(folder, tmp_path):
    """An adapter folder with LoRA on q_proj and the tied lm_head (random non-zero updates), and the
    pipeline it was saved from."""
    cfg = load_config(
        "llava-dora",
        [f"model.name_or_path={folder}", "model.dtype=float32", "adapters.language.method=lora",
         "adapters.language.r=4", "adapters.language.alpha=8", "adapters.language.targets=[q_proj,lm_head]",
         "adapters.projector.method=frozen"],
    )  # fmt: skip
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    perturb_trainable(pipe.model, 0.3)
    adapter = save_adapter(pipe.model, tmp_path / "adapter", cfg.adapters.specs(), str(folder))
    return pipe.model.eval(), adapter


def probe(folder):
    ids = torch.tensor([[2, 10, 11, 12, 13]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("name", TIED)
def test_merging_an_adapted_tied_lm_head_unties_it(name, family_folder, tmp_path, capsys):
    folder = family_folder(name)
    base = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    model, adapter = adapted_head(folder, tmp_path)
    with torch.no_grad():
        want = model(**probe(folder)).logits
    out = tmp_path / "merged"
    assert main(["merge", str(adapter), str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / "merge_check.json").read_text())["ok"]
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert config.get("text_config", {}).get("tie_word_embeddings", False) is False

    merged = AutoModelForImageTextToText.from_pretrained(out).eval()
    with torch.no_grad():
        got = merged(**probe(folder)).logits
    diff = ((got - want).abs().max() / want.abs().max()).item()
    assert diff < 1e-5, f"{name}: the reloaded merged model differs by {diff:.2e}"
    embed, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert torch.equal(embed, base.get_input_embeddings().weight)  # the embeddings are the base's
    assert (head - embed).abs().max() > 1e-2  # the head holds W0 + dW


def test_a_failed_merge_check_leaves_no_model_files(family_folder, tmp_path, capsys, monkeypatch):
    import vlmtune.merge as merge

    folder = family_folder("paligemma")
    _, adapter = adapted_head(folder, tmp_path)
    monkeypatch.setitem(merge.MERGE_BOUNDS, torch.float32, 0.0)  # any difference fails the check
    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", str(adapter), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no model was written" in err and str(out) in err, err
    assert sorted(p.name for p in out.iterdir()) == ["merge_check.json"]
    assert json.loads((out / "merge_check.json").read_text())["ok"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.merging.")]

    # --overwrite onto an earlier good merge: a failed check leaves that folder exactly as it was
    monkeypatch.setitem(merge.MERGE_BOUNDS, torch.float32, 1e-3)
    good = tmp_path / "good"
    assert main(["merge", str(adapter), str(good)]) == 0
    before = {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()}
    monkeypatch.setitem(merge.MERGE_BOUNDS, torch.float32, 0.0)
    capsys.readouterr()
    assert main(["merge", str(adapter), str(good), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{good} was left as it was" in err, err
    assert {p.name: p.read_bytes() for p in good.iterdir() if p.is_file()} == before
    assert json.loads((good / "merge_check.json").read_text())["ok"] is True
