"""Toy-model presets: builders that pretrain the embedded models, and preset name -> model folder."""

from vlmtune.presets.registry import PRESETS, build_pipeline, model_folder

__all__ = ["PRESETS", "build_pipeline", "model_folder"]
