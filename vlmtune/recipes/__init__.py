"""Workflows that orchestrate the components: the fine-tune workflow, its preflight, the run-folder loader.

Layer: under ``presets`` (which call these to build their models), above ``train / eval / analysis``."""

from vlmtune.recipes.finetune import finetune, fit, seeded_pipeline

__all__ = ["finetune", "fit", "seeded_pipeline"]
