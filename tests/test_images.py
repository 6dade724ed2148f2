"""load_image: conversions to RGB with exact pixel values, one-line errors naming the file."""

import numpy as np
import pytest
from PIL import Image

from vlmtune.data.errors import DataError
from vlmtune.data.images import load_image


def rgb(path, **kw) -> np.ndarray:
    image = load_image(path, **kw)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_roundtrip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    assert np.array_equal(rgb(tmp_path / "x.png"), a)


def test_missing_file_names_file_and_record(tmp_path):
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "nope.png", record_id="q7")
    assert str(e.value) == (
        f"image '{tmp_path / 'nope.png'}' (record 'q7'): not found; check the record's 'image' field and data.image_root"
    )
    with pytest.raises(DataError, match="is a folder"):
        load_image(tmp_path)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        tmp_path / "x.png"
    )
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "t.png", record_id="r1")
    assert str(e.value).startswith(
        f"image '{tmp_path / 't.png'}' (record 'r1'): truncated or corrupt image data ("
    )
    assert str(e.value).endswith("re-create or remove the file")


def test_corrupt_bytes(tmp_path):
    (tmp_path / "c.jpg").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "c.jpg")
    assert str(e.value) == (
        f"image '{tmp_path / 'c.jpg'}': not a readable image (corrupt, or not an image format PIL knows)"
    )


def test_cmyk_palette_grey(tmp_path):
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert Image.open(tmp_path / "c.tif").mode == "CMYK"
    assert rgb(tmp_path / "c.tif")[0, 0].tolist() == [255, 0, 0]
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png")
    assert rgb(tmp_path / "p.png").tolist() == [[[10, 20, 30], [200, 100, 50]]]
    Image.new("L", (1, 1), 77).save(tmp_path / "l.png")
    assert rgb(tmp_path / "l.png").tolist() == [[[77, 77, 77]]]


def test_16_bit_grey(tmp_path):
    Image.fromarray(np.array([[0, 65535, 2570, 1000]], dtype=np.uint16)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    assert rgb(tmp_path / "g.png")[0, :, 0].tolist() == [0, 255, 10, 3]
    Image.fromarray(np.array([[65535, 514]], dtype=np.int32), mode="I").save(tmp_path / "i.tif")
    assert rgb(tmp_path / "i.tif")[0, :, 1].tolist() == [255, 2]


def test_alpha_composited_on_white(tmp_path):
    Image.new("RGBA", (1, 1), (100, 0, 200, 128)).save(tmp_path / "a.png")
    a = 128 / 255
    expected = [round(a * c + (1 - a) * 255) for c in (100, 0, 200)]
    assert np.abs(rgb(tmp_path / "a.png")[0, 0].astype(int) - expected).max() <= 1
    Image.new("RGBA", (1, 1), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert rgb(tmp_path / "t.png")[0, 0].tolist() == [255, 255, 255]
    Image.new("LA", (1, 1), (0, 0)).save(tmp_path / "la.png")
    assert rgb(tmp_path / "la.png")[0, 0].tolist() == [255, 255, 255]
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    assert rgb(tmp_path / "pt.png").tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    Image.new("RGB", (200, 100), (1, 2, 3)).save(tmp_path / "big.png")
    with pytest.raises(DataError) as e:
        load_image(tmp_path / "big.png", record_id="b", max_pixels=19_999)
    assert str(e.value) == (
        f"image '{tmp_path / 'big.png'}' (record 'b'): 200x100 = 20000 pixels exceeds the limit of 19999 "
        "(decompression-bomb guard); if you trust the file, raise it with env VLMTUNE_MAX_IMAGE_PIXELS=N"
    )
    monkeypatch.setenv("VLMTUNE_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DataError, match="exceeds the limit of 1000"):
        load_image(tmp_path / "big.png")
    monkeypatch.setenv("VLMTUNE_MAX_IMAGE_PIXELS", "20000")
    assert load_image(tmp_path / "big.png").size == (200, 100)
    # our limit, not PIL's global one, decides (PIL would raise DecompressionBombError here)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_image(tmp_path / "big.png").getpixel((0, 0)) == (1, 2, 3)
    assert Image.MAX_IMAGE_PIXELS == 100
