"""Frozen CLIP ResNet grid features for VL-BART, with an optional on-disk cache.

VL-Adapter (Sung et al., CVPR 2022) feeds BART the last ResNet stage of CLIP before the attention
pool: RN101 at 224 px gives a (2048, 7, 7) grid, average-pooled to 6x6 = 36 visual tokens. Each
token also gets its grid-cell box ``(x1, y1, x2, y2)`` in [0, 1] image coordinates.

The encoder is frozen and deterministic, so features can be computed once per image and cached:
``FeatureCache`` stores one ``(N, C)`` fp32 tensor per image under a key that combines the encoder
fingerprint and the image content (sha1 of the file bytes or of the decoded pixels).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# name -> (layers, width, image_size); feature dim = 32 * width
TINY_RESNETS: dict[str, tuple[tuple[int, int, int, int], int, int]] = {
    "tiny": ((1, 1, 1, 1), 8, 224),  # 256-d features, 7x7 grid at 224 px
}


class VisionEncoderError(ValueError):
    """A vision encoder name or checkpoint that cannot be used (one line for the user)."""


class GridEncoder(nn.Module):
    """CLIP ModifiedResNet trunk (stem + layer1..4, no attention pool) -> pooled grid tokens.

    forward: pixels (B, 3, S, S) normalised -> features (B, grid*grid, C), C = 32 * width.
    Always in eval mode (BatchNorm running statistics are part of the frozen encoder).
    """

    def __init__(self, trunk: nn.Module, grid: int, image_size: int, name: str) -> None:
        super().__init__()
        if hasattr(trunk, "attnpool"):
            trunk.attnpool = None  # the pooled CLIP embedding is not used
        self.trunk = trunk
        self.grid = grid
        self.image_size = image_size
        self.name = name
        self.feat_dim = trunk.layer4[-1].conv3.out_channels
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> GridEncoder:  # noqa: ARG002 - frozen encoder
        return super().train(False)

    def grid_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) -> (B, grid*grid, C) with autograd (stage-0 pretraining)."""
        t = self.trunk
        x = t.stem(pixels.to(t.conv1.weight.dtype))
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))  # (B, C, S/32, S/32)
        x = F.adaptive_avg_pool2d(x, self.grid)  # (B, C, grid, grid)
        return x.flatten(2).transpose(1, 2).float()

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.grid_tokens(pixels)

    @property
    def has_public_weights(self) -> bool:
        """False for ``tiny`` and ``NAME:random``: their weights must be saved with the model."""
        return self.name not in TINY_RESNETS and not self.name.endswith(":random")

    def fingerprint(self) -> str:
        """Short hash of the weights (and grid/size): the feature cache key prefix."""
        h = hashlib.sha1(f"{self.name}:{self.grid}:{self.image_size}".encode())
        for k, v in sorted(self.trunk.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def grid_boxes(grid: int) -> torch.Tensor:
    """Boxes of a ``grid x grid`` raster in [0, 1] image coordinates, row-major: (grid*grid, 4)."""
    edges = torch.linspace(0.0, 1.0, grid + 1)
    y1, x1 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    return torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)


def tiny_resnet(name: str = "tiny", seed: int = 0) -> nn.Module:
    """A small randomly initialised CLIP ModifiedResNet (tests, the shapes preset)."""
    from open_clip.modified_resnet import ModifiedResNet

    layers, width, size = TINY_RESNETS[name]
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        trunk = ModifiedResNet(list(layers), output_dim=32, heads=2, image_size=size, width=width)
        for m in trunk.modules():  # O(1) activations through the random trunk (He init)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):  # CLIP zero-inits each block's last BN; keep it alive
                nn.init.ones_(m.weight)
    return trunk


def build_grid_encoder(name: str, visual_tokens: int = 36, weights: str | Path | None = None) -> GridEncoder:
    """``tiny`` | ``RN50`` | ``RN101`` | ``RN50x4`` ...; ``NAME:random`` builds ``NAME`` without weights.

    Real names load OpenAI CLIP weights through ``open_clip`` (its cache or a download); ``weights``
    is a local ``.safetensors`` trunk state dict that replaces them (e.g. a saved tiny encoder).
    """
    grid = math.isqrt(visual_tokens)
    if grid * grid != visual_tokens:
        raise VisionEncoderError(f"model.visual_tokens={visual_tokens} must be a square (36 = 6x6)")
    arch, _, tag = name.partition(":")
    if arch in TINY_RESNETS:
        trunk, size = tiny_resnet(arch), TINY_RESNETS[arch][2]
    else:
        import open_clip

        cfg = open_clip.get_model_config(arch)
        if cfg is None or not isinstance(cfg["vision_cfg"].get("layers"), list | tuple):
            raise VisionEncoderError(
                f"model.vision_encoder='{name}' is not an open_clip ResNet (use RN50, RN101, RN50x4, or tiny)"
            )
        from open_clip.modified_resnet import ModifiedResNet

        vc = cfg["vision_cfg"]
        size = vc["image_size"]
        trunk = ModifiedResNet(
            vc["layers"], cfg["embed_dim"], heads=vc["width"] * 32 // 64, image_size=size, width=vc["width"]
        )
        if tag != "random" and weights is None:
            trunk = _openai_trunk(arch)
    if weights is not None:
        state = load_file(str(weights))
        missing, unexpected = trunk.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("attnpool.")]
        if missing or unexpected:
            raise VisionEncoderError(
                f"{weights}: not a {name} trunk (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    return GridEncoder(trunk, grid, size, name)


def _openai_trunk(arch: str) -> nn.Module:
    import open_clip

    try:
        model = open_clip.create_model(arch, pretrained="openai")
    except Exception as e:  # network / cache problems surface as many exception types
        raise VisionEncoderError(
            f"model.vision_encoder='{arch}': cannot load the OpenAI CLIP weights ({type(e).__name__}); "
            f"put them in the open_clip cache, or use '{arch}:random' / 'tiny' offline"
        ) from None
    return model.visual


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """CLIP preprocessing: RGB, bicubic resize of the short side, centre crop, normalise -> (3, S, S)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(size, size, 3)
    x = x.permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def image_key(image: Image.Image | str | Path) -> str:
    """Content hash of an image: file bytes for a path, mode/size/pixels for a PIL image."""
    h = hashlib.sha1()
    if isinstance(image, str | Path):
        h.update(Path(image).read_bytes())
    else:
        h.update(f"{image.mode}:{image.size}".encode())
        h.update(image.tobytes())
    return h.hexdigest()


class FeatureCache:
    """One ``safetensors`` file of (N, C) fp32 features per (encoder, image) pair under ``root``."""

    def __init__(self, root: str | Path, encoder_fingerprint: str) -> None:
        self.dir = Path(root) / encoder_fingerprint
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        self.hits += 1
        return load_file(str(p))["features"]

    def put(self, key: str, features: torch.Tensor) -> None:
        """Write to a unique temporary name, then rename: readers never see a partial file. No
        fsync: a cache entry lost in a crash is simply recomputed (fsync per image is slow)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": features.float().contiguous()}, str(tmp))
        os.replace(tmp, path)


class FeatureExtractor:
    """Images -> (B, N, C) grid features through a frozen :class:`GridEncoder` and an optional cache."""

    def __init__(self, encoder: GridEncoder, cache_dir: str | Path | None = None) -> None:
        self.encoder = encoder
        self.cache = FeatureCache(cache_dir, encoder.fingerprint()) if cache_dir else None
        self.boxes = grid_boxes(encoder.grid)  # (N, 4)

    @property
    def feat_dim(self) -> int:
        return self.encoder.feat_dim

    @property
    def num_tokens(self) -> int:
        return self.encoder.grid**2

    def to(self, device: torch.device | str) -> FeatureExtractor:
        self.encoder.to(device)
        return self

    def __call__(self, images: list[Image.Image | str | Path], batch_size: int = 64) -> torch.Tensor:
        """(B, N, C) fp32 features; with a cache, each distinct image is encoded at most once."""
        out: list[torch.Tensor | None] = [None] * len(images)
        keys = [image_key(im) for im in images] if self.cache else [str(i) for i in range(len(images))]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if self.cache:
            for k, i in first.items():
                out[i] = self.cache.get(k)
        todo = [i for i in first.values() if out[i] is None]
        device = next(self.encoder.parameters()).device
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            pixels = torch.stack([preprocess(_open(images[i]), self.encoder.image_size) for i in chunk])
            feats = self.encoder(pixels.to(device)).cpu()
            for i, f in zip(chunk, feats):
                out[i] = f
                if self.cache:
                    self.cache.put(keys[i], f)
        if not images:
            return torch.zeros(0, self.num_tokens, self.feat_dim)
        return torch.stack([out[first[k]] for k in keys])


def _open(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    from vlmtune.data.images import load_image

    return load_image(image)
