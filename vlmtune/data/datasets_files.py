"""Hugging Face ``datasets`` files as record rows: a Parquet file or a ``save_to_disk`` folder.

Rows are read from the Arrow storage without decoding (``with_format("arrow")`` / ``pyarrow.parquet``),
so an ``Image`` column arrives as ``{"bytes", "path"}``. Every image value becomes a path string, the
form every record holds:

- a path string (or ``{"path": p}`` without bytes): kept (relative paths resolve like a JSON file's);
- bytes (or ``{"bytes": b, ...}``): written once to ``$VLMTUNE_CACHE/dataset-images/<sha256>.<ext>``
  (content-addressed: the same bytes give the same file, nothing is overwritten);
- a PIL image (a row built in Python): saved as PNG the same way;
- a ``data:image/...;base64,`` URL (OpenAI-style ``image_url``, in any format's rows): decoded and stored the
  same way (:func:`url_image`); an http(s) URL is refused with one line (nothing is downloaded).

The rows then go through :func:`vlmtune.data.conversation_formats.to_internal` like JSON rows, with the
``data.columns`` mapping applied first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmtune.core.data_spec import file_format
from vlmtune.core.io import cache_dir
from vlmtune.data.errors import DataError

IMAGE_KEYS = ("image", "images")
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"RIFF", ".webp"))


def image_store() -> Path:
    """``$VLMTUNE_CACHE/dataset-images``: images that a dataset holds as bytes, one file per content."""
    return cache_dir("dataset-images")


def _suffix(data: bytes, name: str | None) -> str:
    if name and Path(name).suffix:
        return Path(name).suffix.lower()
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".img")


def store_bytes(data: bytes, name: str | None = None) -> str:
    """The path of ``data`` in :func:`image_store` (written on first use, atomically)."""
    path = image_store() / f"{hashlib.sha256(data).hexdigest()[:32]}{_suffix(data, name)}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def url_image(source: str, where: str) -> str:
    """``source`` as a path: a ``data:image/<type>;base64,<data>`` URL decoded into :func:`image_store`;
    an http(s) URL refused with one line; any other string is a path already. Errors never print the
    data, only its header and size."""
    if source[:8].lower().startswith(("http://", "https://")):
        raise DataError(
            f"{where}: image {source[:80]!r} is an http(s) URL; vlmtune reads local files and downloads nothing: "
            "save the image and give its path"
        )
    if not source[:5].lower() == "data:":
        return source
    header, _, payload = source.partition(",")
    shown = f"{header[:40]}, {len(payload):,} characters"
    if not (header[5:].lower().startswith("image/") and header.lower().endswith(";base64") and payload):
        raise DataError(
            f"{where}: image is a data: URL ({shown}) that is not base64 image data; give "
            "data:image/<type>;base64,<data> or a path"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: image data: URL ({shown}) is not valid base64") from None
    return store_bytes(data)


def image_path(value: Any, where: str) -> str:
    """One image value of a row (path, data: URL, ``{"bytes", "path"}``, bytes, PIL image) -> a path string."""
    if isinstance(value, str):
        return url_image(value, where)
    if isinstance(value, bytes | bytearray):
        return store_bytes(bytes(value))
    if isinstance(value, dict):
        if value.get("bytes"):
            return store_bytes(bytes(value["bytes"]), value.get("path"))
        if value.get("path"):
            return str(value["path"])
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return store_bytes(buffer.getvalue(), "image.png")
    raise DataError(f"{where}: image value {value!r:.60} is not a path, bytes or an image")


def with_image_paths(row: dict, where: str) -> dict:
    """``row`` with its ``image`` / ``images`` values as path strings (None / absent = no image)."""
    for key in IMAGE_KEYS:
        value = row.get(key)
        if value is None:
            row.pop(key, None)
        elif key == "images" and isinstance(value, list):
            row[key] = [image_path(v, f"{where}: images[{i}]") for i, v in enumerate(value)]
        else:
            row[key] = image_path(value, f"{where}: {key}")
    return row


def _saved_dataset(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 -- any loader failure becomes one line
        raise DataError(
            f"{path}: not a dataset folder datasets can load ({str(e).splitlines()[0]})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split in ds:
            return ds[split]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise DataError(f"{path}: no split '{split}' (splits: {', '.join(ds)}); pick one with {path}@SPLIT")
    return ds


def _tables(path: Path, split: str, batch_rows: int = 1000) -> Iterator[list[dict]]:
    """Row batches (plain dicts, images undecoded) of a Parquet file or saved dataset folder."""
    if file_format(str(path)) == "parquet":
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield batch.to_pylist()
        return
    ds = _saved_dataset(path, split).with_format("arrow")
    for start in range(0, len(ds), batch_rows):
        yield ds[start : start + batch_rows].to_pylist()


def column_names(path: Path, split: str) -> list[str]:
    """The columns of a Parquet file or saved dataset (to check ``data.columns`` before reading rows)."""
    if file_format(str(path)) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(_saved_dataset(path, split).column_names)


def dataset_rows(path: Path, split: str = "train", columns: dict[str, str] | None = None) -> Iterator[dict]:
    """The rows of a Parquet file / saved dataset, in order; every column ``data.columns`` names must exist."""
    have = column_names(path, split)
    missing = {k: v for k, v in (columns or {}).items() if v not in have}
    if missing:
        key, source = next(iter(missing.items()))
        raise DataError(
            f"{path}: data.columns.{key}={source}: no column '{source}' (columns: {', '.join(have)})"
        )
    for rows in _tables(path, split):
        yield from rows
