"""Checkpoints that resume a run exactly.

    <run>/checkpoints/step-000100/
        adapter/              PEFT-format adapter (+ trainable_extras.safetensors): every trainable tensor
        trainer_state.pt      optimizer, scheduler, RNG states (python, numpy, torch, cuda), data position
        optimizer/            FSDP runs: the sharded optimizer state (torch.distributed.checkpoint)
        done                  written last: a folder without it is incomplete and ignored

A checkpoint is written into a temporary folder and renamed into place, so a crash mid-save leaves
the previous checkpoint intact; only the newest ``keep_last`` are kept. A full disk (``ENOSPC``) is one
line naming the folder and the bytes needed (:class:`DiskFullError`), with the previous checkpoint kept;
the final adapter (:func:`save_final_adapter`) is written the same way, beside the old one.
"""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlmtune.adapters.peft_io import EXTRAS_NAME, PEFT_PREFIX, WEIGHTS_NAME, save_adapter
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import ConfigError
from vlmtune.core.io import atomic_torch_save, atomic_write_text, read_safetensors, replace_dir

STATE_NAME = "trainer_state.pt"
DONE_NAME = "done"
CKPT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


class DiskFullError(ConfigError):
    """The disk filled up while saving (a user error: one line, exit code 2)."""


def trainable_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def disk_full(folder: Path, needed: int, kept: str) -> DiskFullError:
    """The one-line error for ``ENOSPC`` while writing into ``folder`` (about ``needed`` bytes)."""
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    return DiskFullError(
        f"disk full while saving into {folder}: needs about {needed:,} bytes, {free:,} free; {kept}. "
        "Free some space (or set train.keep_last lower) and resume with --resume"
    )


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain Python values, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / DONE_NAME).is_file())


def unreadable(ckpt: Path) -> str | None:
    """Why a complete-looking checkpoint cannot be loaded (a truncated or corrupt file), else None. Reads
    every tensor file and the trainer state, without touching a model."""
    try:
        trainable_tensors(ckpt / "adapter")
        torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to read means "not this one"
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


def newest_loadable_checkpoint(run_dir: str | Path, say=print) -> Path | None:
    """The newest complete checkpoint whose files load; every newer one that does not is named and skipped."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        reason = unreadable(ckpt)
        if reason is None:
            return ckpt
        say(f"--resume: {ckpt.name} cannot be read ({reason}); trying the one before")
    return None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    trainer_state: dict[str, Any],
    specs: dict[str, AdapterSpec] | None = None,
    base_name_or_path: str | None = None,
    keep_last: int = 2,
    move_in: dict[str, Path] | None = None,
) -> Path:
    """Write ``checkpoints/step-{step:06d}`` atomically; prune to the newest ``keep_last``.

    ``move_in``: folders written beforehand (e.g. sharded optimizer state) moved in under these names."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    for stale in root.glob(".step-*"):  # torn saves of a killed process (one writer per run folder)
        shutil.rmtree(stale, ignore_errors=True)
    previous = checkpoint_dirs(run_dir)

    def build(tmp: Path) -> None:
        save_adapter(model, tmp / ADAPTER_DIR, specs, base_name_or_path)
        atomic_torch_save({**trainer_state, "rng": rng_state()}, tmp / STATE_NAME)
        for name, folder in (move_in or {}).items():
            Path(folder).rename(tmp / name)
        atomic_write_text(f"{step}\n", tmp / DONE_NAME)

    try:
        replace_dir(final, build)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = (
            f"the previous checkpoint {previous[-1].name} is kept" if previous else "no checkpoint was kept"
        )
        raise disk_full(root, 3 * trainable_bytes(model), kept) from None  # adapter + Adam's two moments
    for old in checkpoint_dirs(run_dir)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_final_adapter(
    model: nn.Module,
    run_dir: str | Path,
    specs: dict[str, AdapterSpec] | None = None,
    base_name_or_path: str | None = None,
    base_info: dict | None = None,
) -> Path:
    """Write ``<run_dir>/adapter`` whole or not at all: into a temporary folder renamed into place (an older
    adapter there is replaced only then). Returns the adapter folder."""
    run_dir = Path(run_dir)
    final = run_dir / ADAPTER_DIR
    try:
        replace_dir(final, lambda tmp: save_adapter(model, tmp, specs, base_name_or_path, base_info))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = (
            f"the checkpoints in {run_dir / CKPT_DIR} are kept"
            if checkpoint_dirs(run_dir)
            else "nothing saved"
        )
        raise disk_full(run_dir, trainable_bytes(model), kept) from None
    return final


def trainable_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Tensors of an adapter folder under model parameter names."""
    out = {k[len(PEFT_PREFIX) :]: v for k, v in read_safetensors(adapter_dir / WEIGHTS_NAME).items()}
    if (adapter_dir / EXTRAS_NAME).is_file():
        out.update(read_safetensors(adapter_dir / EXTRAS_NAME))
    return out


@torch.no_grad()
def load_checkpoint(ckpt: str | Path, model: nn.Module) -> dict[str, Any]:
    """Restore every trainable tensor of ``model`` and the RNG states; returns the trainer state
    (optimizer, scheduler, position) for the trainer to apply."""
    ckpt = Path(ckpt)
    if not (ckpt / DONE_NAME).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no '{DONE_NAME}' file)")
    tensors = trainable_tensors(ckpt / "adapter")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise FileNotFoundError(
            f"{ckpt}: checkpoint lacks {len(missing)} trainable tensor(s), e.g. '{missing[0]}'; "
            "was it written by a run with other adapter settings?"
        )
    from vlmtune.train.fsdp import copy_full_

    for name, p in params.items():
        copy_full_(p, tensors[name])  # plain or FSDP-sharded parameter
    state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)  # no pickled code
    set_rng_state(state["rng"])
    return state
