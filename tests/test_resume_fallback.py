"""--resume skips a newest checkpoint that cannot be read and says which one it resumes from."""

from __future__ import annotations

import pytest
from toy_models import llava_run

from vlmtune.core.config import ConfigError, load_config
from vlmtune.data.records import load_records
from vlmtune.train.checkpoint import checkpoint_dirs
from vlmtune.train.command import _resolve_resume
from vlmtune.train.trainer import Trainer


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(model_dir, shapes_cache, tmp_path, capsys):
    records = load_records("shapes:vqa", split="train", n_images=2, cache_dir=shapes_cache)[:8]
    cfg, pipe = llava_run(
        f"model.name_or_path={model_dir}", "train.max_steps=4", "train.batch_size=2", "train.save_every=2",
        "train.keep_last=3", "adapters.language.r=4", "adapters.language.alpha=8",
    )  # fmt: skip
    run = tmp_path / "run"
    Trainer(pipe, cfg, records, run, quiet=True).fit()
    older, newest = checkpoint_dirs(run)[-2:]
    weights = newest / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as by a full disk

    assert _resolve_resume(str(run), cfg) == (run, older)
    out = capsys.readouterr().out
    assert f"{newest.name} cannot be read" in out and f"resuming from {older.name}" in out

    weights = older / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for ckpt in checkpoint_dirs(run)[:-2]:
        (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="no checkpoint of .* can be read"):
        _resolve_resume(str(run), cfg)


def test_resume_with_another_config_is_one_line_naming_the_keys(tmp_path):
    import yaml

    from vlmtune.core.config import to_dict

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config("llava-dora"))))
    assert (
        _resolve_resume(str(run), load_config("llava-dora", ["train.max_steps=800"]))[0] == run
    )  # longer: fine
    with pytest.raises(ConfigError) as err:
        _resolve_resume(str(run), load_config("llava-dora", ["train.lr=5e-4", "adapters.language.r=16"]))
    message = str(err.value)
    assert (
        "\n" not in message
        and "adapters.language.r (8 -> 16)" in message
        and "train.lr (0.001 -> 0.0005)" in message
    )
    with pytest.raises(ConfigError, match=r"recipe \('llava-dora' -> 'llava-lora'\)"):
        _resolve_resume(str(run), load_config("llava-lora"))
