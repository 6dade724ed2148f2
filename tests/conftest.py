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
