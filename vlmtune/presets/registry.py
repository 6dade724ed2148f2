"""Preset names -> model folders: the embedded toy models, per pipeline.

A preset is looked up in ``vlmtune/assets/<asset>`` (shipped), then in ``$VLMTUNE_CACHE/<cache>``,
where its deterministic builder writes it on first use (atomically). Models below this layer take
folders only; :func:`build_pipeline` is the one place that turns ``model.name_or_path`` into one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlmtune.core.io import atomic_dir, cache_dir

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig
    from vlmtune.models.base import Pipeline

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class Preset:
    """``builder`` (``module:function``) writes the model into the folder it is given."""

    builder: str
    cache: tuple[str, ...]  # folder under $VLMTUNE_CACHE (its name carries the builder's version)
    complete: str  # the file whose presence marks a finished folder
    asset: str = ""  # shipped folder under vlmtune/assets ("" = none)
    minutes: int = 0  # build time on 2 CPU cores, for the first-use message

    def build(self, folder: Path) -> None:
        module, function = self.builder.split(":")
        getattr(importlib.import_module(module), function)(folder)


_VLBART = Preset(
    "vlmtune.presets.vlbart_shapes_tiny:build_tiny_vlbart",
    ("presets", "vlbart-shapes-tiny-v3"),
    "vlbart.json",
    "vlbart-shapes-tiny",
    17,
)
PRESETS: dict[str, dict[str, Preset]] = {
    "llava": {
        "shapes-tiny": Preset(
            "vlmtune.presets.shapes_tiny:build_shapes_tiny",
            ("models", "shapes-tiny-v4"),
            "config.json",
            "shapes-tiny",
            45,
        ),
        "shapes-tiny-pin": Preset(
            "vlmtune.presets.shapes_tiny_pin:build_shapes_tiny_pin",
            ("models", "shapes-tiny-pin-v4"),
            "config.json",
            "shapes-tiny-pin",
            11,
        ),
    },
    "blip2": {
        "shapes-tiny-blip2-pin": Preset(
            "vlmtune.presets.shapes_tiny_blip2_pin:build_shapes_tiny_blip2_pin",
            ("models", "shapes-tiny-blip2-pin-v2"),
            "config.json",
            "",
            3,
        ),
    },
    "vlbart": {"shapes-tiny": _VLBART, "vlbart-shapes-tiny": _VLBART},
    "vit": {
        "digits-tiny": Preset(
            "vlmtune.presets.digits_vit:build_digits_tiny", ("vit", "digits-tiny-v1"), "model.safetensors"
        )
    },
}


def model_folder(pipeline: str, name_or_path: str) -> str:
    """The folder of preset ``name_or_path`` of ``pipeline`` (shipped, cached, or built now);
    anything that is not a preset name comes back unchanged."""
    preset = PRESETS.get(pipeline, {}).get(name_or_path)
    if preset is None:
        return name_or_path
    shipped = ASSETS / preset.asset
    if preset.asset and (shipped / preset.complete).is_file():
        return str(shipped)
    final = cache_dir(*preset.cache)
    if not (final / preset.complete).is_file():
        about = f"; about {preset.minutes} minutes on 2 CPU cores" if preset.minutes else ""
        print(f"building the {pipeline} preset {name_or_path} into {final} (first use{about})...", flush=True)
    return str(atomic_dir(final, preset.build, preset.complete))


def build_pipeline(cfg: RunConfig) -> Pipeline:
    """``models.build_pipeline`` on the folder that ``cfg.model.name_or_path`` names."""
    from vlmtune.models.base import build_pipeline as build_from_folder

    return build_from_folder(cfg, model_folder(cfg.model.pipeline, cfg.model.name_or_path))
