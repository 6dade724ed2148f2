"""Fixtures shared across test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmtune.presets.shapes_tiny import TEST_SIZE, corpus, write_random_llava


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory) -> Path:
    """A private shapes cache folder (generated on demand by the tests that use it)."""
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, shapes_cache) -> Path:
    """A random tiny LLaVA (TEST_SIZE) with a tokenizer trained on shapes texts, saved to disk:
    tests load it through ``from_pretrained`` like a real checkpoint."""
    texts = corpus(n_images=8, seeds=1, cache_dir=shapes_cache)
    return write_random_llava(tmp_path_factory.mktemp("tiny") / "llava", TEST_SIZE, seed=0, texts=texts)


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    """``family_folder(name)`` -> the tiny checkpoint folder of a family (tests/vlm_families.py), built once per
    session; tests read it, never write into it."""
    from vlm_families import build_family

    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_family(name, root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def two_images(tmp_path_factory) -> tuple[Path, Path]:
    """Two random RGB PNGs of different sizes (40x48 and 56x40), seeded."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate([(40, 48), (56, 40)]):
        Image.fromarray((np.random.RandomState(i).rand(h, w, 3) * 255).astype("uint8")).save(
            root / f"{i}.png"
        )
    return root / "0.png", root / "1.png"
