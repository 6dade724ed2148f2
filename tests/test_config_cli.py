"""Recipes, overrides and the CLI's one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlmtune.core.config import ConfigError, list_recipes, load_config


def test_overrides_are_typed() -> None:
    cfg = load_config(
        "llava-dora", ["train.lr=1e-3", "adapters.language.targets=q,v", "adapters.language.r=4"]
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.adapters.language.targets == ["q", "v"] and cfg.adapters.language.r == 4
    assert cfg.adapters.language.method == "dora" and cfg.recipe == "llava-dora"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("foo=1", "unknown config key 'foo'"),
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean lr?"),
        ("adapters.language.rank=4", "unknown config key 'adapters.language.rank'; did you mean r?"),
        ("train.lr=fast", "config key 'train.lr' must be float, got 'fast'"),
        ("train.lr=0", "config key 'train.lr' must be > 0"),
        ("adapters.language.r=0", "config key 'adapters.language.r' must be > 0"),
        ("data.on_error=ignore", "config key 'data.on_error' must be one of raise, skip"),
        ("train", "override 'train' must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("llava-dora", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_recipe_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'llava-droa'; did you mean llava-dora"):
        load_config("llava-droa")


def test_recipes_parse() -> None:
    recipes = list_recipes()
    assert "llava-dora" in recipes
    for name in recipes:
        load_config(name)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmtune", *args], capture_output=True, text=True, timeout=120
    )


def test_train_rejects_unknown_key_with_one_line() -> None:
    proc = run_cli("train", "llava-dora", "foo=1")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "foo" in lines[0] and "unknown config key" in lines[0], proc.stderr


def test_help_lists_recipes() -> None:
    for args in (["--help"], ["train", "--help"]):
        proc = run_cli(*args)
        assert proc.returncode == 0
        assert "llava-dora" in proc.stdout


def test_inherited_recipe_keeps_its_own_name(tmp_path) -> None:
    child = tmp_path / "my-dora.yaml"
    child.write_text("base: llava-dora\ntrain:\n  lr: 0.5\n")
    cfg = load_config(str(child))
    assert cfg.recipe == "my-dora" and cfg.train.lr == 0.5
    assert cfg.adapters.language.method == "dora"  # inherited


def test_overrides_may_follow_flags(capsys):
    """`vlmtune train RECIPE --flag key=value`: the override is read, not "unrecognized arguments"."""
    from vlmtune.cli import main

    assert main(["train", "llava-dora", "--quiet", "train.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unrecognized arguments" not in err and "train.bogus" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=-5", "'train.max_steps' must be >= 0 (0: no limit), got -5"),
        ("data.max_eval_samples=-1", "'data.max_eval_samples' must be >= 0 (0: no limit), got -1"),
        ("train.epochs=0", "'train.epochs' must be > 0, got 0"),
    ],
)
def test_negative_counts_are_one_line_errors(override, message, capsys, tmp_path):
    from vlmtune.cli import main

    assert main(["train", "llava-dora", override, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, value", [("--batch-size", "0"), ("--num-beams", "0"), ("--max-samples", "-1")]
)
def test_eval_count_flags_out_of_range_are_one_line_errors(flag, value, capsys):
    from vlmtune.cli import main

    assert main(["eval", "shapes-vqa", "--model", "shapes-tiny", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flag} must be >=" in err and f"got {value}" in err and len(err.splitlines()) == 1


def test_a_typo_inside_a_target_list_is_an_error_naming_it(model_dir):
    """`[q_proj, v_proj, qproj]`: q_proj and v_proj match, the typo is not silently dropped."""
    from vlmtune.adapters import attach
    from vlmtune.core.errors import AdapterError
    from vlmtune.models import build_pipeline

    cfg = load_config(
        "llava-dora", [f"model.name_or_path={model_dir}", "adapters.language.targets=[q_proj,v_proj,qproj]"]
    )
    pipe = build_pipeline(cfg)
    with pytest.raises(
        AdapterError,
        match=r"adapters.language.targets: 'qproj' matches no linear layer .* did you mean q_proj",
    ):
        attach(pipe.model, pipe.towers, cfg.adapters.specs())


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "shapes-vqa", "--predictions", "{bad}"],
        ["train", "{png}"],
    ],
)
def test_files_that_are_not_utf8_text_are_one_line_errors(argv, tmp_path, capsys):
    from PIL import Image

    from vlmtune.cli import main

    png, bad = tmp_path / "picture.png", tmp_path / "answers.jsonl"
    Image.new("RGB", (4, 4)).save(png)
    bad.write_bytes(b'{"id": "a", "prediction": "\\xff\\xfe"}\n'.replace(b"\\xff\\xfe", b"\xff\xfe"))
    assert main([a.format(png=png, bad=bad) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8 text" in err and len(err.splitlines()) == 1


def test_info_on_an_image_says_what_info_takes(tmp_path, capsys):
    from PIL import Image

    from vlmtune.cli import main

    png = tmp_path / "picture.png"
    Image.new("RGB", (4, 4)).save(png)
    assert main(["info", str(png)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vlmtune info: error: {png} is not a recipe (.yaml), a run folder or an adapter folder; "
        "`vlmtune info` with no argument lists the recipes"
    )


def test_a_run_folder_in_use_cannot_be_claimed_twice(tmp_path):
    """While a run holds its folder (core.io.claim, as `vlmtune train` does), a second claim is a one-line
    error naming the holder's pid; the lock file goes with the run."""
    import os

    from vlmtune.core.io import LOCK_NAME, claim

    run = tmp_path / "run"
    with claim(run):
        assert (run / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(ConfigError, match=rf"run is in use by another vlmtune run \(pid {os.getpid()}\)"):
            with claim(run):
                pass
    assert not (run / LOCK_NAME).exists()
    with claim(run):  # free again
        pass


OUT_OF_RANGE = [
    ("train.log_every=0", "'train.log_every' must be > 0, got 0"),
    ("train.keep_last=0", "'train.keep_last' must be > 0, got 0"),
    ("train.keep_last=-1", "'train.keep_last' must be > 0, got -1"),
    ("train.save_every=-1", "'train.save_every' must be >= 0 (0: only at the end), got -1"),
    ("train.warmup_ratio=2", "'train.warmup_ratio' must be in [0, 1], got 2.0"),
    ("train.max_grad_norm=-1", "'train.max_grad_norm' must be >= 0 (0: no clipping), got -1.0"),
    ("train.seed=-1", "'train.seed' must be in [0, 4294967295], got -1"),
    ("train.projector_lr=-1e-4", "'train.projector_lr' must be >= 0 (0: same as train.lr), got -0.0001"),
    ("train.weight_decay=-0.1", "'train.weight_decay' must be >= 0, got -0.1"),
    ("train.num_processes=0", "'train.num_processes' must be > 0, got 0"),
    ("eval.max_new_tokens=0", "'eval.max_new_tokens' must be > 0, got 0"),
    ("eval.num_beams=0", "'eval.num_beams' must be > 0, got 0"),
    ("eval.batch_size=0", "'eval.batch_size' must be > 0, got 0"),
    ("data.shapes_size=0", "'data.shapes_size' must be > 0, got 0"),
    ("data.num_workers=-1", "'data.num_workers' must be >= 0"),
    ("model.visual_tokens=0", "'model.visual_tokens' must be > 0, got 0"),
    ("train.lr=.nan", "config key 'train.lr' must be float, got nan"),
    ("train.epochs=.inf", "config key 'train.epochs' must be float, got inf"),
    ("train.max_steps=.inf", "config key 'train.max_steps' must be int, got inf"),
    ("data.task_batch_sizes.vqa=0", "config key 'data.task_batch_sizes.vqa' must be an int > 0, got 0"),
    ("data.task_batch_sizes.vqa=big", "config key 'data.task_batch_sizes.vqa' must be an int > 0, got 'big'"),
]


@pytest.mark.parametrize("override, message", OUT_OF_RANGE)
def test_out_of_range_values_are_refused_at_load_time(override, message, capsys, tmp_path):
    """Values that used to crash later (log_every=0: ZeroDivisionError in the loop; max_new_tokens=0:
    a transformers traceback after training) or were taken silently (keep_last=-1): exit 2, one line,
    no run folder."""
    from vlmtune.cli import main

    assert main(["train", "llava-dora", override, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override",
    ["train.save_every=0", "train.max_grad_norm=0", "train.warmup_ratio=1", "train.warmup_ratio=0",
     "train.keep_last=1", "train.projector_lr=0", "data.num_workers=null", "model.num_classes=0"],
)  # fmt: skip
def test_boundary_values_are_accepted(override):
    load_config("llava-dora", [override])


def test_every_numeric_key_has_a_range():
    """No int/float key of the model/data/train/eval sections escapes the range check."""
    import dataclasses
    import typing

    from vlmtune.core.config import RANGES, RunConfig

    numeric = set()
    for section in ("model", "data", "train", "eval"):
        cls = typing.get_type_hints(RunConfig)[section]
        for name, tp in typing.get_type_hints(cls).items():
            if {tp, *typing.get_args(tp)} & {int, float} and name in {
                f.name for f in dataclasses.fields(cls)
            }:
                numeric.add(f"{section}.{name}")
    assert numeric - set(RANGES) == set()
    assert set(RANGES) - numeric == set()


@pytest.mark.parametrize(
    "override",
    ["adapters.language.targets=[q,v", "train.lr={", 'data.train="abc'],
)
@pytest.mark.parametrize("command", ["train", "info"])
def test_malformed_override_value_is_one_line_error(override, command, capsys, tmp_path):
    """A value YAML cannot parse names the override and what is wrong (exit 2), not a yaml traceback."""
    from vlmtune.cli import main

    extra = ["--output-dir", str(tmp_path / "run")] if command == "train" else []
    assert main([command, "llava-lora", override, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"override '{override}'" in err and "not valid YAML" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["adapters.language.method=lroa", "adapters.vision.method=vpt2"])
def test_info_refuses_what_train_refuses_before_the_model_loads(override, capsys, tmp_path):
    """`vlmtune info` runs train's method checks: the same one line, exit 2, instead of printing the config."""
    from vlmtune.cli import main

    assert main(["train", "llava-lora", override, "--output-dir", str(tmp_path / "run")]) == 2
    train_err = capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["info", "llava-lora", override]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.strip().removeprefix("vlmtune info: ") == train_err.removeprefix("vlmtune train: ")
    assert override.partition("=")[2] in err
