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
"meta": {"label_name": str}}``. :func:`classification_paths` writes them as a JSONL in the cache
so the shared record loader can read them like any other file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vlmtune.data.errors import DataError

PREFIXES = ("digits:", "imagefolder:", "hf:")
DIGITS_VERSION = "v1"
DIGITS_DOMAINS = {"source": range(0, 5), "target": range(5, 10)}
DIGITS_SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def is_classification_spec(spec: str) -> bool:
    return spec.strip().startswith(PREFIXES)


def cache_root() -> Path:
    """``$VLMTUNE_CACHE/classification`` (default ``~/.cache/vlmtune/classification``)."""
    return Path(os.environ.get("VLMTUNE_CACHE") or "~/.cache/vlmtune").expanduser() / "classification"


def _atomic_dir(final: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename it to ``final`` (safe under concurrent callers)."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


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
    folder = _atomic_dir(cache_root() / f"digits-{DIGITS_VERSION}", _build_digits)
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

    return _atomic_dir(cache_root() / f"hf-{key}", build) / "records.jsonl"


# ---------------------------------------------------------------- specs
def classification_paths(spec: str, split: str = "train") -> list[Path]:
    """JSONL path(s) for a ``digits:`` / ``imagefolder:`` / ``hf:`` spec (written to the cache)."""
    spec = spec.strip()
    kind, _, body = spec.partition(":")
    body, _, spec_split = body.rpartition("@") if "@" in body else (body, "", "")
    split = spec_split.strip() or split
    if kind == "digits":
        return [digits_path(body.strip(), split)]
    if kind == "imagefolder":
        records = imagefolder_records(body.strip(), split)
        key = hashlib.sha1(
            f"{Path(body).expanduser().resolve()}|{split}|{len(records)}".encode()
        ).hexdigest()[:12]
        folder = cache_root() / f"imagefolder-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "records.jsonl"
        tmp = folder / f".records.{os.getpid()}.jsonl"
        _write_jsonl(records, tmp)
        os.replace(tmp, path)
        return [path]
    if kind == "hf":
        return [hf_path(body.strip(), split)]
    raise DataError(
        f"data spec '{spec}' is not a classification spec ({', '.join(p + '...' for p in PREFIXES)})"
    )


def read_classification(spec: str, split: str = "train", max_samples: int = 0) -> list[dict]:
    """Records of a classification spec, or of JSONL paths with ``classify`` records."""
    paths = (
        classification_paths(spec, split)
        if is_classification_spec(spec)
        else [Path(p) for p in spec.split(",")]
    )
    records = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"data file '{path}' not found; give a .jsonl path or {', '.join(PREFIXES)}<...>")
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec.get("label"), int) or "image" not in rec:
                raise DataError(f"{path}:{lineno}: a classify record needs an integer 'label' and an 'image'")
            if not Path(rec["image"]).is_absolute():
                rec["image"] = str(path.parent / rec["image"])
            records.append(rec)
    if not records:
        raise DataError(f"data '{spec}' has no records")
    return records[:max_samples] if max_samples > 0 else records


def class_names(records: list[dict]) -> list[str]:
    """Names by label index (``meta.label_name``, else the index as text)."""
    n = max(r["label"] for r in records) + 1
    names = [str(i) for i in range(n)]
    for r in records:
        names[r["label"]] = str((r.get("meta") or {}).get("label_name", r["label"]))
    return names
