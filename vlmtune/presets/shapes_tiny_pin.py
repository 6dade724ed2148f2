"""The PIN base ("shapes-tiny-pin"): a frozen VLM that writes boxes but has no positional pathway.

PIN (Dorkenwald et al., CVPR 2024) starts from a frozen VLM whose language model knows how to write
coordinates while its vision pathway has lost where things are (Flamingo's Perceiver, BLIP-2's
Q-Former); the positional insert gives that back. A 2-layer LM has never read coordinates anywhere,
so the tiny base learns both halves in one extra stage, from ``shapes-tiny``:

    stage 0d   language model + projector trained on the single-shape ``shapes:locate`` images with
               the ``pin-loc`` grounding prompt ("[0.05,0.08,0.33,0.36]"), while the 64 image tokens
               reach the LM in a fresh random order for every image and a fixed 2-D sinusoidal
               position code (:func:`position_code`) is added to the vision features before the
               shuffle (:func:`scrambled_positions`). The LM learns to write boxes and to read
               position from the features, never from token order.

The code is a training scaffold: the shipped base has none. Frozen, it writes box text (80% of it
parsable) in the wrong place: mIoU 0.03, below a constant box's 0.06. ``llava-pin`` trains a PIN from
zero, with the whole VLM frozen, to give the position back: mIoU 0.45 (README).

Measured, and why not a base that writes no box at all (the paper's frozen models score 0): a base
that learned boxes only inside captions ("a red circle at [...]") scores 0 on the grounding prompt,
but a PIN on it could not switch the frozen 2-layer LM to the prompt's format (mIoU 0.02 after 800
steps); a large LM follows new formats, a 2-layer one does not.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


def position_code(grid: int, dim: int) -> torch.Tensor:
    """(grid * grid, dim), row-major patches: ``[sin(r w), cos(r w), sin(c w), cos(c w)]`` for row r,
    column c and ``dim // 4`` frequencies ``w_k = (pi / 2) 100^(-k / (dim // 4))`` (Vaswani et al.'s
    sinusoid per axis); every row has norm ``sqrt(dim // 2)``, zeros pad ``dim % 4``."""
    k = dim // 4
    if k == 0:
        raise ValueError(f"position_code needs dim >= 4, got {dim}")
    w = (math.pi / 2) * torch.exp(-torch.arange(k, dtype=torch.float32) * math.log(100.0) / k)
    axis = torch.arange(grid, dtype=torch.float32)[:, None] * w  # (grid, k)
    rows = torch.cat([axis.sin(), axis.cos()], dim=1)[:, None, :].expand(grid, grid, 2 * k)
    cols = torch.cat([axis.sin(), axis.cos()], dim=1)[None, :, :].expand(grid, grid, 2 * k)
    code = torch.zeros(grid, grid, dim)
    code[..., : 4 * k] = torch.cat([rows, cols], dim=-1)
    return code.reshape(grid * grid, dim)


@contextmanager
def scrambled_positions(module: nn.Module, code: torch.Tensor) -> Iterator[None]:
    """While active, ``module``'s input features x (B, N, D) become ``shuffle_b(x + code)``: the code
    (N, D) is added in patch order, then each image's N tokens are permuted at random (torch's global
    generator, so a seeded run is reproducible). Removed on exit."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = args[0] + code.to(args[0])
        order = torch.argsort(torch.rand(x.shape[:2]), dim=1).to(x.device)
        return (torch.gather(x, 1, order[..., None].expand_as(x)), *args[1:]), kwargs

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def locate_config(model_dir: Path, steps: int, seed: int = 0):
    """Stage 0d's run config: LM and projector trained, vision tower frozen, on ``shapes:locate``."""
    from vlmtune.presets.shapes_tiny import pretrain_config

    cfg = pretrain_config(model_dir, steps, seed)
    cfg.recipe = "shapes-tiny-pin"
    cfg.data.train, cfg.data.max_length = "shapes:locate", 160
    cfg.train.batch_size, cfg.train.lr = 32, 1e-3
    return cfg


def feature_norm(pipe, records: list[dict]) -> float:
    """Mean norm of the vision features (B, N, D) the projector receives, over ``records``' images
    (read at the projector's input, so the model's own feature layer and CLS handling apply)."""
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else next(iter(kwargs.values())))

    handle = pipe.model.model.multi_modal_projector.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            pipe.model.model.get_image_features(pixel_values=pipe.pixel_values(records))
    finally:
        handle.remove()
    return seen[0].norm(dim=-1).mean().item()


def scramble_for_training(pipe, records: list[dict]):
    """:func:`scrambled_positions` on ``pipe``'s projector, with the code scaled to the mean norm of
    the vision features of ``records[:64]`` (as loud as the features)."""
    vision = pipe.model.config.vision_config
    code = position_code(vision.image_size // vision.patch_size, vision.hidden_size)
    code *= feature_norm(pipe, records[:64]) / code.norm(dim=-1).mean()
    return scrambled_positions(pipe.model.model.multi_modal_projector, code)


def build_shapes_tiny_pin(
    out_dir: str | Path,
    steps: int = 3000,
    seed: int = 0,
    quiet: bool = True,
    base: str = "shapes-tiny",
    n_images: int = 8000,
) -> Path:
    """Write ``shapes-tiny-pin`` to ``out_dir``: ``base`` (a preset name or LLaVA folder) + stage 0d
    on ``n_images`` single-shape images (module docstring)."""
    from vlmtune.presets.registry import model_folder
    from vlmtune.presets.shapes_tiny import train_stage

    cfg = locate_config(Path(model_folder("llava", base)), steps, seed)
    cfg.data.shapes_size = n_images
    with tempfile.TemporaryDirectory(prefix="shapes-tiny-pin-") as work:
        return train_stage(cfg, Path(out_dir), Path(work) / "run0d", quiet, around=scramble_for_training)


if __name__ == "__main__":  # python -m vlmtune.presets.shapes_tiny_pin OUT_DIR [STEPS]
    import sys

    build_shapes_tiny_pin(sys.argv[1], *(int(a) for a in sys.argv[2:3]), quiet=False)
