"""ViT image classification on timm: the ``vit`` pipeline (``model.pipeline: vit``).

    logits = head(vit(x)),   vit: timm VisionTransformer without its head -> (B, D),  head: (D -> C)

Towers: ``vision`` = the timm ViT (``vit``), ``projector`` = the new linear classification head
(``head``), so a recipe names the head explicitly (``projector: {method: full}``), as every VTAB
method trains it.

``model.name_or_path``:
- ``digits-tiny-scratch``: a small ViT (8x8 input, patch 2, D=64, 4 blocks), randomly initialised
  (the preset ``digits-tiny``, this ViT pretrained, is resolved to its folder by :mod:`vlmtune.presets`);
- a folder with ``config.json`` (``{"timm": {VisionTransformer kwargs}, "image_size", "mean", "std"}``)
  and ``model.safetensors`` (as :meth:`ViTPipeline.save_merged` writes it);
- otherwise a timm model name, created with ``pretrained=True`` (timm's own weight cache/download).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F

import vlmtune.adapters.bitfit  # noqa: F401  (registers method 'bitfit')
import vlmtune.adapters.vpt  # noqa: F401  (registers method 'vpt')
from vlmtune.data.classification import class_names
from vlmtune.data.errors import DataError
from vlmtune.data.records import read_classification
from vlmtune.models.base import register_pipeline

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig

DIGITS_TINY = {
    "img_size": 8,
    "patch_size": 2,
    "embed_dim": 64,
    "depth": 4,
    "num_heads": 4,
    "mlp_ratio": 2.0,
    "in_chans": 3,
}


@dataclass
class ViTPreset:
    timm: dict[str, Any]
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "timm": self.timm,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


class ViTClassifier(nn.Module):
    """timm ViT backbone (pooled pre-logits, (B, D)) + linear head (B, C)."""

    def __init__(self, vit: VisionTransformer, num_classes: int) -> None:
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.num_features, num_classes)
        nn.init.zeros_(self.head.weight)  # a new head starts at uniform predictions
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(pixel_values))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """``model.gradient_checkpointing=true``: timm's activation checkpointing of the ViT blocks (each
        block's activations recomputed in backward; non-reentrant, timm's default), under transformers' name
        for the switch that :func:`vlmtune.train.trainer.enable_checkpointing` turns on."""
        self.vit.set_grad_checkpointing(True)


# ---------------------------------------------------------------- loading
def digits_tiny_preset() -> ViTPreset:
    return ViTPreset(dict(DIGITS_TINY, num_classes=0), image_size=8)


def build_vit(preset: ViTPreset, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    kwargs = dict(preset.timm, num_classes=0)
    try:
        return VisionTransformer(**kwargs)
    except TypeError as e:
        raise DataError(f"vit config.json 'timm' has a bad key: {e}") from None


def load_vit_folder(folder: Path) -> tuple[VisionTransformer, ViTPreset, dict[str, torch.Tensor]]:
    """Backbone from ``config.json`` + ``model.safetensors``; also returns the head tensors, if any."""
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        preset = ViTPreset(cfg["timm"], int(cfg["image_size"]), tuple(cfg["mean"]), tuple(cfg["std"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{cfg_path}: not a vlmtune ViT config ({type(e).__name__}: {e})") from None
    vit = build_vit(preset)
    state = load_file(str(folder / "model.safetensors"))
    own = {k[len("vit.") :]: v for k, v in state.items() if k.startswith("vit.")}
    missing, unexpected = vit.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{folder / 'model.safetensors'}: does not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    head = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    return vit, preset, head


def load_backbone(name_or_path: str, seed: int = 0) -> tuple[VisionTransformer, ViTPreset]:
    if name_or_path == "digits-tiny-scratch":
        preset = digits_tiny_preset()
        return build_vit(preset, seed), preset
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise DataError(f"model folder '{folder}' needs config.json and model.safetensors")
        vit, preset, _ = load_vit_folder(folder)
        return vit, preset
    import timm

    try:
        vit = timm.create_model(name_or_path, pretrained=True, num_classes=0)
    except Exception as e:  # noqa: BLE001 -- unknown name, no network, ...
        raise DataError(
            f"model.name_or_path '{name_or_path}': not a preset (digits-tiny), a model folder or a loadable "
            f"timm model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(vit, VisionTransformer):
        raise DataError(f"timm model '{name_or_path}' is a {type(vit).__name__}, not a VisionTransformer")
    dc = vit.pretrained_cfg
    size = int(dc.get("input_size", (3, 224, 224))[-1])
    preset = ViTPreset({}, size, tuple(dc.get("mean", (0.5,) * 3)), tuple(dc.get("std", (0.5,) * 3)))
    return vit, preset


# ---------------------------------------------------------------- pipeline
class ViTPipeline:
    """Pipeline protocol for image classification (``classify`` records)."""

    name = "vit"

    def __init__(
        self,
        vit: VisionTransformer,
        preset: ViTPreset,
        classes: list[str],
        name_or_path: str = "",
    ) -> None:
        self.model = ViTClassifier(vit, len(classes))
        self.preset = preset
        self.classes = classes
        self.name_or_path = name_or_path
        self.towers = {"vision": ["vit"], "projector": ["head"]}
        self._pixels: dict[str, torch.Tensor] = {}
        self.mean = torch.tensor(preset.mean).view(3, 1, 1)
        self.std = torch.tensor(preset.std).view(3, 1, 1)

    def pixels(self, path: str) -> torch.Tensor:
        """(3, S, S) normalised image; small images are cached in memory."""
        cached = self._pixels.get(path)
        if cached is not None:
            return cached
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                s = self.preset.image_size
                if im.size != (s, s):
                    im = im.resize((s, s), Image.BICUBIC)
                x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        except (OSError, ValueError) as e:
            raise DataError(f"image '{path}' cannot be read ({type(e).__name__}: {e})") from None
        x = (x - self.mean) / self.std
        if len(self._pixels) < 50_000 and x.numel() <= 3 * 64 * 64:
            self._pixels[path] = x
        return x

    def collate(self, records: list[dict], train: bool = True) -> dict[str, Any]:
        batch: dict[str, Any] = {"pixel_values": torch.stack([self.pixels(r["image"]) for r in records])}
        batch["labels"] = torch.tensor([int(r["label"]) for r in records])
        if not train:
            batch["ids"] = [r["id"] for r in records]
        return batch

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(batch["pixel_values"])

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch["labels"])

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16, num_beams: int = 1) -> list[str]:
        """Class names of the arg-max logits (classification has nothing to decode)."""
        return [self.classes[i] for i in self.logits(batch).argmax(-1).tolist()]

    @torch.no_grad()
    def accuracy(self, records: list[dict], batch_size: int = 256) -> float:
        """Top-1 accuracy (%) on ``records`` in eval mode."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        correct = 0
        for i in range(0, len(records), batch_size):
            batch = self.collate(records[i : i + batch_size], train=False)
            pred = self.model(batch["pixel_values"].to(device)).argmax(-1).cpu()
            correct += int((pred == batch["labels"]).sum())
        self.model.train(was_training)
        return 100.0 * correct / len(records)

    def save_merged(self, out_dir: str | Path) -> Path:
        """Merge LoRA/DoRA layers and write ``config.json`` + ``model.safetensors``.

        VPT prompts cannot be folded into weights: a model with prompts is refused (save the adapter).
        """
        from vlmtune.adapters.attach import merge
        from vlmtune.core.errors import AdapterError

        if hasattr(self.model.vit, "vpt"):
            raise AdapterError(
                "VPT prompts cannot be merged into the ViT weights; keep the adapter folder instead"
            )
        merge(self.model)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.preset.to_json()
        cfg["classes"] = self.classes
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        return out


def saved_classes(folder: str | Path) -> list[str] | None:
    """The class names of a classifier written by :meth:`ViTPipeline.save_merged` (``config.json``
    ``classes`` beside ``model.safetensors``, which holds its ``head.*``), else None."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        return None
    try:
        classes = json.loads((folder / "config.json").read_text()).get("classes")
    except (json.JSONDecodeError, AttributeError):
        return None
    return [str(c) for c in classes] if classes else None


def training_classes(cfg: RunConfig) -> list[str]:
    """Class names from ``data.train``, padded to ``model.num_classes``."""
    classes = class_names(read_classification(cfg.data.train, "train"))
    if cfg.model.num_classes:
        if cfg.model.num_classes < len(classes):
            raise DataError(
                f"model.num_classes={cfg.model.num_classes} but data.train has labels up to {len(classes) - 1}"
            )
        classes += [str(i) for i in range(len(classes), cfg.model.num_classes)]
    return classes


def named_classes(cfg: RunConfig) -> list[str]:
    """``model.classes`` (a run's recorded head order, set by eval/merge), checked against the classes of
    ``data.train`` when it can be read: other class folders would relabel every prediction, so they are
    refused; training data that is gone (moved, deleted) is not needed."""
    classes = [str(c) for c in cfg.model.classes]
    if not cfg.data.train:
        return classes
    try:
        found = training_classes(cfg)
    except DataError:  # the training data is gone or unreadable: the recorded classes are all eval/merge need
        return classes
    if found != classes:
        lost, new = [c for c in classes if c not in found], [c for c in found if c not in classes]
        what = f"missing {lost}, new {new}" if lost or new else f"in another order: {found}"
        raise DataError(
            f"data.train {cfg.data.train}: its classes differ from the ones this run was trained on "
            f"({what}; the run's: {classes}); put its class folders back as they were when the run trained"
        )
    return classes


def build_vit_pipeline(cfg: RunConfig, folder: str | None = None) -> ViTPipeline:
    """``model.pipeline: vit``: the backbone from ``folder`` (default ``model.name_or_path``), classes
    from ``model.classes`` (a run's, :func:`named_classes`), ``model.num_classes`` or the training data.
    A merged classifier folder (``vlmtune merge``) keeps its trained head when its classes are the data's,
    or when there is no ``data.train``."""
    path = folder or cfg.model.name_or_path
    saved = saved_classes(path) if Path(path).is_dir() else None
    if cfg.model.classes:
        classes = named_classes(cfg)
    else:
        classes = saved if saved is not None and not cfg.data.train else training_classes(cfg)
    if saved is not None:  # a merged classifier: backbone and head from its one weights file
        vit, preset, head = load_vit_folder(Path(path))
    else:
        (vit, preset), head = load_backbone(path, cfg.train.seed), {}
    pipeline = ViTPipeline(vit, preset, classes, cfg.model.name_or_path)
    if head and saved == classes:  # the merged classifier's own head, not a fresh one
        pipeline.model.head.load_state_dict(head)
    return pipeline


register_pipeline("vit", build_vit_pipeline)
