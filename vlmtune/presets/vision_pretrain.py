"""Stage-0 pretraining of a tiny vision encoder on shapes scenes, a stand-in for CLIP's web-scale
pretraining (and for the attribute heads of bottom-up-attention features). Used by the embedded
``shapes-tiny`` presets of both pipelines (LLaVA's CLIP ViT, VL-BART's CLIP ResNet).

Two linear heads over the encoder's grid tokens (B, G*G, D), discarded afterwards:

    patch head   every token -> class of the shape covering its cell (13: 12 shapes + background)
    scene head   mean token  -> scene attributes, :data:`vlmtune.data.shapes.SCENE_SLOTS`
                 (count, colour of each shape, shape of each colour, left/right-most shape)

Loss = CE(patch) + sum over slots CE(slot).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from vlmtune.data import shapes

N_PATCH_CLASSES = 1 + len(shapes.CLASSES)


def shapes_grid_data(
    split: str,
    n_images: int,
    image_size: int,
    grid: int,
    to_pixels: Callable[[list[Image.Image]], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels (N, 3, H, W), cell labels (N, grid*grid) and scene targets (N, slots) of the shapes
    scenes ``0..n_images-1`` of ``split`` (the same scenes as the shapes dataset files)."""
    images, labels, targets = [], [], []
    for i in range(n_images):
        scene = shapes.sample_scene(shapes._rng(split, 0, i), image_size)
        images.append(shapes.draw_scene(scene, image_size))
        labels.append(shapes.patch_labels(scene, image_size, grid))
        targets.append(shapes.scene_targets(scene))
    return to_pixels(images), torch.tensor(labels), torch.tensor(targets)


def pretrain_encoder(
    encode: Callable[[torch.Tensor], torch.Tensor],
    params: list[nn.Parameter],
    feat_dim: int,
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``params`` (the encoder's) so that ``encode(pixels) -> (B, G*G, feat_dim)`` tokens
    carry the labels of :func:`shapes_grid_data`; returns held-out accuracies."""
    torch.manual_seed(seed)
    widths = [n for _, n in shapes.SCENE_SLOTS]
    patch_head = nn.Linear(feat_dim, N_PATCH_CLASSES)
    scene_head = nn.Linear(feat_dim, sum(widths))
    optimizer = torch.optim.AdamW(
        [*params, *patch_head.parameters(), *scene_head.parameters()], lr=lr, weight_decay=0.0
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)

    def heads(pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens = encode(pixels)
        return patch_head(tokens), list(scene_head(tokens.mean(1)).split(widths, dim=-1))

    pixels, labels, targets = train
    for _ in range(steps):
        idx = torch.randint(0, len(pixels), (batch_size,))
        patch_logits, slot_logits = heads(pixels[idx])
        loss = F.cross_entropy(patch_logits.reshape(-1, N_PATCH_CLASSES), labels[idx].reshape(-1))
        loss = loss + sum(F.cross_entropy(lg, targets[idx, k]) for k, lg in enumerate(slot_logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    pixels, labels, targets = val
    with torch.no_grad():
        patch_logits, slot_logits = heads(pixels)
    shape = labels > 0
    slots = torch.stack([lg.argmax(-1) for lg in slot_logits], dim=1)
    return {
        "patch_accuracy": (patch_logits.argmax(-1)[shape] == labels[shape]).float().mean().item(),
        "scene_accuracy": (slots == targets).float().mean().item(),
        "scene_exact": (slots == targets).all(1).float().mean().item(),
    }
