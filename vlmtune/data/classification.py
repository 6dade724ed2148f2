"""Image-classification data as ``classify`` records: embedded digits, an image folder, or a ``datasets`` set.

Data specs (``data.train`` / ``data.eval``; ``@split`` picks the split, else the caller's):

- ``digits:source`` / ``digits:target`` -- scikit-learn's bundled 8x8 digits (1797 images, no
  download). ``source`` holds digits 0-4 (labels 0-4), ``target`` digits 5-9 (labels 0-4 = digit - 5);
  each is split deterministically into ``train`` / ``test`` halves (stratified, seed 0). A small ViT is
  pretrained on ``digits:source@train`` and adapted to ``digits:target@train`` (``vlmtune bench vit``).
- ``imagefolder:<root>`` -- ``<root>/<class>/<image>`` (classes sorted by name), or
  ``<root>/<split>/<class>/<image>`` when a ``<split>`` folder exists.
- ``hf:<name or path>`` -- a ``datasets`` dataset (``load_from_disk`` folder or a cached hub name),
  with one ``Image`` column and one ``ClassLabel`` column; images are written once into the cache.

Records: ``{"id", "task": "classify", "image": <path, relative to the JSONL>, "label": int,
"meta": {"label_name": str}}``, written as a JSONL in the cache (:func:`digits_path`,
:func:`imagefolder_path`, :func:`hf_path`; :mod:`vlmtune.data.spec` picks one) so the shared record
loader reads them like any other file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from vlmtune.core.errors import DataError
from vlmtune.core.io import atomic_dir, cache_dir

DIGITS_VERSION = "v1"
DIGITS_DOMAINS = {"source": range(0, 5), "target": range(5, 10)}
DIGITS_SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def cache_root() -> Path:
    """``$VLMTUNE_CACHE/classification`` (default ``~/.cache/vlmtune/classification``)."""
    return cache_dir("classification")


def _write_jsonl(records: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------- digits (embedded default)
def digits_split_indices(domain: str, split: str) -> np.ndarray:
    """Indices into ``load_digits()`` for a domain/split: per class, a seeded 50/50 split."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.RandomState(0)
    chosen = []
    for digit in DIGITS_DOMAINS[domain]:
        idx = np.flatnonzero(target == digit)
        idx = idx[rng.permutation(len(idx))]
        half = len(idx) * 4 // 5 if domain == "source" else len(idx) // 2
        chosen.append(idx[:half] if split == "train" else idx[half:])
    return np.sort(np.concatenate(chosen))


def _build_digits(out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    (out / "images").mkdir()
    for i, img in enumerate(digits.images):  # (8, 8) floats in 0..16
        pixels = np.round(img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(out / "images" / f"{i:04d}.png")
    for domain, classes in DIGITS_DOMAINS.items():
        for split in DIGITS_SPLITS:
            records = [
                {
                    "id": f"digits-{i:04d}",
                    "task": "classify",
                    "image": f"images/{i:04d}.png",
                    "label": int(digits.target[i]) - classes.start,
                    "meta": {"label_name": str(int(digits.target[i]))},
                }
                for i in digits_split_indices(domain, split)
            ]
            _write_jsonl(records, out / f"{domain}-{split}.jsonl")


def digits_path(domain: str, split: str) -> Path:
    if domain not in DIGITS_DOMAINS:
        raise DataError(f"data spec 'digits:{domain}': domain must be one of {', '.join(DIGITS_DOMAINS)}")
    if split not in DIGITS_SPLITS:
        raise DataError(
            f"data spec 'digits:{domain}@{split}': split must be one of {', '.join(DIGITS_SPLITS)}"
        )
    folder = atomic_dir(cache_root() / f"digits-{DIGITS_VERSION}", _build_digits)
    return folder / f"{domain}-{split}.jsonl"


# ---------------------------------------------------------------- image folder
def imagefolder_records(root: str | Path, split: str = "train") -> list[dict]:
    """Records of ``root/[split/]<class>/<image>``; classes are the sorted subfolder names."""
    base = Path(root).expanduser().resolve()
    if not base.is_dir():
        raise DataError(f"image folder '{root}' does not exist")
    if (base / split).is_dir():
        base = base / split
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder '{base}' has no class subfolders (expected <root>/<class>/<image>)")
    records = []
    for label, name in enumerate(classes):
        for path in sorted((base / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                rel = f"{name}/{path.name}"
                records.append(
                    {
                        "id": rel,
                        "task": "classify",
                        "image": str(path),
                        "label": label,
                        "meta": {"label_name": name},
                    }
                )
    if not records:
        raise DataError(f"image folder '{base}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return records


# ---------------------------------------------------------------- datasets
def _load_hf(name: str, split: str):
    import datasets

    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"dataset '{name}' has no split '{split}' (splits: {', '.join(ds)})")
                ds = ds[split]
            return ds
        return datasets.load_dataset(name, split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- any loader failure becomes one line
        raise DataError(
            f"could not load dataset '{name}' split '{split}': {str(e).splitlines()[0]}"
        ) from None


def hf_columns(ds) -> tuple[str, str]:
    """(image column, label column): the first ``Image`` and ``ClassLabel`` features."""
    import datasets

    image = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    label = next((k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        raise DataError(
            f"dataset needs one Image and one ClassLabel column; features are: "
            f"{', '.join(f'{k}={type(f).__name__}' for k, f in ds.features.items())}"
        )
    return image, label


def hf_path(name: str, split: str) -> Path:
    ds = _load_hf(name, split)
    image_col, label_col = hf_columns(ds)
    names = ds.features[label_col].names
    key = hashlib.sha1(f"{name}|{split}|{getattr(ds, '_fingerprint', '')}".encode()).hexdigest()[:12]

    def build(out: Path) -> None:
        (out / "images").mkdir()
        records = []
        for i, row in enumerate(ds):
            rel = f"images/{i:06d}.png"
            row[image_col].convert("RGB").save(out / rel)
            label = int(row[label_col])
            records.append(
                {
                    "id": f"{split}-{i:06d}",
                    "task": "classify",
                    "image": rel,
                    "label": label,
                    "meta": {"label_name": names[label]},
                }
            )
        _write_jsonl(records, out / "records.jsonl")

    return atomic_dir(cache_root() / f"hf-{key}", build) / "records.jsonl"


def imagefolder_path(root: str, split: str) -> Path:
    """JSONL of :func:`imagefolder_records`, rewritten into the cache on every call (the folder may change)."""
    records = imagefolder_records(root, split)
    key = hashlib.sha1(f"{Path(root).expanduser().resolve()}|{split}|{len(records)}".encode()).hexdigest()[
        :12
    ]
    folder = cache_root() / f"imagefolder-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "records.jsonl"
    tmp = folder / f".records.{os.getpid()}.jsonl"
    _write_jsonl(records, tmp)
    os.replace(tmp, path)
    return path


def class_names(records: list[dict]) -> list[str]:
    """Names by label index (``meta.label_name``, else the index as text)."""
    n = max(r["label"] for r in records) + 1
    names = [str(i) for i in range(n)]
    for r in records:
        names[r["label"]] = str((r.get("meta") or {}).get("label_name", r["label"]))
    return names
