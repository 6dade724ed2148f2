"""Frozen-tower feature cache (``data.cache_vision_features=true``): LLaVA's vision tower runs once per image
(model type ``llava``: the vicuna_v1 ``LlavaPipeline`` and the chat-template ``FamilyPipeline``).

With the vision tower frozen, its output (the projector's input: the ``vision_feature_layer``
hidden states, CLS dropped for the ``default`` strategy; shape (P, D_v) per image) is a pure
function of the image, the tower's weights and the preprocessing. It is stored on disk in the
tower's dtype, one raw file per image, and read back memory-mapped (``torch.from_file``), so later
epochs skip the tower (and, on the vicuna_v1 path, image decoding and preprocessing); the projector and the LM run as usual and
the logits equal an uncached run's (the same projector input; tests/test_feature_cache.py).

Layout: ``<root>/<fingerprint>/<sha[:2]>/<sha>.bin`` + ``<root>/<fingerprint>/meta.json``.
``sha`` is the SHA-256 of the image file's bytes; ``fingerprint`` is the SHA-256 of the tower's
weights, its config, the feature layer and selection strategy, the dtype and the image
processor's settings, so changing any of them reads and writes another folder (old folders are
left alone; delete them to reclaim the space). Files are written atomically (temp + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmtune.core.config import ConfigError
from vlmtune.core.io import cache_dir


def default_root() -> Path:
    """``$VLMTUNE_CACHE/vision-features`` (default ``~/.cache/vlmtune/vision-features``)."""
    return cache_dir("vision-features")


def tower_fingerprint(model: nn.Module, image_processor: Any) -> str:
    """SHA-256 (16 hex digits) of everything the projector's input depends on besides the image."""
    h = hashlib.sha256()
    cfg = model.config
    settings = {
        "vision_config": cfg.vision_config.to_dict(),
        "vision_feature_layer": cfg.vision_feature_layer,
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "preprocessing": json.loads(image_processor.to_json_string()),
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, t in sorted(model.model.vision_tower.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def projector_input(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(N_img, P, D_v): what LLaVA's projector receives for ``pixel_values`` (read through a hook,
    so the model's own feature-layer and CLS selection apply), without a graph."""
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else next(iter(kwargs.values())))

    handle = model.model.multi_modal_projector.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model.get_image_features(pixel_values=pixel_values)
    finally:
        handle.remove()
    return seen[0]


class FeatureCache:
    """Projector inputs on disk, keyed by image content under one tower fingerprint."""

    def __init__(self, folder: Path, dtype: torch.dtype) -> None:
        self.folder = folder
        self.dtype = dtype
        self.shape: tuple[int, ...] | None = None
        self.hits = self.misses = 0
        self._digests: dict[tuple[str, int, int], str] = {}
        meta = folder / "meta.json"
        if meta.is_file():
            self.shape = tuple(json.loads(meta.read_text())["shape"])

    # ---------------------------------------------------------------- keys and files
    def key(self, image_path: str) -> str:
        """SHA-256 of the file's bytes (memoised per path, size and mtime)."""
        st = os.stat(image_path)
        memo = (str(image_path), st.st_size, st.st_mtime_ns)
        if memo not in self._digests:
            self._digests[memo] = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
        return self._digests[memo]

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.bin"

    def load(self, key: str) -> torch.Tensor | None:
        """The features of ``key`` (memory-mapped, copy-on-write), or None when not cached."""
        path = self.path(key)
        if self.shape is None or not path.is_file():
            return None
        numel = int(torch.Size(self.shape).numel())
        if path.stat().st_size != numel * self.dtype.itemsize:  # a foreign or damaged file: recompute
            return None
        return torch.from_file(str(path), shared=False, size=numel, dtype=self.dtype).view(self.shape)

    def store(self, key: str, features: torch.Tensor) -> None:
        """Write one image's (P, D_v) features atomically."""
        features = features.detach().to("cpu", self.dtype).contiguous()
        if self.shape is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.shape = tuple(features.shape)
            meta = {"shape": list(self.shape), "dtype": str(self.dtype)}
            _atomic_write(self.folder / "meta.json", json.dumps(meta).encode())
        _atomic_write(self.path(key), features.view(torch.uint8).numpy().tobytes())

    # ---------------------------------------------------------------- pipeline hooks
    def collate(self, records: list[dict], pixel_values: Callable[[list[dict]], Any]) -> dict[str, Any]:
        """``image_features`` (N_img, P, D_v) when every image is cached, else ``pixel_values``;
        ``image_keys`` in both cases (the order of the images in the batch)."""
        from vlmtune.data.records import record_images

        paths = [p for r in records for p in record_images(r)]
        if not paths:
            return {}
        keys = [self.key(p) for p in paths]
        cached = [self.load(k) for k in keys]
        if all(c is not None for c in cached):
            return {"image_features": torch.stack(cached), "image_keys": keys}
        return {"pixel_values": pixel_values(records), "image_keys": keys}

    def model_inputs(self, model: nn.Module, inputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        """Replace ``pixel_values``/``image_features`` by the projected features (``mm_encoder_outputs``);
        the tower runs (and its output is stored) only for a batch with an uncached image."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features = inputs.pop("image_features", None)
        pixels = inputs.pop("pixel_values", None)
        if features is None and pixels is None:
            return inputs
        if features is None:
            tower = model.model.vision_tower
            if torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters()):
                raise ConfigError(
                    "data.cache_vision_features needs a frozen vision tower, but some of its weights "
                    "train; set data.cache_vision_features=false"
                )
            features = projector_input(model, pixels)
            for key, f in zip(batch["image_keys"], features, strict=True):
                self.store(key, f)
            self.misses += len(features)
        else:
            self.hits += len(features)
        projector = model.model.multi_modal_projector
        projected = projector(features.to(next(projector.parameters()).dtype))
        return {
            **inputs,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=list(projected))},
        }


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_feature_cache(model: nn.Module, image_processor: Any, root: str = "") -> FeatureCache:
    """The cache folder of ``model``'s vision tower under ``root`` (default :func:`default_root`)."""
    folder = Path(root).expanduser() if root else default_root()
    dtype = next(model.model.vision_tower.parameters()).dtype
    return FeatureCache(folder / tower_fingerprint(model, image_processor), dtype)
