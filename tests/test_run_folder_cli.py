"""Run folders used from anywhere (round-3 user report): merge and eval read a run whose data paths were typed
relative to another directory, ``vlmtune eval RUN`` evaluates the run's own benchmark, eval never overwrites
earlier results and records what it evaluated, ``--base`` for a moved base, one line for bad counts and for
``vlmtune info`` on a folder it cannot describe."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from toy_models import write_vqa_records

from vlmtune import cli
from vlmtune.recipes.run_folder import BASE_FILE, DATA_FILE

RUN_ARGS = ("train.max_steps=1", "train.batch_size=2", "adapters.language.r=4", "eval.max_new_tokens=2",
            "train.eval_at_start=false", "train.eval_at_end=false")  # fmt: skip


@contextmanager
def cwd(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory) -> Path:
    """A 1-step llava-lora run trained in ``work/`` with relative ``model.name_or_path``, ``data.train`` /
    ``data.eval`` / ``data.image_root`` (as a user types them); the run folder lies elsewhere."""
    root = tmp_path_factory.mktemp("portable")
    work = root / "work"
    write_vqa_records(work / "data", 4)
    (work / "base").symlink_to(model_dir, target_is_directory=True)  # the base typed relative too
    out = root / "runs" / "run"
    argv = ["train", "llava-lora", "model.name_or_path=base", "data.train=data/train.jsonl",
            "data.eval=data/train.jsonl", "data.image_root=data", *RUN_ARGS, "--output-dir", str(out), "--quiet"]  # fmt: skip
    with cwd(work):
        assert cli.main(argv) == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_relative_base_folder_is_recorded_absolute(run):
    """Round-6 report: ``model.name_or_path=../qwen2_vl`` was recorded as typed (config.yaml, base_model.json,
    the adapter's base), so eval, merge, resume and peft failed from any other directory."""
    base = str(run.parent.parent / "work" / "base")
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name_or_path"] == base
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == base


def test_the_run_records_its_data_paths_absolute_and_keeps_what_was_typed(run):
    work = run.parent.parent / "work"
    recorded = json.loads((run / DATA_FILE).read_text())
    assert recorded == {
        "cwd": str(work),
        "data.train": str(work / "data" / "train.jsonl"),
        "data.eval": str(work / "data" / "train.jsonl"),
        "data.image_root": str(work / "data"),
    }
    typed = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (typed["train"], typed["eval"], typed["image_root"]) == (
        "data/train.jsonl",
        "data/train.jsonl",
        "data",
    )


def test_merge_and_eval_from_another_directory(run, tmp_path, capsys):
    with cwd(tmp_path):
        assert cli.main(["merge", str(run), str(tmp_path / "merged")]) == 0
        assert (tmp_path / "merged" / "config.json").is_file()
        # the run alone: its own benchmark (eval.benchmark) on its data.eval, found through data_paths.json
        assert cli.main(["eval", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "shapes-vqa: accuracy" in out and "(4 examples)" in out  # --quiet keeps the results
    metrics = json.loads((run / "eval" / "shapes-vqa" / "metrics.json").read_text())
    assert metrics["source"]["data"] == str(run.parent.parent / "work" / "data" / "train.jsonl")


def test_a_run_copied_without_its_data_merges_and_evaluates_with_data(run, tmp_path, capsys):
    copy = tmp_path / "copied"
    shutil.copytree(run, copy)
    (copy / DATA_FILE).unlink(
        missing_ok=True
    )  # as a run written before data_paths.json, moved to another machine
    with cwd(tmp_path):
        assert cli.main(["merge", str(copy), str(tmp_path / "merged")]) == 0
        capsys.readouterr()
        assert cli.main(["eval", "shapes-vqa", "--model", str(copy), "--quiet"]) == 2
        err = one_error_line(capsys)
        assert "the run's data.eval 'data/train.jsonl'" in err and "give --data FILE" in err
        data = run.parent.parent / "work" / "data"
        argv = ["eval", "shapes-vqa", "--model", str(copy), "--data", str(data / "train.jsonl"), "--quiet"]
        assert cli.main(argv) == 0


def test_eval_never_overwrites_and_records_the_model_and_data(run, model_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = str(run.parent.parent / "work" / "data" / "train.jsonl")
    for _ in range(2):
        assert cli.main(["eval", "shapes-vqa", "--model", str(copy), "--data", data, "--quiet"]) == 0
    first, second = copy / "eval" / "shapes-vqa", copy / "eval" / "shapes-vqa-2"
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()
    source = json.loads((second / "metrics.json").read_text())["source"]
    recorded = json.loads((copy / BASE_FILE).read_text())
    assert source["model"] == str(copy.resolve()) and source["data"] == data
    assert source["base"]["weights_fingerprint"] == recorded["weights_fingerprint"]
    assert source["base"]["used"] == str(run.parent.parent / "work" / "base")  # typed relative, recorded absolute
    with cwd(tmp_path):  # a plain model folder: runs/eval/<BENCH>, then -2
        for _ in range(2):
            assert cli.main(["eval", "shapes-vqa", "--model", str(model_dir), "--data", data, "--quiet"]) == 0
    plain = json.loads((tmp_path / "runs" / "eval" / "shapes-vqa-2" / "metrics.json").read_text())["source"]
    assert plain["model"] == str(model_dir.resolve())
    assert plain["base"]["name_or_path"] == str(model_dir) and plain["base"]["weights_fingerprint"]
    assert (tmp_path / "runs" / "eval" / "shapes-vqa" / "metrics.json").is_file()


def test_eval_and_merge_on_a_run_whose_base_moved_take_base(run, model_dir, tmp_path, capsys):
    moved = tmp_path / "moved-base"
    shutil.copytree(model_dir, moved)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["name_or_path"] = str(tmp_path / "gone")
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    data = str(run.parent.parent / "work" / "data" / "train.jsonl")
    argv = ["eval", "shapes-vqa", "--model", str(copy), "--data", data, "--quiet"]
    assert cli.main(argv) == 2
    assert "no such folder" in (err := one_error_line(capsys)) and "pass --base FOLDER" in err
    assert cli.main(["merge", str(copy), str(tmp_path / "m")]) == 2
    assert "pass --base FOLDER" in one_error_line(capsys)
    assert cli.main([*argv, "--base", str(moved)]) == 0
    assert (
        cli.main(["eval", "shapes-vqa", "--model", str(model_dir), "--data", data, "--base", str(moved)]) == 2
    )
    assert "--base replaces the base of a run or adapter folder" in one_error_line(capsys)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_new_tokens_below_one_is_one_line(value, tmp_path, capsys):
    argv = ["eval", "shapes-vqa", "--model", str(tmp_path / "nothing-loaded"), "--max-new-tokens", value]
    assert cli.main(argv) == 2
    assert (
        one_error_line(capsys) == f"vlmtune eval: error: --max-new-tokens must be >= 1 (a count), got {value}"
    )


def test_info_describes_a_model_folder_and_refuses_other_folders(model_dir, tmp_path, capsys):
    assert cli.main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"model folder {model_dir}: LlavaForConditionalGeneration (model_type 'llava')" in out
    assert "language   prefixes model.language_model, lm_head" in out
    assert f"vlmtune info llava-dora model.name_or_path={model_dir}" in out
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG")
    for folder in (tmp_path / "empty", images):
        folder.mkdir(exist_ok=True)
        assert cli.main(["info", str(folder)]) == 2
        assert one_error_line(capsys) == (
            f"vlmtune info: error: {folder} is not a recipe (.yaml), a run folder or an adapter folder; "
            "`vlmtune info` with no argument lists the recipes"
        )


def test_quiet_help_says_what_it_hides(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "no progress bars and no messages" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "no progress bars (the results still print)" in " ".join(capsys.readouterr().out.split())


def test_info_shows_rank_and_alpha_only_where_the_method_has_them(tmp_path):
    """``full`` has no rank, VeRA/DVoRA no alpha, LoRA's unset alpha is the default it trains with."""
    from vlmtune.info import describe_adapter

    specs = {
        "language": {"method": "dvora", "r": 8, "alpha": None},
        "vision": {"method": "lora", "r": 4, "alpha": None},
        "projector": {"method": "full", "r": 8, "alpha": None},
        "prompts": {"method": "vpt", "r": 8, "alpha": None},
        "adapters": {"method": "houlsby", "r": 16, "alpha": None},
    }
    (tmp_path / "vlmtune_adapter.json").write_text(json.dumps({"specs": specs}))
    lines = describe_adapter(tmp_path).splitlines()[2:]
    assert lines == [
        "  language: dvora r=8",
        "  vision: lora r=4 alpha=16",
        "  projector: full",
        "  prompts: vpt length=10",
        "  adapters: houlsby width=16",
    ]


def test_info_names_sizes_that_are_not_ranks_and_the_lora_variants(tmp_path):
    """The bottleneck's ``width`` and the prompts' ``length`` (not ``r``), DyLoRA's ``max_rank``; ``rslora`` and
    ``magnitude_only`` when set (new-user report 5, item 6)."""
    from vlmtune.info import describe_adapter

    specs = {
        "a": {"method": "houlsby", "r": 4, "alpha": None, "options": {"width": 16}},
        "b": {"method": "prompt", "r": 8, "alpha": None, "options": {"length": 5}},
        "c": {"method": "prompt", "r": 8, "alpha": None},  # length falls back to r
        "d": {"method": "vpt", "r": 8, "alpha": None, "options": {"length": 3, "deep": True}},
        "e": {"method": "lora", "r": 4, "alpha": 8, "rslora": True},
        "f": {"method": "dora", "r": 4, "alpha": 8, "magnitude_only": ["o_proj", "down_proj"]},
        "g": {"method": "dylora", "r": 4, "alpha": 8, "options": {"max_rank": 6}},
    }
    (tmp_path / "vlmtune_adapter.json").write_text(json.dumps({"specs": specs}))
    assert describe_adapter(tmp_path).splitlines()[2:] == [
        "  a: houlsby width=16",
        "  b: prompt length=5",
        "  c: prompt length=8",
        "  d: vpt length=3",
        "  e: lora r=4 alpha=8 rslora",
        "  f: dora r=4 alpha=8 magnitude_only=[o_proj, down_proj]",
        "  g: dylora max_rank=6 alpha=8",
    ]


def test_quiet_train_prints_nothing_also_for_records_without_ids(model_dir, tmp_path, capsys, caplog):
    """Round-6 report: --quiet ("errors only") still printed the data reader's note on records without an id."""
    vqa = write_vqa_records(tmp_path / "data", 4)
    records = [json.loads(line) for line in vqa.read_text().splitlines()]
    data = tmp_path / "data" / "llava.json"  # LLaVA conversations without "id": named by file and index
    data.write_text(json.dumps([
        {"image": r["image"], "conversations": [{"from": "human", "value": f"<image>\n{r['question']}"},
                                                {"from": "gpt", "value": r["answer"]}]} for r in records]))  # fmt: skip
    argv = ["train", "llava-lora", f"model.name_or_path={model_dir}", f"data.train={data}", f"data.eval={data}",
            f"data.image_root={data.parent}", *RUN_ARGS, "--output-dir", str(tmp_path / "run")]  # fmt: skip
    assert cli.main([*argv, "--quiet"]) == 0
    assert capsys.readouterr().err == "" and "have no 'id'" not in caplog.text
    assert cli.main([*argv[:-1], str(tmp_path / "run2")]) == 0  # without --quiet the note is said again
    assert "have no 'id'" in caplog.text
