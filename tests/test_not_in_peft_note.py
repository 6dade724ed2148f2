"""Folders peft loads only in part say so (new-user report 5, item 7).

VeRA on one tower and LoRA on another (the PEFT file is LoRA: the VeRA layers go to trainable_extras), DVoRA
beside DoRA: ``PeftModel.from_pretrained`` loads such a folder without those layers and without a warning.
``vlmtune info`` and ``vlmtune train`` (after saving) name them in one line; a Gemma 3 projector (a bare
weight) asked for a layer method says that only ``full`` trains it.
"""

from __future__ import annotations

import json

import pytest
import torch
from toy_models import LLAVA_TOWERS, inputs, perturb_trainable, tiny_llava

from vlmtune.adapters import AdapterError, AdapterSpec, adapter_layers, attach, save_adapter
from vlmtune.adapters.peft_io import not_in_peft_line, not_in_peft_summary
from vlmtune.info import describe_adapter

peft = pytest.importorskip("peft")

MIXED = {
    "vera+lora": ({"language": AdapterSpec(method="vera", r=8, alpha=None, targets=["q_proj", "v_proj"]),
                   "vision": AdapterSpec(method="lora", r=2, alpha=4, targets=["q_proj", "v_proj"])}, "VeRA"),
    "dvora+dora": ({"language": AdapterSpec(method="dvora", r=8, alpha=None, targets=["q_proj", "v_proj"]),
                    "vision": AdapterSpec(method="dora", r=2, alpha=4, targets=["q_proj", "v_proj"])}, "DVoRA"),
}  # fmt: skip


def saved(tmp_path, specs):
    model = tiny_llava()
    attach(model, LLAVA_TOWERS, specs)
    perturb_trainable(model, 0.3)
    return model.eval(), save_adapter(model, tmp_path / "a", specs)


@pytest.mark.parametrize("case", sorted(MIXED))
def test_info_names_the_layers_peft_will_not_load(case, tmp_path):
    specs, label = MIXED[case]
    model, folder = saved(tmp_path, specs)
    language = sorted(p for p, _ in adapter_layers(model) if p.startswith("model.language_model"))
    assert len(language) == 2
    summary = not_in_peft_summary(folder)
    assert summary == f"2 {label} layer(s) ({language[0]}, {language[1]})", summary
    lines = describe_adapter(folder).splitlines()
    assert lines[-1] == f"  {not_in_peft_line(folder)}" and lines[-1].startswith(
        f"  not in peft: {summary} are in"
    )

    # true: peft's model is the one without those layers (the vision adapters, and nothing on the language tower)
    loaded = peft.PeftModel.from_pretrained(tiny_llava(), folder).eval()
    without = tiny_llava()
    attach(without, LLAVA_TOWERS, {"vision": specs["vision"]})
    layers = dict(adapter_layers(model))
    with torch.no_grad():
        for path, layer in adapter_layers(without):
            for name, t in layer._adapter_tensors().items():
                t.copy_(layers[path]._adapter_tensors()[name])
        got, want = loaded(**inputs()).logits, without.eval()(**inputs()).logits
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        assert (got - model(**inputs()).logits).abs().max() > 1e-3


def test_no_note_when_peft_loads_everything(tmp_path):
    specs = {"language": AdapterSpec(method="dora", r=2, alpha=4, targets=["q_proj"]),
             "vision": AdapterSpec(method="lora", r=2, alpha=4, targets=["q_proj"])}  # fmt: skip
    _, folder = saved(tmp_path, specs)
    assert not_in_peft_summary(folder) is None and "not in peft" not in describe_adapter(folder)


def test_train_says_it_after_saving(family_folder, tmp_path, capsys):
    from PIL import Image

    from vlmtune.cli import main

    Image.new("RGB", (40, 48), (200, 30, 30)).save(tmp_path / "0.png")
    record = {"task": "vqa", "image": str(tmp_path / "0.png"), "question": "What color?", "answers": ["red"]}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({**record, "id": f"q{i}"}) + "\n" for i in range(2)))
    run = tmp_path / "run"
    argv = ["train", "llava-dora", f"model.name_or_path={family_folder('llava')}", f"data.train={tmp_path / 'd.jsonl'}",
            "adapters.language.method=vera", "adapters.language.r=8", "adapters.language.alpha=null",
            "adapters.vision.method=lora", "adapters.vision.targets=[q_proj]", "adapters.vision.r=2",
            "train.max_steps=1", "train.eval_at_start=false", "train.eval_at_end=false", "--output-dir", str(run)]  # fmt: skip
    assert main(argv) == 0
    out = [line for line in capsys.readouterr().out.splitlines() if "not in peft" in line]
    assert out == [f"{run / 'adapter'}: {not_in_peft_line(run / 'adapter')}"], out
    assert " VeRA layer(s) (model.language_model." in out[0]


def test_gemma3_projector_asked_for_a_layer_method_says_only_full_trains_it(family_folder):
    from toy_models import llava_run

    with pytest.raises(AdapterError) as e:
        llava_run(f"model.name_or_path={family_folder('gemma3')}", "adapters.projector.method=lora",
                  "adapters.projector.targets=[default]")  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and "targets=[]" not in msg, msg
    assert msg.startswith(
        "adapters.projector.method=lora: the projector tower (model.multi_modal_projector)"
    ), msg
    assert "mm_input_projection_weight" in msg and "only adapters.projector.method=full trains it" in msg, msg


def test_empty_targets_on_a_tower_with_linear_layers_names_them():
    with pytest.raises(AdapterError) as e:
        attach(tiny_llava(), LLAVA_TOWERS, {"projector": AdapterSpec(method="lora", targets=[])})
    msg = str(e.value)
    assert msg.startswith("adapters.projector.targets is empty (targets=[default] names no layer"), msg
    assert "adapters.projector.targets=[linear_1]" in msg and "linear_2" in msg, msg
