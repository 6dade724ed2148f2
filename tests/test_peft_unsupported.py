"""peft features vlmtune has no layer for are named in one line (new-user report 5, item 5).

LoRA on embeddings (``lora_embedding_A/B``), ``lora_bias=True`` (``lora_B.bias``) and ``bias="lora_only"`` /
``"all"`` (trained base biases) were reported as "unexpected tensors ... trained with other targets?".
"""

from __future__ import annotations

import pytest
from toy_models import tiny_llava

from vlmtune.adapters import AdapterError, load_adapter
from vlmtune.cli import main

peft = pytest.importorskip("peft")

CASES = {
    "embed": (
        dict(target_modules=["q_proj", "embed_tokens"]),
        "LoRA on embedding layers (lora_embedding_A/B on model.language_model.embed_tokens)",
    ),  # fmt: skip
    "lora_bias": (dict(target_modules=["q_proj"], lora_bias=True), "lora_bias=True"),
    "bias_lora_only": (dict(target_modules=["q_proj"], bias="lora_only"), 'bias="lora_only"'),
    "bias_all": (dict(target_modules=["q_proj"], bias="all"), 'bias="all"'),
}


def peft_folder(tmp_path, kwargs, base=None):
    from transformers import AutoModelForImageTextToText

    model = tiny_llava() if base is None else AutoModelForImageTextToText.from_pretrained(base)
    folder = tmp_path / "peft"
    peft.get_peft_model(
        model, peft.LoraConfig(r=2, lora_alpha=4, init_lora_weights=False, **kwargs)
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_unsupported_peft_feature_is_named_in_one_line(case, tmp_path):
    kwargs, named = CASES[case]
    folder = peft_folder(tmp_path, kwargs)
    with pytest.raises(AdapterError) as e:
        load_adapter(tiny_llava(), folder)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: written by peft with {named}"), msg
    assert "vlmtune does not support" in msg and "unexpected" not in msg, msg


def test_plain_lora_folder_is_not_refused(tmp_path):
    folder = peft_folder(tmp_path, dict(target_modules=["q_proj"]))
    load_adapter(tiny_llava(), folder)


def test_merge_refuses_it_before_loading_the_base(family_folder, tmp_path, capsys):
    folder = peft_folder(tmp_path, CASES["embed"][0], base=family_folder("llava"))
    capsys.readouterr()
    assert main(["merge", str(folder), str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "LoRA on embedding layers" in err, err
    assert not (tmp_path / "merged").exists()
