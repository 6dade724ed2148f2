"""Run folders you can trust (issue 21): the base's identity is recorded and checked, every adapter file is
checked before use, merge never writes into a non-empty folder, a full disk keeps the previous checkpoint."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from toy_models import write_vqa_records

from vlmtune import cli
from vlmtune.core.fingerprint import weights_fingerprint
from vlmtune.presets.shapes_tiny import TEST_SIZE, write_random_llava
from vlmtune.recipes.run_folder import BASE_FILE, MANIFEST_FILE


def snapshot(folder: Path) -> dict[str, int]:
    """{relative path: size} of every file under ``folder``: what "nothing changed" compares."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


RUN_ARGS = ("data.eval=", "train.max_steps=2", "train.batch_size=2", "adapters.language.r=4",
            "adapters.vision.method=bitfit", "adapters.vision.alpha=null")  # fmt: skip


def eval_argv(model: Path, run: Path) -> list[str]:
    """`vlmtune eval shapes-vqa --model MODEL` on the run's own training records."""
    return [
        "eval",
        "shapes-vqa",
        "--model",
        str(model),
        "--data",
        str(run.parent / "data" / "train.jsonl"),
        "--quiet",
    ]


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory) -> Path:
    """A finished 2-step llava-dora run (DoRA language + full projector + BitFit vision) on the tiny LLaVA: the
    projector goes to PEFT's modules_to_save, the vision biases (which PEFT cannot hold) to the extras file."""
    root = tmp_path_factory.mktemp("trust")
    data = write_vqa_records(root / "data", 4)
    out = root / "run"
    argv = ["train", "llava-dora", f"model.name_or_path={model_dir}", f"data.train={data}", *RUN_ARGS,
            "--output-dir", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, model_dir) -> Path:
    """A base of the same shapes as the run's, with other weights (another seed)."""
    folder = write_random_llava(tmp_path_factory.mktemp("other") / "llava", TEST_SIZE, seed=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):  # the run's tokenizer
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, folder / name)
    return folder


def test_the_run_folder_records_the_base_identity(run, model_dir):
    from vlmtune.models import build_pipeline
    from vlmtune.recipes.run_folder import run_config

    recorded = json.loads((run / BASE_FILE).read_text())
    assert recorded["name_or_path"] == str(model_dir)
    assert recorded["config_sha256"].startswith("sha256:")
    base = build_pipeline(run_config(run)).model  # rebuilt from config.yaml, no adapter
    assert recorded["weights_fingerprint"] == weights_fingerprint(base)
    from vlmtune.adapters import read_base_info

    assert read_base_info(run / "adapter") == recorded  # the adapter folder carries it out of the run
    manifest = json.loads((run / MANIFEST_FILE).read_text())
    assert set(manifest) >= {
        "adapter_model.safetensors",
        "trainable_extras.safetensors",
        "adapter_config.json",
    }


def test_fingerprint_sees_one_changed_value_and_a_changed_dtype():
    model = nn.Sequential(nn.Linear(300, 300), nn.Linear(300, 2))
    before = weights_fingerprint(model)
    assert weights_fingerprint(model) == before  # deterministic
    saved = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.view(-1)[0] += 1.0  # the first element is always sampled
    assert weights_fingerprint(model) != before
    with torch.no_grad():
        model[0].weight.copy_(saved)
    assert weights_fingerprint(model) == before
    assert weights_fingerprint(model.to(torch.float64)) != before


def test_merge_onto_another_base_is_refused_unless_forced(run, other_base, tmp_path, capsys):
    out = tmp_path / "merged"
    assert cli.main(["merge", str(run), str(out), "--base", str(other_base)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"the base model '{other_base}' (trained on " in err
    assert "weights fingerprint differs" in err and "--force" in err
    assert not out.exists()
    assert cli.main(["merge", str(run), str(out), "--base", str(other_base), "--force"]) == 0
    assert (out / "config.json").is_file()


def test_eval_on_a_base_whose_weights_changed_is_refused_unless_forced(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    recorded = json.loads((copy / BASE_FILE).read_text())
    (copy / BASE_FILE).write_text(json.dumps({**recorded, "weights_fingerprint": "sha256:0"}))
    before = snapshot(copy)
    argv = eval_argv(copy, run)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has other weights than the one this adapter was trained on" in err
    assert snapshot(copy) == before  # no eval/ written
    assert cli.main([*argv, "--force"]) == 0


def test_a_missing_trainable_extras_file_is_one_line_not_the_base_weights(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "adapter" / "trainable_extras.safetensors").unlink()
    before = snapshot(copy)
    argv = eval_argv(copy, run)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"vlmtune eval: error: {copy / 'adapter' / 'trainable_extras.safetensors'} is missing: the adapter needs it "
        "(without it the base's own weights would be used silently); copy the whole adapter folder or retrain"
    )
    assert snapshot(copy) == before
    # a bare adapter folder (no run manifest) whose vlmtune_adapter.json lists tensors not in PEFT: the same check
    bare = tmp_path / "adapter"
    shutil.copytree(copy / "adapter", bare)
    assert cli.main(["merge", str(bare), str(tmp_path / "m"), "--base", str(run.parent / "x")]) == 2
    assert "trainable_extras.safetensors is missing" in capsys.readouterr().err


def test_a_truncated_adapter_file_is_one_line(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = copy / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert cli.main(["merge", str(copy), str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{weights} is 100 bytes, it was written with" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "trainable_extras.safetensors"])
def test_a_truncated_file_in_a_bare_adapter_folder_is_one_line_for_info_eval_and_merge(
    run, tmp_path, capsys, name
):
    """No run manifest to compare sizes with (a copied-out or older adapter folder): reading it says so."""
    bare = tmp_path / "adapter"
    shutil.copytree(run / "adapter", bare)
    weights = bare / name
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    evaluate = [*eval_argv(bare, run), "--out", str(tmp_path / "e")]
    for argv in (["info", str(bare)], evaluate, ["merge", str(bare), str(tmp_path / "m")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{weights}: not a readable safetensors file" in err, err
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_merge_refuses_a_non_empty_output_folder_even_the_run_folder(run, tmp_path, capsys):
    before = snapshot(run)
    assert cli.main(["merge", str(run), str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{run} is not empty" in err and "--overwrite" in err
    assert snapshot(run) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert cli.main(["merge", str(run), str(busy)]) == 2
    assert snapshot(busy) == {"keep.txt": 4}


def _adapter_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].requires_grad_(False)
    return model


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import vlmtune.adapters.peft_io as peft_io
    from vlmtune import cli as cli_module
    from vlmtune.train.checkpoint import DiskFullError, checkpoint_dirs, load_checkpoint, save_checkpoint

    model = _adapter_model()
    first = save_checkpoint(tmp_path, 1, model, {"step": 1})
    before = snapshot(tmp_path)
    monkeypatch.setattr(peft_io, "atomic_write_safetensors", _disk_full)
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(tmp_path, 2, model, {"step": 2})
    message = str(e.value)
    assert len(message.splitlines()) == 1 and isinstance(e.value, cli_module.user_error_types())
    assert f"disk full while saving into {tmp_path / 'checkpoints'}: needs about 240 bytes" in message
    assert "the previous checkpoint step-000001 is kept" in message
    assert checkpoint_dirs(tmp_path) == [first] and snapshot(tmp_path) == before  # no torn folder left
    assert load_checkpoint(first, _adapter_model())["step"] == 1


def test_a_full_disk_while_saving_the_final_adapter_keeps_the_old_one(tmp_path, monkeypatch):
    import vlmtune.adapters.peft_io as peft_io
    from vlmtune.train.checkpoint import DiskFullError, save_final_adapter

    save_final_adapter(_adapter_model(), tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(peft_io, "atomic_write_safetensors", _disk_full)
    with pytest.raises(DiskFullError, match=rf"disk full while saving into {tmp_path}: needs about 80 bytes"):
        save_final_adapter(_adapter_model(), tmp_path)
    assert snapshot(tmp_path) == before


def test_a_finished_run_resumes_with_its_own_config(run, model_dir, tmp_path, capsys):
    """config.yaml keeps the config as given (`targets: [default]`), so --resume with the same command passes
    the config check although building the pipeline filled the targets in."""
    import yaml

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert yaml.safe_load((copy / "config.yaml").read_text())["adapters"]["language"]["targets"] == [
        "default"
    ]
    data = run.parent / "data" / "train.jsonl"
    argv = ["train", "llava-dora", f"model.name_or_path={model_dir}", f"data.train={data}", *RUN_ARGS,
            "--resume", str(copy), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err  # 2 with "was trained with another config" otherwise


def test_eval_with_a_missing_image_stops_before_generating_and_writes_nothing(run, tmp_path, capsys):
    data = write_vqa_records(tmp_path / "data", 301, missing={288})
    out = tmp_path / "eval"
    argv = ["eval", "shapes-vqa", "--model", str(run), "--data", str(data), "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[1].strip() == f"image not found: 1 record(s): 'rec-288' ({tmp_path / 'data' / 'gone.png'})"
    assert not out.exists()
