"""Prompt tuning (Lester et al.): soft tokens prepended inside the decoder, outputs keep their length."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlmtune.adapters import AdapterError, AdapterSpec, SoftPrompt, attach, load_adapter, merge, save_adapter

TOWERS = {"language": ["model", "lm_head"]}
N = 3


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def prompted(**options) -> LlamaForCausalLM:
    model = tiny_llama()
    attach(model, TOWERS, {"language": AdapterSpec(method="prompt", options={"length": N, **options})})
    return model


def test_only_prompt_trains_and_logits_keep_length() -> None:
    model = prompted()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.soft_prompt.prompt"]
    ids = torch.randint(1, 50, (2, 5))
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 5, 50)
    out.loss.backward()
    assert model.model.soft_prompt.prompt.grad.abs().sum() > 0


def test_equals_prepending_embeddings_by_hand() -> None:
    model = prompted(init="random")
    ref = tiny_llama()
    prompt = model.model.soft_prompt.prompt.detach()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0  # left padding
    got = model(input_ids=ids, attention_mask=mask).logits
    embeds = torch.cat([prompt.expand(2, -1, -1), ref.model.embed_tokens(ids)], dim=1)
    full_mask = torch.cat([torch.ones(2, N, dtype=torch.long), mask], dim=1)
    expected = ref(inputs_embeds=embeds, attention_mask=full_mask).logits[:, N:]
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 2:], expected[0, 2:], rtol=1e-5, atol=1e-5)
    assert (got - ref(input_ids=ids, attention_mask=mask).logits).abs().max() > 1e-4


def test_cached_generation_matches_uncached() -> None:
    model = prompted(init="random")
    ids = torch.randint(1, 50, (2, 4))
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with_cache = model.generate(input_ids=ids, use_cache=True, **kw)
    without = model.generate(input_ids=ids, use_cache=False, **kw)
    assert with_cache.shape == (2, 10)
    assert torch.equal(with_cache, without)


def test_init_from_label_tokens_and_save_load(tmp_path) -> None:
    model = prompted(init="text", init_token_ids=[7, 9])
    emb = model.model.embed_tokens.weight
    torch.testing.assert_close(model.model.soft_prompt.prompt.detach(), emb[[7, 9, 7]].detach())
    with torch.no_grad():
        model.model.soft_prompt.prompt.normal_()
    ids = torch.randint(1, 50, (1, 6))
    expected = model(input_ids=ids).logits
    spec = AdapterSpec(method="prompt", options={"length": N})
    save_adapter(model, tmp_path / "a", specs={"language": spec})
    fresh = load_adapter(tiny_llama(), tmp_path / "a", towers=TOWERS)
    assert isinstance(fresh.model.soft_prompt, SoftPrompt)
    torch.testing.assert_close(fresh(input_ids=ids).logits, expected)
    with pytest.raises(AdapterError, match="cannot be merged"):
        merge(fresh)


def test_bad_init_is_one_line_error() -> None:
    with pytest.raises(AdapterError, match="init_token_ids"):
        prompted(init="text")
