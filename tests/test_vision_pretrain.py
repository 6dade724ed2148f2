"""Stage-0 vision pretraining of the tiny presets: the labels it trains on and that it learns them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vlmtune.data.shapes import SCENE_SLOTS
from vlmtune.presets.vision_pretrain import N_PATCH_CLASSES, pretrain_encoder, shapes_grid_data


def to_pixels(images) -> torch.Tensor:
    return torch.stack(
        [torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images]
    )


def test_grid_data_shapes_and_ranges():
    pixels, labels, targets = shapes_grid_data("val", 6, 32, 4, to_pixels)
    assert pixels.shape == (6, 3, 32, 32)
    assert labels.shape == (6, 16) and 0 <= labels.min() and labels.max() < N_PATCH_CLASSES
    assert (labels > 0).any(dim=1).all()  # every scene has at least one labelled cell
    assert targets.shape == (6, len(SCENE_SLOTS))
    for k, (_, n) in enumerate(SCENE_SLOTS):
        assert 0 <= targets[:, k].min() and targets[:, k].max() < n


@pytest.mark.slow  # trains an encoder
def test_pretraining_teaches_a_small_encoder_the_labels():
    torch.manual_seed(0)
    # a patchify "encoder": 8x8 patches of a 32 px image -> 4x4 grid of 32-d tokens
    encoder = nn.Sequential(nn.Conv2d(3, 32, 8, stride=8), nn.GELU(), nn.Conv2d(32, 32, 1))

    def encode(px: torch.Tensor) -> torch.Tensor:
        return encoder(px).flatten(2).transpose(1, 2)

    train = shapes_grid_data("train", 400, 32, 4, to_pixels)
    val = shapes_grid_data("val", 100, 32, 4, to_pixels)
    before = pretrain_encoder(encode, list(encoder.parameters()), 32, train, val, steps=1)
    after = pretrain_encoder(encode, list(encoder.parameters()), 32, train, val, steps=300, lr=3e-3)
    assert after["patch_accuracy"] > 0.25 > before["patch_accuracy"]  # chance is 1/12
    assert after["scene_accuracy"] > before["scene_accuracy"] + 0.2
