"""VPT: visual prompt tuning (Jia et al., ECCV 2022) for timm, transformers CLIP and open_clip ViTs.

    shallow:  [x_1, Z_1, E_1] = L_1([x_0, P, E_0]);   [x_i, Z_i, E_i] = L_i([x_{i-1}, Z_{i-1}, E_{i-1}])
    deep:     [x_i, _,   E_i] = L_i([x_{i-1}, P_{i-1}, E_{i-1}])            i = 1..N   (VPT eqs. 5-8)

``x`` are the prefix tokens (class [+ register] tokens), ``E`` the patch tokens after the position
embedding (prompts get none), ``P`` (n, D) learned prompts. Prompts are inserted right after the
prefix tokens by a pre-hook on every block and removed again by a hook on its output, so every
block output seen from outside (timm ``forward_intermediates``, CLIP ``hidden_states``, open_clip
intermediates, the pooled features, LLaVA's image tokens) has the base model's token count. Shallow
VPT carries a block's prompt outputs over to the next block's input, so the computation is exactly
eq. 5; deep VPT discards them and inserts the next layer's own prompts (eq. 7).

Block parameter names are unchanged (hooks, not wrappers): base checkpoints and LoRA targets still
match. The prompts live at ``<tower>.vpt.prompts`` with shape (1 or N, n, D) (for a tower given as
several prefixes, e.g. a LLaVA family's vision tower: ``<first prefix>.vpt.prompts``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from vlmtune.core.errors import AdapterError


@dataclass
class ViTLayout:
    """Where VPT goes in one ViT implementation."""

    blocks: list[nn.Module]  # transformer blocks, in order
    num_prefix: int  # class (+ register) tokens before the patches; prompts go right after them
    dim: int  # token width D
    patch: int  # patch size, for the init range
    seq_dim: int = 1  # token axis: 1 for (B, T, D), 0 for (T, B, D)


def _int(size: Any) -> int:
    return int(size[0]) if isinstance(size, tuple | list) else int(size)


def vit_layout(tower: nn.Module) -> ViTLayout:
    """Detect a timm ``VisionTransformer``, a transformers CLIP-style vision model or an open_clip ViT."""
    if hasattr(tower, "blocks") and hasattr(tower, "patch_embed") and hasattr(tower, "num_prefix_tokens"):
        return ViTLayout(  # timm: prefix = class + register tokens in every configuration
            list(tower.blocks), tower.num_prefix_tokens, tower.embed_dim, _int(tower.patch_embed.patch_size)
        )
    vm = getattr(tower, "vision_model", tower)  # CLIPVisionModel -> CLIPVisionTransformer
    if hasattr(vm, "encoder") and hasattr(vm, "embeddings") and hasattr(vm.encoder, "layers"):
        cfg = vm.config
        prefix = 1 if hasattr(vm.embeddings, "class_embedding") else 0  # CLIP: 1, SigLIP: 0
        return ViTLayout(list(vm.encoder.layers), prefix, cfg.hidden_size, _int(cfg.patch_size))
    if hasattr(tower, "transformer") and hasattr(tower, "conv1") and hasattr(tower, "class_embedding"):
        tr = tower.transformer  # open_clip VisionTransformer
        seq_dim = 1 if getattr(tr, "batch_first", True) else 0
        return ViTLayout(list(tr.resblocks), 1, tr.width, _int(tower.conv1.kernel_size), seq_dim)
    raise AdapterError(
        f"VPT supports timm VisionTransformer, transformers CLIP/SigLIP vision models and open_clip "
        f"VisionTransformer; got {type(tower).__name__}"
    )


def vpt_init_bound(patch: int, dim: int) -> float:
    """Xavier-uniform bound of the VPT code: sqrt(6 / (3 * patch^2 + D)) (0.0625 for ViT-B/16)."""
    return math.sqrt(6.0 / (3 * patch * patch + dim))


def expand_prompts(p: torch.Tensor, like: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Prompts (n, D) -> (B, n, D) (or (n, B, D) when ``seq_dim`` is 0) in the dtype of ``like``."""
    shape = list(like.shape)
    shape[seq_dim] = p.shape[0]
    return (p.unsqueeze(0) if seq_dim == 1 else p.unsqueeze(1)).to(like.dtype).expand(shape)


def insert_tokens(x: torch.Tensor, p: torch.Tensor, at: int, seq_dim: int) -> torch.Tensor:
    """[x[:at], p, x[at:]] along the token axis (p batched like x)."""
    rest = x.shape[seq_dim] - at
    return torch.cat([x.narrow(seq_dim, 0, at), p, x.narrow(seq_dim, at, rest)], seq_dim)


def remove_tokens(x: torch.Tensor, at: int, n: int, seq_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x without tokens [at, at + n), those n tokens)."""
    rest = x.shape[seq_dim] - at - n
    kept = torch.cat([x.narrow(seq_dim, 0, at), x.narrow(seq_dim, at + n, rest)], seq_dim)
    return kept, x.narrow(seq_dim, at, n)


class VisualPrompts(nn.Module):
    """Learned prompts (1 or N, n, D) and the block hooks that insert and remove them."""

    adapter_module = True  # counted as added parameters by vlmtune.adapters.report

    def __init__(self, layout: ViTLayout, length: int, deep: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if length < 0:
            raise AdapterError(f"VPT length must be >= 0, got {length}")
        self.length, self.deep = length, deep
        self.num_prefix, self.seq_dim = layout.num_prefix, layout.seq_dim
        self.num_layers = len(layout.blocks)
        sets = self.num_layers if deep else 1
        self.prompts = nn.Parameter(torch.empty(sets, length, layout.dim))
        self.bound = vpt_init_bound(layout.patch, layout.dim)
        nn.init.uniform_(self.prompts, -self.bound, self.bound)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._carry: dict[int, torch.Tensor] = {}  # shallow: prompt outputs of block i-1, by i
        self._handles: list[Any] = []

    def hook(self, blocks: list[nn.Module]) -> None:
        """Install the pre/post hooks on every block (first in line, before e.g. output recorders)."""
        for i, block in enumerate(blocks):
            pre = block.register_forward_pre_hook(partial(self._before, i), with_kwargs=True)
            post = block.register_forward_hook(partial(self._after, i), prepend=True)
            self._handles += [pre, post]

    def unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def layer_prompts(self, i: int) -> torch.Tensor:
        """Prompts (n, D) fed to block ``i`` for a fresh insertion (deep: layer i's own set)."""
        return self.dropout(self.prompts[i if self.deep else 0])

    def _before(self, i: int, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        if i == 0:
            self._carry = {}
        if self.deep or i == 0:
            p = expand_prompts(self.layer_prompts(i), x, self.seq_dim)
        else:  # shallow: the previous block's prompt outputs
            p = self._carry[i]
        x = insert_tokens(x, p, self.num_prefix, self.seq_dim)
        if args:
            return (x, *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else "x"
        return args, {**kwargs, key: x}

    def _after(self, i: int, module: nn.Module, args: tuple, output: Any) -> Any:
        y = output[0] if isinstance(output, tuple) else output
        y, p = remove_tokens(y, self.num_prefix, self.length, self.seq_dim)
        if not self.deep and i + 1 < self.num_layers:
            self._carry[i + 1] = p
        return (y, *output[1:]) if isinstance(output, tuple) else y

    def extra_repr(self) -> str:
        return f"length={self.length}, deep={self.deep}, sets={self.prompts.shape[0]}, dim={self.prompts.shape[-1]}"


def _strip_first_hidden_state(prompts: VisualPrompts, module: nn.Module, args: tuple, output: Any) -> Any:
    """transformers records ``hidden_states[0]`` as block 0's input, i.e. with the prompts inserted."""
    hs = getattr(output, "hidden_states", None)
    if hs and hs[0] is not None and hs[0].shape[1] != output.last_hidden_state.shape[1]:
        first, _ = remove_tokens(hs[0], prompts.num_prefix, prompts.length, 1)
        output.hidden_states = (first, *hs[1:])
    return output


def add_vpt(
    tower: nn.Module,
    length: int = 10,
    deep: bool = False,
    dropout: float = 0.0,
    holder: nn.Module | None = None,
) -> VisualPrompts:
    """Add trainable prompts to a ViT ``tower`` in place (as ``holder.vpt``, default ``tower.vpt``: a
    submodule of the tower when the tower is given as several prefixes) and return them."""
    holder = tower if holder is None else holder
    if hasattr(holder, "vpt"):
        raise AdapterError(f"{type(holder).__name__} already has VPT prompts attached")
    layout = vit_layout(tower)
    ref = next(tower.parameters())
    prompts = VisualPrompts(layout, length, deep, dropout).to(ref.device)
    holder.vpt = prompts
    prompts.hook(layout.blocks)
    if hasattr(getattr(tower, "vision_model", tower), "encoder"):  # transformers: fix hidden_states[0]
        tower.register_forward_hook(partial(_strip_first_hidden_state, prompts))
    prompts.requires_grad_(True)
    return prompts
