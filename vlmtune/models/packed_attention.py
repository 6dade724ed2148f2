"""Attention of packed rows, one causal SDPA call per sample (``data.packing=true`` with SDPA).

A packed row (vlmtune.data.packing) holds several samples; transformers' SDPA path isolates them with a
dense block-diagonal causal mask ``M[q, k] = (k <= q) and (seg[q] == seg[k])``, so every row costs
``W^2`` query-key pairs however short its samples, and the mask keeps SDPA off its causal fast path.
This implementation (registered as ``"sdpa_packed"`` in transformers' ``AttentionInterface``) finds the
samples from the restarts of the layer's ``position_ids`` (R, T) and runs
``softmax(q_s k_s^T * scale + causal) v_s`` on each sample ``s`` alone with ``is_causal=True``:
the same function (Vaswani et al., 2017, eq. 1, restricted to the block) at ``sum_s n_s^2 / 2`` pairs,
as flash-attention's varlen kernel does. On CUDA in bf16/fp16 without attention dropout, that kernel
(``torch.nn.attention.varlen.varlen_attn``) runs instead: one call per layer over all segments of all rows,
given their cumulative offsets ``cu = [0, n_1, n_1 + n_2, ...]`` in the flattened (R * T) tokens
(row-end padding is a segment of its own, never a target). Anything that is not a packed training forward (no restart in ``position_ids``, a KV cache,
``q_len != k_len``) goes to transformers' ``sdpa_attention_forward`` with its mask, unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NAME = "sdpa_packed"

try:  # flash-attention varlen in torch itself (CUDA only)
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older torch
    _varlen_attn = None


def packed_segments(position_ids: torch.Tensor | None, q_len: int) -> list[list[tuple[int, int]]] | None:
    """Per row, ``[start, end)`` of every segment (a run of positions 0, 1, ...), or None when no row
    restarts (an unpacked batch) or the positions do not cover the queries."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != q_len:
        return None
    starts = position_ids == 0
    starts[:, 0] = True
    if int(starts.sum()) == position_ids.shape[0]:
        return None
    rows = []
    for row in starts.tolist():
        cuts = [i for i, s in enumerate(row) if s] + [q_len]
        rows.append(list(zip(cuts[:-1], cuts[1:], strict=True)))
    return rows


def sdpa_packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (R, H, T, D), key/value (R, H_kv, T, D) -> (R, T, H, D), like ``sdpa_attention_forward``;
    the layer's ``position_ids`` (R, T) give the segments (samples, and a row's end padding)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.shape[2]
    segments = None
    if key.shape[2] == q_len:
        segments = packed_segments(kwargs.get("position_ids"), q_len)
    if segments is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = key.shape[1] != query.shape[1]
    if varlen_applies(query, dropout):
        return _varlen_packed(query, key, value, segments, scaling, gqa), None
    rows = []
    for r, row in enumerate(segments):
        pieces = []
        for start, end in row:
            out = F.scaled_dot_product_attention(
                query[r : r + 1, :, start:end],
                key[r : r + 1, :, start:end],
                value[r : r + 1, :, start:end],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            pieces.append(out[0].transpose(0, 1))
        rows.append(torch.cat(pieces))
    return torch.stack(rows), None


def varlen_applies(query: torch.Tensor, dropout: float) -> bool:
    """Whether :func:`sdpa_packed_attention` hands a packed batch to torch's flash varlen kernel: CUDA,
    half precision, no attention dropout (the kernel has none), and a GPU (sm80+) and head size flash
    supports."""
    return (
        _varlen_attn is not None
        and query.is_cuda
        and torch.cuda.get_device_capability(query.device)[0] >= 8
        and query.dtype in (torch.bfloat16, torch.float16)
        and dropout == 0.0
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 256
    )


def _varlen_packed(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: list[list[tuple[int, int]]],
    scaling: float | None,
    gqa: bool,
) -> torch.Tensor:
    """query (R, H, T, D), key/value (R, H_kv, T, D) -> (R, T, H, D): every segment of every row in one
    causal varlen call on the flattened (R * T, heads, D) tokens."""
    rows, heads, q_len, dim = query.shape
    starts = [r * q_len + start for r, row in enumerate(segments) for start, _ in row]
    cu = torch.tensor([*starts, rows * q_len], dtype=torch.int32, device=query.device)
    longest = max(end - start for row in segments for start, end in row)

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(rows * q_len, x.shape[1], dim)

    out = _varlen_attn(
        flat(query),
        flat(key),
        flat(value),
        cu,
        cu,
        longest,
        longest,
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=gqa,
    )
    return out.reshape(rows, q_len, heads, dim)


def register() -> str:
    """Register :data:`NAME` with transformers (attention: :func:`sdpa_packed_attention`; mask: SDPA's,
    used by the unpacked fallback). Idempotent; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, sdpa_packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def attends_per_sample(text_config) -> bool:
    """Whether the language model of ``text_config`` runs :func:`sdpa_packed_attention`."""
    return getattr(text_config, "_attn_implementation", None) == NAME


def use_packed_attention(text_config) -> bool:
    """Switch a language model's config from ``sdpa`` to :data:`NAME` (the LM's attention layers read it
    at every forward). Other implementations (eager, flash-attention varlen) are kept. Returns whether
    it switched."""
    if getattr(text_config, "_attn_implementation", None) != "sdpa":
        return False
    text_config._attn_implementation = register()
    return True
