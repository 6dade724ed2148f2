"""Prompt tuning in the registry: typed options, the tower hook and its check.

Options: ``length`` (int >= 1, soft tokens n; default: the spec's ``r``, kept for recipes written
before), ``init`` (vocab | text | random), ``init_token_ids`` (list of token ids, for ``init: text``),
``seed`` (int, of the init draw; default 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlmtune.adapters.method import Method, option
from vlmtune.adapters.prompt_tuning.layer import SoftPrompt, find_decoder
from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.errors import AdapterError


@dataclass
class PromptOptions:
    length: int | None = option(None, min=1, doc="number of soft tokens (default: r)")
    init: Literal["vocab", "text", "random"] = option("vocab", doc="how the prompt starts")
    init_token_ids: list[int] = option([], min=0, doc="token ids for init: text")
    seed: int = option(0, doc="seed of the init draw")


def initial_prompt(embedding: nn.Embedding, n: int, options: PromptOptions) -> torch.Tensor:
    """(n, d) initial prompt: random vocabulary embeddings, the given tokens' embeddings or uniform noise."""
    w = embedding.weight.detach()
    gen = torch.Generator().manual_seed(options.seed)
    if options.init == "random":
        return (torch.rand(n, w.shape[1], generator=gen) - 0.5).to(w)
    if options.init == "vocab":
        ids = torch.randint(0, min(w.shape[0], 5000), (n,), generator=gen)  # Lester: 5000 most common
        return w[ids.to(w.device)].clone()
    ids = options.init_token_ids
    if not ids or any(not 0 <= i < w.shape[0] for i in ids):
        raise AdapterError(
            "prompt tuning: options.init=text needs options.init_token_ids, token ids in "
            f"[0, {w.shape[0]}) (e.g. the tokenized class labels)"
        )
    ids = (ids * (n // len(ids) + 1))[:n]
    return w[torch.tensor(ids, device=w.device)].clone()


def attach_prompt(
    model: nn.Module, tower: nn.Module, spec: AdapterSpec, options: PromptOptions, name: str
) -> None:
    decoder = find_decoder(tower)
    if decoder is None or hasattr(decoder, "soft_prompt"):
        return  # e.g. LLaVA's lm_head prefix; check_attached raises if no prefix had a decoder
    n = spec.r if options.length is None else options.length
    prompt = SoftPrompt(initial_prompt(decoder.get_input_embeddings(), n, options))
    decoder.soft_prompt = prompt
    decoder.register_forward_pre_hook(prompt.pre_hook, with_kwargs=True)
    decoder.register_forward_hook(prompt.post_hook, with_kwargs=True)


def check_attached(model: nn.Module, prefixes: list[str], spec: AdapterSpec, tower: str) -> None:
    if not any(isinstance(m, SoftPrompt) for p in prefixes for m in model.get_submodule(p).modules()):
        raise AdapterError(
            f"adapters.{tower}.method=prompt: no decoder with token embeddings and layers under {prefixes}; "
            "prompt tuning is for the language tower"
        )


METHOD = Method(
    name="prompt",
    kind="tower",
    label="prompt",
    options=PromptOptions,
    hook=attach_prompt,
    check=check_attached,
    size_option="length",
)
