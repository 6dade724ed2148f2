"""The Pipeline interface shared by trainer and evaluator, and the pipeline registry.

A pipeline owns one model family's specifics (model loading, towers, collation, loss,
generation, merged export). The trainer only ever calls ``collate`` and ``loss``; the evaluator
calls ``collate(records, train=False)`` and ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig


@runtime_checkable
class Pipeline(Protocol):
    """What every model family provides.

    ``towers``: tower name -> module path prefixes (``adapters.attach`` targets resolve inside them).
    ``collate(records, train)``: list of JSONL records -> batch dict of tensors (train: with labels;
    eval: prompts only, left-padded, plus whatever ``generate`` needs).
    ``loss(batch)``: scalar mean loss over supervised tokens.
    ``generate(batch, max_new_tokens, num_beams)``: one decoded string per example.
    ``save_merged(out_dir)``: merge adapters and write a plain model folder.
    """

    name: str
    model: nn.Module
    towers: dict[str, list[str]]
    name_or_path: str

    def collate(self, records: list[dict], train: bool = True) -> dict[str, Any]: ...

    def loss(self, batch: dict[str, Any]) -> torch.Tensor: ...

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16, num_beams: int = 1) -> list[str]: ...

    def save_merged(self, out_dir: str | Path) -> Path: ...


PipelineFactory = Callable[["RunConfig", str], Pipeline]  # (config, model folder or hub/timm id)
PIPELINES: dict[str, PipelineFactory] = {}


def register_pipeline(name: str, factory: PipelineFactory) -> None:
    PIPELINES[name] = factory


def _load_builtin() -> None:
    import importlib

    for module in (
        "vlmtune.models.vlm",
        "vlmtune.models.qformer",
        "vlmtune.models.vlbart",
        "vlmtune.models.vit",
    ):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("vlmtune"):
                raise


def build_pipeline(cfg: RunConfig, folder: str | Path | None = None) -> Pipeline:
    """Instantiate ``cfg.model.pipeline`` (``llava`` | ``blip2`` | ``vlbart`` | ``vit``) from ``cfg``, loading the
    model from ``folder`` (default ``cfg.model.name_or_path``): a model folder or a hub/timm id, never a
    preset name (:func:`vlmtune.presets.build_pipeline` resolves those first)."""
    from vlmtune.core.config import ConfigError

    _load_builtin()
    name = cfg.model.pipeline
    if name not in PIPELINES:
        raise ConfigError(
            f"config key 'model.pipeline' is '{name}'; available pipelines: {', '.join(sorted(PIPELINES))}"
        )
    return PIPELINES[name](cfg, str(folder or cfg.model.name_or_path))


def move_batch(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Tensors to ``device``; everything else (ids, strings) passes through."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# a pipeline's sets of training records whose answer (VL-BART: also question) data.max_length cut
TRUNCATION_SETS = ("truncated_ids", "truncated_question_ids")


@contextmanager
def truncation_counts_kept(pipeline: Pipeline) -> Iterator[None]:
    """Encoding outside training (the preflight, a validation loss) leaves the pipeline's
    :data:`TRUNCATION_SETS` as they were: the trainer's report counts the training records only."""
    kept = {name: set(getattr(pipeline, name)) for name in TRUNCATION_SETS if hasattr(pipeline, name)}
    try:
        yield
    finally:
        for name, ids in kept.items():
            setattr(pipeline, name, ids)
