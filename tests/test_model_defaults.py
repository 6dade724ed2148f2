"""The recipes' per-model settings (``model_defaults``): the embedded default trains a small share."""

from __future__ import annotations

import pytest

from vlmtune.core.config import ConfigError, applied_model_defaults, load_config


def test_shapes_tiny_gets_the_recipes_small_rank_and_real_checkpoints_keep_r128():
    tiny = load_config("llava-dora")
    assert (tiny.adapters.language.r, tiny.adapters.language.alpha, tiny.train.lr) == (8, 16.0, 1e-3)
    assert applied_model_defaults(tiny) == "adapters.language.r=8, adapters.language.alpha=16, train.lr=0.001"
    real = load_config("llava-dora", ["model.name_or_path=llava-hf/llava-1.5-7b-hf"])
    assert (real.adapters.language.r, real.adapters.language.alpha, real.train.lr) == (128, 256.0, 2e-4)
    assert applied_model_defaults(real) == ""


def test_a_typed_key_wins_over_the_recipes_model_default():
    cfg = load_config("llava-lora", ["adapters.language.r=32", "train.lr=5e-4"])
    assert (cfg.adapters.language.r, cfg.adapters.language.alpha, cfg.train.lr) == (32, 16.0, 5e-4)
    assert applied_model_defaults(cfg) == "adapters.language.alpha=16"


def test_a_malformed_model_defaults_entry_is_one_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("base: llava-dora\nmodel_defaults:\n  shapes-tiny: 8\n")
    with pytest.raises(ConfigError, match="model_defaults entries must be key: value mappings"):
        load_config(str(recipe))


def test_the_main_job_trains_at_most_ten_percent_of_the_base():
    """Issue 20: `vlmtune train llava-dora` on the embedded default is PEFT, not full fine-tuning."""
    from vlmtune.adapters import attach
    from vlmtune.adapters.report import param_report
    from vlmtune.presets import build_pipeline

    cfg = load_config("llava-dora")
    pipe = build_pipeline(cfg)
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    rows = {r.name: r for r in param_report(pipe.model, pipe.towers)}
    assert rows["total"].percent <= 10.0
    assert 0 < rows["language"].percent <= 10.0  # 7.24%: DoRA r=8 on q,k,v,o,gate,up,down of a 128-wide LM
    assert rows["projector"].percent == 100.0


def test_a_child_recipe_setting_a_key_wins_over_its_parents_model_default(tmp_path):
    child = tmp_path / "my-dora.yaml"
    child.write_text("base: llava-dora\ntrain:\n  lr: 0.5\n")
    cfg = load_config(str(child))
    assert (cfg.train.lr, cfg.adapters.language.r) == (0.5, 8)  # its own lr; the parent's tiny rank


def test_a_runs_saved_config_reads_back_as_trained(tmp_path):
    """config.yaml keeps the recipe's model_defaults table; reading a run back (eval, merge, analyze) must not
    apply it again over what the user typed for that run (r=4 came back as 8)."""
    from vlmtune.core.config import to_dict
    from vlmtune.recipes.run_folder import run_config
    from vlmtune.train.run import write_config

    trained = load_config("llava-dora", ["adapters.language.r=4", "train.lr=5e-4"])
    write_config(tmp_path, to_dict(trained))
    assert "model_defaults" in (tmp_path / "config.yaml").read_text()
    back = run_config(tmp_path)
    assert (back.adapters.language.r, back.adapters.language.alpha, back.train.lr) == (4, 16.0, 5e-4)
    assert to_dict(back) == to_dict(trained)
