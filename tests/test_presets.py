"""Preset names resolve to model folders in one place (``vlmtune.presets``); models take folders only."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmtune.presets import registry
from vlmtune.presets.registry import ASSETS, Preset, model_folder


def test_shipped_presets_resolve_to_their_asset_folders():
    assert model_folder("llava", "shapes-tiny") == str(ASSETS / "shapes-tiny")
    assert model_folder("llava", "shapes-tiny-pin") == str(ASSETS / "shapes-tiny-pin")
    # one name, two pipelines: the VL-BART shapes-tiny is another model
    assert model_folder("vlbart", "shapes-tiny") == str(ASSETS / "vlbart-shapes-tiny")
    assert model_folder("vlbart", "vlbart-shapes-tiny") == str(ASSETS / "vlbart-shapes-tiny")


def test_a_name_that_is_no_preset_comes_back_unchanged():
    assert model_folder("llava", "/some/folder") == "/some/folder"
    assert model_folder("vit", "shapes-tiny") == "shapes-tiny"  # a llava preset, not a vit one


def test_unshipped_preset_is_built_once_into_the_cache(tmp_path, monkeypatch, capsys):
    calls: list[Path] = []

    def fake_build(folder: Path) -> None:
        calls.append(folder)
        (folder / "model.safetensors").write_text("weights")

    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path))
    monkeypatch.setitem(
        registry.PRESETS, "toy", {"toy-tiny": Preset("x:y", ("toy", "toy-tiny-v1"), "model.safetensors")}
    )
    monkeypatch.setattr(Preset, "build", lambda self, folder: fake_build(folder))
    first = model_folder("toy", "toy-tiny")
    assert (
        first == str(tmp_path / "toy" / "toy-tiny-v1")
        and (Path(first) / "model.safetensors").read_text() == "weights"
    )
    assert "building the toy preset toy-tiny" in capsys.readouterr().out
    assert model_folder("toy", "toy-tiny") == first and len(calls) == 1  # cached: not rebuilt
    assert calls[0] != Path(first)  # built in a temporary folder, then renamed into place
    assert [p.name for p in (tmp_path / "toy").iterdir()] == ["toy-tiny-v1"]  # no leftovers


def test_models_layer_takes_folders_not_preset_names(monkeypatch):
    from vlmtune.core.config import RunConfig
    from vlmtune.models import base

    base._load_builtin()
    seen = {}
    monkeypatch.setitem(base.PIPELINES, "llava", lambda cfg, folder: seen.setdefault("folder", folder))
    cfg = RunConfig()
    assert cfg.model.name_or_path == "shapes-tiny"
    base.build_pipeline(cfg)
    assert seen.pop("folder") == "shapes-tiny"  # passed on as is: models resolve no presets
    from vlmtune.presets import build_pipeline

    build_pipeline(cfg)
    assert seen.pop("folder") == str(ASSETS / "shapes-tiny")


def test_every_preset_names_an_importable_builder():
    import importlib

    for pipeline, presets in registry.PRESETS.items():
        for name, preset in presets.items():
            module, function = preset.builder.split(":")
            assert callable(getattr(importlib.import_module(module), function)), (pipeline, name)
            assert (
                preset.cache[-1].startswith(name.removeprefix("vlbart-").split("-")[0])
                or pipeline == "vlbart"
            )


@pytest.mark.parametrize("pipeline", ["llava", "vlbart", "vit"])
def test_pipelines_register_with_a_folder_argument(pipeline):
    import inspect

    from vlmtune.models.base import PIPELINES, _load_builtin

    _load_builtin()
    params = list(inspect.signature(PIPELINES[pipeline]).parameters)
    assert params[:2] == ["cfg", "folder"]
