"""Modality-and-length grouped micro-batches (``data.group_by_length=true``).

LLaVA (``LLaVATrainer``, ``get_modality_length_grouped_indices``) never mixes image samples and
text-only samples in one batch; transformers' ``LengthGroupedSampler`` puts samples of similar
length together: a seeded permutation is cut into megabatches of ``MEGABATCH x batch_size``
samples, each megabatch is sorted by length (longest first) and cut into batches. Here: both, on
signed lengths (``> 0`` with an image, ``< 0`` text-only, as in LLaVA):

1. a permutation of each modality, from ``torch.Generator().manual_seed(seed)``;
2. per modality, megabatches sorted by length, cut into batches of ``batch_size``;
3. the batches shuffled together (same generator), the incomplete ones (at most one per
   modality) last.

A pure function of (lengths, batch_size, seed): the trainer calls it with ``seed + epoch`` and
resumes at micro-batch ``m`` exactly (``m % per_epoch`` of epoch ``m // per_epoch``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MEGABATCH = 50  # batches per sorted megabatch (transformers' LengthGroupedSampler default)


def _modality_batches(indices: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of ``indices`` (already shuffled): megabatches sorted by |length|, longest first."""
    size = MEGABATCH * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(indices), size):
        mega = sorted(indices[start : start + size], key=lambda i: -abs(lengths[i]))
        batches += [mega[k : k + batch_size] for k in range(0, len(mega), batch_size)]
    return batches


def grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Index batches covering ``range(len(lengths))`` once, one modality per batch, similar lengths
    together; deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    full: list[list[int]] = []
    partial: list[list[int]] = []
    for with_image in (True, False):
        group = [i for i, n in enumerate(lengths) if (n > 0) == with_image]
        if not group:
            continue
        order = [group[j] for j in torch.randperm(len(group), generator=g).tolist()]
        for batch in _modality_batches(order, lengths, batch_size):
            (full if len(batch) == batch_size else partial).append(batch)
    shuffled = [full[j] for j in torch.randperm(len(full), generator=g).tolist()]
    return shuffled + partial


def epoch_batch_count(with_image: Sequence[bool], batch_size: int, group_by_length: bool) -> int:
    """Micro-batches per epoch of the trainer's own batching (``Trainer._epoch_batches``), from the
    modality of each record alone (no tokenising): ``ceil(n / batch_size)`` slices of a permutation, or
    with ``group_by_length`` the batches of :func:`grouped_batches`, one modality each:
    ``ceil(n_image / batch_size) + ceil(n_text / batch_size)`` (megabatches hold whole batches)."""
    if not group_by_length:
        return math.ceil(len(with_image) / batch_size)
    n_image = sum(map(bool, with_image))
    return math.ceil(n_image / batch_size) + math.ceil((len(with_image) - n_image) / batch_size)
