"""``vlmtune eval --model`` a folder written by plain peft (new-user report 5, item 3).

``adapter_config.json`` + ``adapter_model.safetensors`` and no ``vlmtune_adapter.json``: eval loads it on
``base_model_name_or_path`` like ``vlmtune merge`` and ``info`` do (it was refused as "not a run folder").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune import cli
from vlmtune.eval.command import load_model

peft = pytest.importorskip("peft")


def test_eval_loads_a_plain_peft_folder_on_its_recorded_base(family_folder, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    base = family_folder("llava")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True,
                             init_lora_weights=False)  # fmt: skip
    ref = peft.get_peft_model(AutoModelForImageTextToText.from_pretrained(base), config).eval()
    folder = tmp_path / "peft"
    ref.save_pretrained(folder)
    assert not (folder / "vlmtune_adapter.json").exists()

    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype("uint8")).save(tmp_path / "0.png")
    records = [{"id": f"q{i}", "task": "vqa", "image": str(tmp_path / "0.png"), "question": "What color is it?",
                "answers": ["red"]} for i in range(3)]  # fmt: skip
    data = tmp_path / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    pipeline, cfg, run_dir = load_model(str(folder))
    assert cfg is None and run_dir is None and pipeline.name_or_path == str(base)
    batch = pipeline.collate(records[:1], train=False)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        ours, theirs = pipeline.model.eval()(**inputs).logits, ref(**inputs).logits
        plain = AutoModelForImageTextToText.from_pretrained(base).eval()(**inputs).logits
    assert (plain - theirs).abs().max() / theirs.abs().max() > 1e-3, "the adapter changes nothing"
    diff = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert diff < 1e-5, f"eval's model differs from peft's by {diff:.2e}"

    out = tmp_path / "eval"
    argv = ["eval", "shapes-vqa", "--model", str(folder), "--data", str(data), "--max-new-tokens", "2",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["count"] == 3
