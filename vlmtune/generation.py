"""Batched generation shared by pipelines built on transformers models.

Prompts arrive left-padded (``vlmtune.data.collate.pad_batch(side="left")``), so every prompt ends
at the last column and new tokens are ``output[:, prompt_len:]`` for decoder-only models.
Decoding is greedy (``num_beams=1``) or beam search, with the KV cache on, no sampling.
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def generate_text(
    model,
    tokenizer,
    inputs: dict[str, Any],
    max_new_tokens: int = 16,
    num_beams: int = 1,
    decoder_only: bool = True,
    eos_token_id: int | list[int] | None = None,
) -> list[str]:
    """``model.generate(**inputs)`` -> one stripped string per example (special tokens removed).

    ``eos_token_id``: the stop token(s), default the tokenizer's eos (chat checkpoints list their
    end-of-turn tokens in ``generation_config.eos_token_id``)."""
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id if eos_token_id is None else eos_token_id,
        )
    finally:
        model.train(was_training)
    if decoder_only:
        out = out[:, inputs["input_ids"].shape[1] :]
    return [s.strip() for s in tokenizer.batch_decode(out, skip_special_tokens=True)]
