"""Data specs (``data.train``, ``data.eval``, ``vlmtune eval --data``): the one parser of the string.

    shapes:<task>[,<task>...][@<split>]    generated shapes tasks (vlmtune.data.shapes)
    digits:source|target[@<split>]         scikit-learn's digits, two domains (vlmtune.data.classification)
    imagefolder:<root>[@<split>]           <root>/<class>/<image>, or <root>/<split>/<class>/<image>
    hf:<name or disk path>[@<split>]       a ``datasets`` image-classification set
    <a.jsonl>[,<b.json>...]                user files: vlmtune JSONL, or a LLaVA conversation list
    <c.parquet> | <saved_folder>           a ``datasets`` Parquet file or ``save_to_disk`` folder

``@<split>`` (the last ``@`` of a generated spec, or after a saved ``datasets`` folder) picks the split;
without it the caller's applies.
A spec is parsed here and resolved to files by :mod:`vlmtune.data.spec`; this module only reads text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from vlmtune.core.errors import ConfigError, DataError

GENERATED_KINDS = ("shapes", "digits", "imagefolder", "hf")
# the formats of user files, by suffix; anything else names a folder written by ``Dataset.save_to_disk``
FILE_FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataSpec:
    """``kind``: one of :data:`GENERATED_KINDS` or ``files``; ``items``: the shapes tasks, the one
    digits domain / image root / dataset name, or the file paths; ``split``: ``""`` = the caller's."""

    kind: str
    items: tuple[str, ...]
    split: str = ""

    @property
    def generated(self) -> bool:
        """Data that vlmtune writes into its cache (images next to their JSONL), not user files."""
        return self.kind != "files"

    def split_or(self, default: str) -> str:
        return self.split or default


def parse_spec(text: str) -> DataSpec:
    """``"shapes:vqa,caption@test"`` -> ``DataSpec("shapes", ("vqa", "caption"), "test")``."""
    text = text.strip()
    if not text:
        raise DataError("empty data spec; give a JSONL path or shapes:<task> (e.g. shapes:vqa)")
    kind, colon, body = text.partition(":")
    if colon and kind in GENERATED_KINDS:
        body, at, split = body.rpartition("@") if "@" in body else (body, "", "")
        if kind == "shapes":
            tasks = tuple(t.strip() for t in body.split(",") if t.strip())
            if not tasks:
                raise DataError(
                    f"data spec '{text}' names no task; use e.g. shapes:vqa or shapes:vqa,caption"
                )
            return DataSpec(kind, tasks, split.strip())
        return DataSpec(kind, (body.strip(),), split.strip())
    items, split = [], ""
    for part in (p.strip() for p in text.split(",")):
        body, at, name = part.rpartition("@")  # a saved DatasetDict folder may name its split: ds@validation
        if at and body and "/" not in name and file_format(body) == "datasets":
            part, split = body, name.strip()
        items.append(part)
    return DataSpec("files", tuple(items), split)


def file_format(item: str) -> str:
    """The format of one user-file item of a spec by its suffix: ``jsonl``, ``json`` (a list: LLaVA /
    ShareGPT), ``parquet``, or ``datasets`` (any other name: a ``save_to_disk`` folder if it is one; a
    file of another suffix is read as JSONL)."""
    return FILE_FORMATS.get(PurePosixPath(item).suffix.lower(), "datasets")


# keys data.columns may map (the record fields of docs/ARCHITECTURE.md plus the conversation formats')
COLUMN_KEYS = ("id", "task", "image", "images", "messages", "conversations", "system", "question", "answer",
               "answers", "caption", "captions", "choices", "label", "meta")  # fmt: skip


def check_columns(columns: dict) -> dict[str, str]:
    """``data.columns`` checked: known record keys mapped to non-empty column names (one line otherwise)."""
    if not isinstance(columns, dict):
        raise ConfigError(f"data.columns must be a mapping like data.columns.messages=conv, got {columns!r}")
    for key, source in columns.items():
        if key not in COLUMN_KEYS:
            raise ConfigError(
                f"data.columns.{key}: unknown record key '{key}'; map one of {', '.join(COLUMN_KEYS)}"
            )
        if not isinstance(source, str) or not source:
            raise ConfigError(f"data.columns.{key} must name a column (a string), got {source!r}")
    return dict(columns)
