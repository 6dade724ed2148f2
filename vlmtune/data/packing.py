"""Packing (``data.packing=true``): several tokenised samples share one row, attention isolated.

A micro-batch of ``train.batch_size`` samples is laid into rows of at most ``data.max_length``
tokens by first-fit decreasing, at the row width that leaves the fewest padded slots, instead of
one row per sample padded to the longest. Each sample keeps its own ``position_ids`` (0, 1, ..., n-1) and its own labels; the
first label of every sample is ``IGNORE_INDEX`` (a sample's first token is never a target when it
runs alone, and in a packed row it would otherwise be predicted from the previous sample).

Isolation: the model gets ``position_ids``, **no** 2D attention mask and no KV cache
(``use_cache=False``). transformers 5 then finds
the packed samples from the restarts of ``position_ids`` (``masking_utils.find_packed_sequence_indices``)
and builds the block-diagonal causal mask ``M[q, k] = (k <= q) and (seg[q] == seg[k])`` for
SDPA/eager, or runs flash-attention's varlen kernel (``flash_attention_2``) on the same inputs. So a
packed row is mathematically its samples run alone (tests/test_packing.py). The 2D
``attention_mask`` stays in the batch (1 = real token) for token counting, but is not passed on.

Padding at a row's end forms its own segment (positions 0, 1, ...) with labels ``IGNORE_INDEX``.
Supported: LLaVA (1-D RoPE). Qwen families (M-RoPE, 3 x position ids) are not supported yet.
"""

from __future__ import annotations

from typing import Any

import torch

from vlmtune.data.collate import IGNORE_INDEX, Encoded


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: sample indices per row, each row's total length ``<= capacity``
    (a sample longer than ``capacity`` gets a row of its own). Deterministic: ties keep input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def plan_batch(lengths: list[int], capacity: int, step: int = 64) -> list[list[int]]:
    """:func:`plan_rows` at the row width ``W <= capacity`` (tried in steps of ``step`` tokens) that
    minimises the padded slots ``R x W_used`` the linear layers pay for; ties: the narrower rows
    (attention pays ``R x W^2``)."""
    start = min(max(lengths), capacity)
    best: tuple[int, list[list[int]]] | None = None
    for width in sorted(set(range(start, capacity + 1, step)) | {capacity}):
        rows = plan_rows(lengths, width)
        slots = len(rows) * max(sum(lengths[i] for i in row) for row in rows)
        if best is None or slots < best[0]:
            best = (slots, rows)
    return best[1]


def pack_batch(
    encoded: list[Encoded], pad_id: int, capacity: int
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Pack ``encoded`` into rows of at most ``capacity`` tokens.

    Returns the batch ``input_ids``/``labels``/``attention_mask``/``position_ids`` (R, T), T the
    longest row, and ``order``: the sample indices in the order they appear (row-major), which is
    the order their images must follow in ``pixel_values``.
    """
    rows = plan_batch([len(e) for e in encoded], capacity)
    width = max(sum(len(encoded[i]) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        col = 0
        for i in row:
            n = len(encoded[i])
            ids[r, col : col + n] = torch.tensor(encoded[i].input_ids, dtype=torch.long)
            labels[r, col : col + n] = torch.tensor(encoded[i].labels, dtype=torch.long)
            labels[r, col] = IGNORE_INDEX
            mask[r, col : col + n] = 1
            positions[r, col : col + n] = torch.arange(n)
            col += n
        positions[r, col:] = torch.arange(width - col)  # padding: a segment of its own
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}
    return batch, [i for row in rows for i in row]


def is_packed(batch: dict[str, Any]) -> bool:
    return "position_ids" in batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The tensors the model takes: all but ``labels``. A packed batch goes without its 2D mask and
    with ``use_cache=False`` (transformers derives the block-diagonal mask from ``position_ids``
    only when there is neither a 2D mask nor a KV cache; see the module docstring)."""
    if not is_packed(batch):
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    drop = {"labels", "attention_mask"}
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in drop}
    return {**inputs, "use_cache": False}


def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """(R, T) index of the segment (sample or padding run) of every token: restarts at position 0."""
    return (position_ids == 0).long().cumsum(-1) - 1


def num_samples(batch: dict[str, Any]) -> int:
    """Samples in a collated batch: its record ``ids`` (a packed row holds several), else its rows."""
    if "ids" in batch:
        return len(batch["ids"])
    first = next(iter(batch.values()))
    return len(first) if hasattr(first, "__len__") else 0
