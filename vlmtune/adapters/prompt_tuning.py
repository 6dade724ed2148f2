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
fill ``n``) or ``random`` (uniform +-0.5). ``options.num_tokens`` sets ``n`` (default: ``r``).
"""

from __future__ import annotations

import torch
from torch import nn

from vlmtune.adapters.inject import TOWER_CHECKS, register_tower_method
from vlmtune.core.adapter_spec import AdapterSpec
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


def initial_prompt(embedding: nn.Embedding, n: int, spec: AdapterSpec) -> torch.Tensor:
    how = spec.options.get("init", "vocab")
    w = embedding.weight.detach()
    gen = torch.Generator().manual_seed(int(spec.options.get("seed", 0)))
    if how == "random":
        return (torch.rand(n, w.shape[1], generator=gen) - 0.5).to(w)
    if how == "vocab":
        ids = torch.randint(0, min(w.shape[0], 5000), (n,), generator=gen)  # Lester: 5000 most common
        return w[ids.to(w.device)].clone()
    if how == "text":
        ids = list(spec.options.get("init_token_ids") or [])
        if not ids or any(not 0 <= int(i) < w.shape[0] for i in ids):
            raise AdapterError(
                "prompt tuning: options.init=text needs options.init_token_ids, token ids in "
                f"[0, {w.shape[0]}) (e.g. the tokenized class labels)"
            )
        ids = (ids * (n // len(ids) + 1))[:n]
        return w[torch.tensor(ids, device=w.device)].clone()
    raise AdapterError(f"prompt tuning: options.init must be vocab, text or random, got '{how}'")


def attach_prompt(model: nn.Module, tower: nn.Module, spec: AdapterSpec, name: str) -> None:
    decoder = find_decoder(tower)
    if decoder is None or hasattr(decoder, "soft_prompt"):
        return  # e.g. LLaVA's lm_head prefix; check_attached raises if no prefix had a decoder
    n = int(spec.options.get("num_tokens", spec.r))
    if n <= 0:
        raise AdapterError(f"adapters.{name}.options.num_tokens must be > 0, got {n}")
    prompt = SoftPrompt(initial_prompt(decoder.get_input_embeddings(), n, spec))
    decoder.soft_prompt = prompt
    decoder.register_forward_pre_hook(prompt.pre_hook, with_kwargs=True)
    decoder.register_forward_hook(prompt.post_hook, with_kwargs=True)


def check_attached(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> None:
    if not any(isinstance(m, SoftPrompt) for p in prefixes for m in model.get_submodule(p).modules()):
        raise AdapterError(
            f"adapters.{tower}.method=prompt: no decoder with token embeddings and layers under {prefixes}; "
            "prompt tuning is for the language tower"
        )


register_tower_method("prompt", attach_prompt)
TOWER_CHECKS["prompt"] = check_attached
