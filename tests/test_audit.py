"""Placement and gradient audit (vlmtune.train.audit): a detached adapter is named, a trainable
parameter outside the adapted towers is refused, checkpointing on both towers passes."""

from __future__ import annotations

import pytest
import torch

from vlmtune.adapters import attach
from vlmtune.adapters.attach import adapter_layers
from vlmtune.core.config import load_config
from vlmtune.core.errors import AdapterError
from vlmtune.data.records import load_records
from vlmtune.models import build_pipeline
from vlmtune.train.audit import check_placement, dead_adapter_tensors, tower_inputs_require_grad
from vlmtune.train.trainer import Trainer, seed_everything

VISION_LORA = ["adapters.vision.method=lora", "adapters.vision.r=4", "adapters.vision.targets=[q,v]"]


@pytest.fixture(scope="module")
def records(shapes_cache) -> list[dict]:
    return load_records("shapes:vqa", split="train", n_images=4, cache_dir=shapes_cache)


def make(model_dir, *overrides: str):
    cfg = load_config("llava-dora", [f"model.name_or_path={model_dir}", "adapters.language.r=4",
                                     "adapters.language.alpha=8", "train.batch_size=4", "train.max_steps=1",
                                     "train.eval_at_start=false", *overrides])  # fmt: skip
    seed_everything(0)
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    return cfg, pipe


def detach_one(pipe) -> str:
    """Bypass one language adapter: its tensors get no gradient."""
    path, layer = next((p, m) for p, m in adapter_layers(pipe.model) if "language_model" in p)
    layer.forward = layer.base_layer.forward
    return path


def test_detached_adapter_is_named(model_dir, records, tmp_path, capsys) -> None:
    cfg, pipe = make(model_dir)
    path = detach_one(pipe)
    with pytest.raises(AdapterError) as err:
        Trainer(pipe, cfg, records, tmp_path / "run").fit()
    msg = str(err.value)
    assert "\n" not in msg and f"{path}.lora_A" in msg and "allow_dead_adapters" in msg, msg
    assert msg.startswith("3 adapter tensor(s)"), msg  # DoRA: lora_A, lora_B, magnitude
    assert "adapted modules:" in capsys.readouterr().out


def test_allow_dead_adapters_goes_on(model_dir, records, tmp_path, capsys) -> None:
    cfg, pipe = make(model_dir, "train.allow_dead_adapters=true")
    detach_one(pipe)
    assert Trainer(pipe, cfg, records, tmp_path / "run").fit()["step"] == 1
    assert "warning: 3 dead adapter tensor(s)" in capsys.readouterr().out


def test_placement_table_and_trainable_outside_towers(model_dir, records, tmp_path, capsys) -> None:
    cfg, pipe = make(model_dir)
    Trainer(pipe, cfg, records, tmp_path / "ok").fit()
    out = capsys.readouterr().out
    assert (
        "  language   dora    down_proj x1, gate_proj x1, k_proj x1, o_proj x1, q_proj x1, up_proj x1, v_proj x1"
        in out
    )
    assert "  vision     frozen  -" in out
    cfg, pipe = make(model_dir)
    name, p = next((n, p) for n, p in pipe.model.named_parameters() if n.startswith("model.vision_tower."))
    p.requires_grad_(True)
    with pytest.raises(
        AdapterError, match=rf"1 trainable parameter\(s\) outside the adapted towers: {name};"
    ):
        Trainer(pipe, cfg, records, tmp_path / "bad").fit()


def test_lora_a_zero_gradient_on_step_one_is_not_dead(model_dir, records) -> None:
    _cfg, pipe = make(model_dir, "adapters.language.method=lora")
    pipe.model.train()
    pipe.loss(pipe.collate(records[:2])).backward()
    a = [m.lora_A.weight.grad for _, m in adapter_layers(pipe.model)]
    assert all(g is not None and not g.any() for g in a)  # B = 0: dL/dA = 0 exactly
    assert dead_adapter_tensors(pipe.model) == ([], True)


def test_checkpointing_on_both_towers_passes(model_dir, records, tmp_path) -> None:
    cfg, pipe = make(model_dir, "model.gradient_checkpointing=true", *VISION_LORA)
    assert Trainer(pipe, cfg, records, tmp_path / "run").fit()["step"] == 1


@pytest.mark.parametrize("hook", [False, True])
def test_reentrant_checkpointing_needs_vision_inputs_with_grad(model_dir, records, hook) -> None:
    """Reentrant checkpointing without transformers' own input hooks (``activation_checkpointing_enable``
    adds them on the towers' input embeddings; a tower without ``get_input_embeddings`` gets none):
    the vision adapters get no gradient unless :func:`tower_inputs_require_grad` marks the encoder inputs."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    _cfg, pipe = make(model_dir, *VISION_LORA)
    pipe.model._set_gradient_checkpointing(
        enable=True, gradient_checkpointing_func=partial(checkpoint, use_reentrant=True)
    )
    if hook:
        tower_inputs_require_grad(pipe.model, pipe.towers["vision"])
    pipe.model.train()
    with torch.no_grad():  # non-zero B so every adapter tensor gets a non-zero gradient when reached
        for _, m in adapter_layers(pipe.model):
            m.lora_B.weight.normal_(0, 0.01)
    pipe.loss(pipe.collate(records[:2])).backward()
    dead, conclusive = dead_adapter_tensors(pipe.model)
    assert conclusive
    if hook:
        assert dead == []
    else:
        assert dead and all("vision_tower" in name for name in dead), dead


def test_all_zero_gradients_everywhere_wait_for_the_next_step() -> None:
    """A zero-initialised head zeroes every adapter gradient on step 1: not conclusive, nothing named;
    a missing gradient is named at once."""
    from torch import nn

    from vlmtune.adapters import AdapterSpec

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    attach(model, {"vision": ["0"], "projector": ["1"]}, {"vision": AdapterSpec(method="dora", r=2, targets=["0"]),
                                                         "projector": AdapterSpec(method="full")})  # fmt: skip
    nn.init.zeros_(model[1].weight)
    model(torch.randn(3, 4)).sum().backward()
    assert dead_adapter_tensors(model) == ([], False)
    model[0].lora_A.weight.grad = None
    assert dead_adapter_tensors(model) == (["0.lora_A.weight"], False)


@pytest.mark.parametrize(
    ("method", "listed"),
    [("houlsby", "down_proj x1, gate_proj x1, k_proj x1, o_proj x1, q_proj x1, up_proj x1, v_proj x1"),
     ("prompt", "soft_prompt x1")],
)  # fmt: skip
def test_placement_lists_where_tower_methods_put_their_modules(model_dir, method, listed) -> None:
    """Bottleneck adapters and soft prompts are listed at the modules they wrap / the decoder they sit
    on, not as the tower's prefixes (``language_model x1, lm_head x1``)."""
    cfg, pipe = make(model_dir, f"adapters.language.method={method}", "adapters.language.alpha=null")
    table = check_placement(pipe.model, pipe.towers, cfg.adapters.specs())
    line = next(row for row in table.splitlines() if row.strip().startswith("language"))
    assert line.split()[1] == method and f"{method:<7} {listed}   (prefixes:" in line, line
