"""``vlmtune info FOLDER`` suggests a recipe that works on the folder (round-5 user report: a BLIP-2 folder was
sent to llava-dora, which stopped with "no tower 'projector'"; VL-BART and merged ViT folders were called
unsupported VLM families)."""

from __future__ import annotations

import shlex

import pytest

from vlmtune import cli


def suggestion(folder, capsys) -> list[str]:
    """The ``vlmtune info ...`` command that ``vlmtune info FOLDER`` ends with, as argv."""
    assert cli.main(["info", str(folder)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    command = last[last.index("vlmtune info ") :].rstrip(")")
    return shlex.split(command)[1:]


@pytest.mark.parametrize("family, recipe", [("blip_2", "blip2-dora"), ("instructblip", "instructblip-dora")])
def test_a_qformer_folder_is_sent_to_its_own_recipes_and_llava_recipes_say_so(
    family, recipe, family_folder, capsys
) -> None:
    folder = family_folder(family)
    argv = suggestion(folder, capsys)
    assert argv == ["info", recipe, f"model.name_or_path={folder}"]
    assert cli.main(argv) == 0  # the suggested command works: the adapters it would attach
    assert "qformer" in capsys.readouterr().out
    for command in (["info", "llava-dora"], ["plan", "llava-lora"]):
        assert cli.main([*command, f"model.name_or_path={folder}"]) == 2
        err = capsys.readouterr().err.strip()
        assert "(Q-Former) model" in err and len(err.splitlines()) == 1, err
    assert "use the blip2-dora, blip2-lora, blip2-pin recipes" in err or "instructblip recipes" in err


def test_a_vlbart_folder_is_described_as_vlbart_with_its_recipes(tmp_path, capsys) -> None:
    from vlmtune.presets.vlbart_shapes_tiny import build_random_vlbart

    folder = build_random_vlbart(tmp_path / "vlbart")
    assert cli.main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "a VL-BART model" in out and "not a supported VLM family" not in out
    assert suggestion(folder, capsys) == ["info", "vlbart-dora", f"model.name_or_path={folder}"]


def test_a_merged_vit_folder_is_described_as_a_vit_classifier(tmp_path, capsys) -> None:
    from vlmtune.models.vit import ViTPipeline, load_backbone

    vit, preset = load_backbone("digits-tiny-scratch")
    folder = ViTPipeline(vit, preset, ["apple", "banana"], "digits-tiny-scratch").save_merged(
        tmp_path / "vit"
    )
    assert cli.main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "a ViT classifier" in out and "2 classes: apple, banana" in out and "model_type '?'" not in out
    argv = suggestion(folder, capsys)
    assert argv == ["info", "vit-lora", f"model.name_or_path={folder}"]
    assert cli.main(argv) == 0
