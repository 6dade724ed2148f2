"""Data: record schema and readers, safe image loading, instruction templates, synthetic shapes.

Names are imported lazily (PEP 562), so ``import vlmtune.data.templates`` does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataError": "errors",
    "ErrorLog": "errors",
    "load_image": "images",
    "REQUIRED_FIELDS": "records",
    "RecordDataset": "records",
    "load_records": "records",
    "read_jsonl": "records",
    "read_llava_json": "records",
    "read_classification": "records",
    "read_records": "records",
    "validate_record": "records",
    "generate_shapes": "shapes",
    "shapes_dataset": "shapes",
    "spec_paths": "spec",
    "record_to_turns": "templates",
    "render_instruction": "templates",
    "render_vicuna": "templates",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"vlmtune.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vlmtune.data' has no attribute '{name}'")
