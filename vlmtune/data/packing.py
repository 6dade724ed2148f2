"""Packing (``data.packing=true``): several tokenised samples share one row, attention isolated.

A micro-batch of ``train.batch_size`` samples is laid into rows of at most ``data.max_length``
tokens by first-fit decreasing, at the row width that leaves the fewest padded slots, instead of
one row per sample padded to the longest. When the language model attends per sample
(``vlmtune.models.packed_attention``: one causal SDPA call per sample, so a row's width costs no
attention) the whole micro-batch is one row with no padding at all, as transformers'
``DataCollatorWithFlattening`` lays batches out for flash-attention varlen. Each sample keeps its own ``position_ids`` (0, 1, ..., n-1) and its own labels; the
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
Supported: causal LMs with 1-D RoPE (LLaVA, LLaVA-NeXT/OneVision, Idefics3/SmolVLM, InternVL;
``position_ids`` (R, T)) and the Qwen-VL families (M-RoPE): their
``position_ids`` are (4, R, T), row 0 the per-sample text positions from which transformers' Qwen-VL
text model builds the same block-diagonal mask, rows 1-3 each sample's own (temporal, height, width)
positions from the model's ``get_rope_index`` on the sample alone (:func:`mrope_position_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class PackLayout:
    """Where every sample of a micro-batch lies in the packed ``(R, T)`` rows.

    ``order``: sample indices in row-major order (the order their images must follow);
    ``rows_of[i]``, ``starts[i]``: row and first column of sample ``i``; ``lengths[i]``: its tokens;
    ``used[r]``: the real tokens of row ``r``; ``width`` = ``T`` (the fullest row).
    """

    order: list[int]
    rows_of: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    used: torch.Tensor
    width: int

    @classmethod
    def plan(cls, lengths: list[int], capacity: int | None) -> PackLayout:
        """Rows by :func:`plan_batch` (first-fit decreasing at the best row width); ``capacity=None``: one
        row holding every sample, no padding (when the attention runs per sample, nothing bounds a row)."""
        rows = [list(range(len(lengths)))] if capacity is None else plan_batch(lengths, capacity)
        n = len(lengths)
        rows_of, starts = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        used = torch.zeros(len(rows), dtype=torch.long)
        for r, row in enumerate(rows):
            for i in row:
                rows_of[i], starts[i] = r, used[r]
                used[r] += lengths[i]
        order = [i for row in rows for i in row]
        return cls(order, rows_of, starts, torch.tensor(lengths, dtype=torch.long), used, int(used.max()))

    @property
    def num_rows(self) -> int:
        return len(self.used)

    def _flat_columns(self) -> torch.Tensor:
        """Flat index ``row * T + column`` of every token, samples in input order (sum of lengths,)."""
        offsets = self.rows_of * self.width + self.starts
        first = torch.cumsum(self.lengths, 0) - self.lengths
        within = torch.arange(int(self.lengths.sum())) - first.repeat_interleave(self.lengths)
        return offsets.repeat_interleave(self.lengths) + within

    def place(self, values: list[torch.Tensor], fill: int) -> torch.Tensor:
        """Samples' token-aligned tensors ``(..., n_i)`` (input order) -> ``(..., R, T)``, ``fill`` elsewhere."""
        flat = torch.cat(values, dim=-1)
        lead = flat.shape[:-1]
        out = torch.full((*lead, self.num_rows * self.width), fill, dtype=flat.dtype)
        out[..., self._flat_columns()] = flat
        return out.view(*lead, self.num_rows, self.width)

    def real(self) -> torch.Tensor:
        """(R, T) bool: the columns that hold a sample's token (not row-end padding)."""
        return torch.arange(self.width) < self.used[:, None]

    def positions(self) -> torch.Tensor:
        """(R, T) per-sample positions 0..n_i-1; row-end padding counts on from 0 as its own segment."""
        within = self.place([torch.arange(int(n)) for n in self.lengths], 0)
        padding = torch.arange(self.width) - self.used[:, None]
        return torch.where(self.real(), within, padding)

    def labels(self, labels: list[torch.Tensor]) -> torch.Tensor:
        """(R, T) labels; every sample's first label is ``IGNORE_INDEX`` (not predicted from the previous one)."""
        first_ignored = [torch.cat([torch.tensor([IGNORE_INDEX]), x[1:]]) for x in labels]
        return self.place(first_ignored, IGNORE_INDEX)


def pack_batch(
    encoded: list[Encoded], pad_id: int, capacity: int | None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Pack ``encoded`` into rows of at most ``capacity`` tokens (None: one row, see :meth:`PackLayout.plan`).

    Returns the batch ``input_ids``/``labels``/``attention_mask``/``position_ids`` (R, T), T the
    longest row, and ``order``: the sample indices in the order they appear (row-major), which is
    the order their images must follow in ``pixel_values``.
    """
    layout = PackLayout.plan([len(e) for e in encoded], capacity)
    batch = {
        "input_ids": layout.place([torch.tensor(e.input_ids, dtype=torch.long) for e in encoded], pad_id),
        "attention_mask": layout.real().long(),
        "labels": layout.labels([torch.tensor(e.labels, dtype=torch.long) for e in encoded]),
        "position_ids": layout.positions(),
    }
    return batch, layout.order


def mrope_position_ids(layout: PackLayout, per_sample: list[torch.Tensor]) -> torch.Tensor:
    """Packed M-RoPE positions ``(4, R, T)`` from each sample's own ``(3, n_i)`` (temporal, height, width)
    positions, as the model computes them for the sample alone (``get_rope_index``).

    Row 0 holds the per-sample text positions (0..n_i-1, restarting per sample): transformers' Qwen-VL
    text models take a 4-row ``position_ids`` as ``[text; t; h; w]`` and build the block-diagonal mask
    from row 0; rows 1-3 rotate the queries and keys. Row-end padding: its text positions in all rows.
    """
    text = layout.positions()
    rope = layout.place(per_sample, 0)
    rope = torch.where(layout.real(), rope, text)
    return torch.cat([text[None], rope])


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
    """(R, T) index of the segment (sample or padding run) of every token: restarts at position 0
    (a 4-row M-RoPE ``(4, R, T)`` uses its text row)."""
    if position_ids.dim() == 3:
        position_ids = position_ids[0]
    return (position_ids == 0).long().cumsum(-1) - 1


def num_samples(batch: dict[str, Any]) -> int:
    """Samples in a collated batch: its record ``ids`` (a packed row holds several), else its rows."""
    if "ids" in batch:
        return len(batch["ids"])
    first = next(iter(batch.values()))
    return len(first) if hasattr(first, "__len__") else 0
