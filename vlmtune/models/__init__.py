"""Pipelines: one model family each (model + towers + collate + loss + generate)."""

from vlmtune.models.base import PIPELINES, Pipeline, build_pipeline, move_batch, register_pipeline

__all__ = ["PIPELINES", "Pipeline", "build_pipeline", "move_batch", "register_pipeline"]
