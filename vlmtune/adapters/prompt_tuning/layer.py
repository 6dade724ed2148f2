"""Prompt tuning for the language model (Lester et al., EMNLP 2021).

``n`` trainable soft tokens P (n, d) are prepended to the decoder's input embeddings; the rest of
the model is frozen. Hooks on the decoder (e.g. ``LlamaModel``, which LLaVA calls with
``inputs_embeds`` after merging image features) do the bookkeeping so callers see no change:

* prefill (empty cache): ``inputs_embeds <- [P; E]``, attention mask ``[1_n; mask]``,
  positions / ``cache_position`` shifted by ``n``; the first ``n`` output positions are removed
  again, so logits and labels keep their length.
* decoding with a KV cache (which already holds the prompt): mask gets ``1_n`` in front and
  positions shift by ``n``.

Init (``options.init``): ``vocab`` (default; embeddings of random vocabulary tokens, Lester et al.
§3), ``text`` (embeddings of ``options.init_token_ids``, e.g. the class labels' tokens, repeated to
fill ``n``) or ``random`` (uniform +-0.5). ``options.length`` sets ``n`` (default: ``r``).
"""

from __future__ import annotations

import torch
from torch import nn

from vlmtune.core.errors import AdapterError


class SoftPrompt(nn.Module):
    """Trainable prompt embeddings ``prompt`` (n, d), attached to a decoder as ``soft_prompt``."""

    adapter_module = True

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.prompt = nn.Parameter(init.detach().clone())
        self.active = 0  # prompt length prepended in the current forward (0: nothing to strip)

    @property
    def num_tokens(self) -> int:
        return self.prompt.shape[0]

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        kwargs = dict(kwargs)
        if args:  # decoders take input_ids first
            kwargs.setdefault("input_ids", args[0])
            args = args[1:]
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.pop("input_ids", None)
            if ids is None:
                raise AdapterError("prompt tuning: the decoder got neither input_ids nor inputs_embeds")
            embeds = module.get_input_embeddings()(ids)
        kwargs["input_ids"] = None
        n, batch = self.num_tokens, embeds.shape[0]
        cache = kwargs.get("past_key_values")
        prefill = cache is None or cache.get_seq_length() == 0
        mask = kwargs.get("attention_mask")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                raise AdapterError("prompt tuning needs a 2-D (batch, seq) attention_mask or none")
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        for key in ("position_ids", "cache_position"):
            pos = kwargs.get(key)
            if pos is not None:
                if prefill:
                    head = torch.arange(n, device=pos.device, dtype=pos.dtype)
                    head = head.expand(*pos.shape[:-1], n) if pos.dim() > 1 else head
                    pos = torch.cat([head, pos + n], dim=-1)
                else:
                    pos = pos + n
                kwargs[key] = pos
        if prefill:
            p = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
            embeds = torch.cat([p, embeds], dim=1)
        kwargs["inputs_embeds"] = embeds
        self.active = n if prefill else 0
        return args, kwargs

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        n, self.active = self.active, 0
        if not n:
            return output
        output.last_hidden_state = output.last_hidden_state[:, n:]
        hidden = getattr(output, "hidden_states", None)
        if hidden is not None:
            output.hidden_states = tuple(h[:, n:] for h in hidden)
        return output


def find_decoder(tower: nn.Module) -> nn.Module | None:
    """The module under ``tower`` (itself included) that owns the token embeddings and the layers."""
    for _, m in tower.named_modules():
        get = getattr(m, "get_input_embeddings", None)
        if get is not None and hasattr(m, "layers") and isinstance(get(), nn.Embedding):
            return m
    return None
