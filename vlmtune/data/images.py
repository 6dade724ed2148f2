"""Safe image loading: every image becomes 8-bit RGB, every failure a one-line :class:`DataError`.

Conversions: L/1/CMYK/YCbCr -> RGB (PIL), P -> RGB (RGBA first when it has transparency), 16/32-bit
greyscale (I;16*, I) -> 8-bit by ``v // 257`` (65535 -> 255), F -> clip to [0, 255] (scaled by 255
when all values are <= 1), anything with alpha (RGBA, LA, PA, P+transparency) is composited on white:
``out = a * c + (1 - a) * 255``. EXIF orientation is applied. Images larger than ``max_pixels``
(default: PIL's 89,478,485, or env ``VLMTUNE_MAX_IMAGE_PIXELS``) are refused before decoding.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmtune.data.errors import DataError

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS default (~ 0.25 GiB of RGBA)
_PIL_LIMIT_LOCK = threading.Lock()


def max_pixels_default() -> int:
    """``VLMTUNE_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get("VLMTUNE_MAX_IMAGE_PIXELS", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"VLMTUNE_MAX_IMAGE_PIXELS must be an integer, got '{raw}'") from None


def _where(path: Path, record_id: str | None) -> str:
    return f"image '{path}'" + (f" (record '{record_id}')" if record_id is not None else "")


def _open(path: Path) -> Image.Image:
    """Open lazily (header only); our limit, not PIL's global one, decides what is too large."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            pass  # above 2x PIL's limit: reopen with PIL's check off, then apply ours
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.int64) // 257
        grey = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image(
    path: str | Path,
    record_id: str | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Load ``path`` as an RGB PIL image; raise :class:`DataError` naming the file (and record)."""
    path = Path(path)
    where = _where(path, record_id)
    limit = max_pixels_default() if max_pixels is None else max_pixels
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "not found"
        raise DataError(f"{where}: {what}; check the record's 'image' field and data.image_root")
    try:
        image = _open(path)
    except UnidentifiedImageError:
        raise DataError(
            f"{where}: not a readable image (corrupt, or not an image format PIL knows)"
        ) from None
    except OSError as e:
        raise DataError(f"{where}: cannot be read ({e})") from None
    width, height = image.size
    if limit and width * height > limit:
        image.close()
        raise DataError(
            f"{where}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(decompression-bomb guard); if you trust the file, raise it with env VLMTUNE_MAX_IMAGE_PIXELS=N"
        )
    try:
        with image:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises all three for broken data
        raise DataError(
            f"{where}: truncated or corrupt image data ({e}); re-create or remove the file"
        ) from None
