"""Token-level collation for decoder-only VLMs (LLaVA): tokenise rendered turns, expand image
placeholders, mask labels, truncate without splitting image tokens, pad.

A conversation arrives already rendered as segments ``[(text, is_assistant), ...]`` (see
``vlmtune.data.templates.render_vicuna``). Each segment is tokenised on its own, so the label mask
is exact: assistant segments carry their token ids as labels, everything else (system prompt, user
turns, role tags, image tokens, padding) carries ``IGNORE_INDEX``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"


@dataclass
class Encoded:
    """One tokenised example. ``image_spans``: [start, end) of each expanded image block."""

    input_ids: list[int]
    labels: list[int]
    image_spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def _tokenize(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_segments(
    segments: list[tuple[str, bool]],
    tokenizer,
    image_token_id: int,
    num_image_tokens: int,
    add_bos: bool = True,
    placeholder: str = IMAGE_PLACEHOLDER,
) -> Encoded:
    """Tokenise ``segments``; every ``placeholder`` becomes ``num_image_tokens`` x ``image_token_id``.

    Labels: token ids of assistant segments, ``IGNORE_INDEX`` elsewhere (image tokens included).
    """
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    if add_bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    for text, is_assistant in segments:
        pieces = text.split(placeholder)
        for k, piece in enumerate(pieces):
            if k > 0:
                spans.append((len(ids), len(ids) + num_image_tokens))
                ids.extend([image_token_id] * num_image_tokens)
                labels.extend([IGNORE_INDEX] * num_image_tokens)
            tok = _tokenize(tokenizer, piece)
            ids.extend(tok)
            labels.extend(tok if is_assistant else [IGNORE_INDEX] * len(tok))
    return Encoded(ids, labels, spans)


def truncate(enc: Encoded, max_length: int) -> Encoded:
    """Keep the first ``max_length`` tokens, but never cut an image block: the cut moves to the end
    of the last image block (the vision tower always yields every patch, so the model needs them all).
    """
    cut = max([max_length] + [end for _, end in enc.image_spans])
    if cut >= len(enc):
        return enc
    return Encoded(enc.input_ids[:cut], enc.labels[:cut], list(enc.image_spans))


def supervised_tokens(enc: Encoded) -> int:
    """Number of tokens that carry a label (the answer tokens the loss sees)."""
    return sum(label != IGNORE_INDEX for label in enc.labels)


def pad_batch(
    encoded: list[Encoded], pad_id: int, side: str = "right", with_labels: bool = True
) -> dict[str, torch.Tensor]:
    """Stack into ``input_ids``/``attention_mask`` (B, T) [+ ``labels`` (B, T)].

    ``side="left"`` for generation, so every prompt ends at the last column.
    """
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, cols] = torch.tensor(e.input_ids, dtype=torch.long)
        mask[i, cols] = 1
        labels[i, cols] = torch.tensor(e.labels, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if with_labels:
        batch["labels"] = labels
    return batch


def prompt_segments(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Segments before the final assistant answer (the generation prompt)."""
    last = max((i for i, (_, is_assistant) in enumerate(segments) if is_assistant), default=len(segments))
    return segments[:last]
