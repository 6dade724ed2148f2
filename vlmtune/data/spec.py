"""A data spec (parsed by :func:`vlmtune.core.data_spec.parse_spec`) -> the JSONL/JSON files holding its
records: generated shapes / classification data is written into the cache on first use, user files must
exist."""

from __future__ import annotations

from pathlib import Path

from vlmtune.core.data_spec import DataSpec, parse_spec
from vlmtune.core.errors import DataError
from vlmtune.data import classification, shapes


def spec_paths(
    spec: str | DataSpec,
    split: str = "train",
    n_images: int | None = None,
    cache_dir: str | Path | None = None,
    image_size: int = 64,
) -> list[Path]:
    """The files of ``spec`` (its ``@split`` wins over ``split``); ``n_images``, ``cache_dir`` and
    ``image_size`` size the generated shapes data."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    split = parsed.split_or(split)
    if parsed.kind == "shapes":
        return [shapes.shapes_dataset(t, split, n_images, cache_dir, image_size) for t in parsed.items]
    if parsed.kind == "digits":
        return [classification.digits_path(parsed.items[0], split)]
    if parsed.kind == "imagefolder":
        return [classification.imagefolder_path(parsed.items[0], split)]
    if parsed.kind == "hf":
        return [classification.hf_path(parsed.items[0], split)]
    paths = []
    for part in parsed.items:
        path = Path(part).expanduser()
        if path.is_dir() and not is_saved_dataset(path):
            raise DataError(_plain_folder(part, path))
        if not path.is_dir() and not path.is_file():
            raise DataError(
                f"data file '{part}' not found; give an existing .jsonl/.json/.parquet file, a folder written "
                f"by datasets' save_to_disk, or shapes:<task> (tasks: {', '.join(shapes.TASKS)})"
            )
        paths.append(path)
    return paths


def _plain_folder(part: str, path: Path) -> str:
    """The one-line error for a folder given as data that ``save_to_disk`` did not write; it names the
    data files the folder holds (the likely meant ones)."""
    held = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".jsonl", ".json", ".parquet"))
    what = f"data file '{part}' is a folder, not a datasets save_to_disk folder (no state.json or dataset_dict.json)"
    if held:
        more = ", ..." if len(held) > 3 else ""
        return f"{what}; it holds {', '.join(held[:3])}{more}: name one, e.g. {Path(part) / held[0]}"
    return (
        f"{what} and holds no .jsonl/.json/.parquet file; give a data file whose records name the images "
        "(image paths resolve against data.image_root)"
    )


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` (``state.json``) or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
