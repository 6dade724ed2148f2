"""The fine-tune workflow's RNG contract (vlmtune/recipes/finetune.py): seed -> build -> [between] ->
[reseed] -> attach, so that with ``reseed`` the adapter's initialisation does not depend on what ran before
it (the base evaluation of ``vlmtune train``), and without it the presets' builders keep their RNG order."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from vlmtune.core.config import load_config
from vlmtune.recipes import seeded_pipeline


def _build(cfg):
    """A one-layer "model" whose construction draws from the global RNG, like a randomly initialised head."""
    model = nn.Module()
    model.tower = nn.Module()
    model.tower.q_proj = nn.Linear(8, 8)
    return SimpleNamespace(model=model, towers={"language": ["tower"]})


def _lora_a(**kwargs) -> torch.Tensor:
    cfg = load_config("llava-lora", ["adapters.language.targets=[q_proj]", "adapters.language.r=2",
                                     "adapters.projector.method=frozen"])  # fmt: skip
    pipe = seeded_pipeline(cfg, _build, **kwargs)
    return pipe.model.tower.q_proj.lora_A.weight.detach().clone()


def test_reseed_makes_the_adapter_init_independent_of_what_ran_before_attach():
    def eat_rng(pipe):
        torch.rand(1000)  # e.g. a base evaluation that draws random numbers

    assert torch.equal(_lora_a(reseed=True), _lora_a(reseed=True, between=eat_rng))
    assert not torch.equal(_lora_a(reseed=False), _lora_a(reseed=False, between=eat_rng))


def test_without_reseed_the_order_is_seed_build_attach():
    from vlmtune.adapters import attach
    from vlmtune.train.trainer import seed_everything

    cfg = load_config("llava-lora", ["adapters.language.targets=[q_proj]", "adapters.language.r=2",
                                     "adapters.projector.method=frozen"])  # fmt: skip
    seed_everything(cfg.train.seed)
    pipe = _build(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    assert torch.equal(_lora_a(), pipe.model.tower.q_proj.lora_A.weight)
