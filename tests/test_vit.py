"""ViT classification pipeline, classification data specs, BitFit, the vit recipes and the bench table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmtune.adapters import AdapterSpec, attach, param_report
from vlmtune.core.config import load_config
from vlmtune.data.classification import class_names, digits_split_indices
from vlmtune.data.errors import DataError
from vlmtune.data.records import read_classification
from vlmtune.models.vit import ViTPipeline, load_backbone, load_vit_folder

METHODS = ("head", "full", "bitfit", "lora", "dora", "vpt-shallow", "vpt-deep")


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def scratch_pipeline(classes: int = 5) -> ViTPipeline:
    vit, preset = load_backbone("digits-tiny-scratch")
    return ViTPipeline(vit, preset, [str(i) for i in range(classes)], "digits-tiny-scratch")


def test_digits_splits_are_disjoint_deterministic_and_relabelled() -> None:
    src_train, src_test = digits_split_indices("source", "train"), digits_split_indices("source", "test")
    tgt_train, tgt_test = digits_split_indices("target", "train"), digits_split_indices("target", "test")
    parts = [src_train, src_test, tgt_train, tgt_test]
    assert sum(len(p) for p in parts) == 1797 and len(np.unique(np.concatenate(parts))) == 1797
    assert np.array_equal(src_train, digits_split_indices("source", "train"))
    records = read_classification("digits:target@train")
    assert len(records) == len(tgt_train) and {r["label"] for r in records} == set(range(5))
    assert class_names(records) == ["5", "6", "7", "8", "9"]
    with Image.open(records[0]["image"]) as im:
        assert im.size == (8, 8)
    with pytest.raises(DataError, match="domain must be one of"):
        read_classification("digits:other")


def test_imagefolder_with_split_folder(tmp_path) -> None:
    for split in ("train", "val"):
        for name, value in (("cat", 0), ("dog", 255)):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (5, 5), (value,) * 3).save(tmp_path / split / name / "a.png")
    records = read_classification(f"imagefolder:{tmp_path}@val")
    assert [(r["label"], r["meta"]["label_name"]) for r in records] == [(0, "cat"), (1, "dog")]
    assert all("/val/" in r["image"] for r in records)
    with pytest.raises(DataError, match="does not exist"):
        read_classification(f"imagefolder:{tmp_path}/missing")


def test_datasets_dataset_from_disk(tmp_path) -> None:
    import datasets

    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["a", "b"])})
    images = [Image.new("RGB", (4, 4), (i * 80, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"img": images, "y": [0, 1, 1]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    records = read_classification(f"hf:{tmp_path / 'ds'}@train")
    assert [r["label"] for r in records] == [0, 1, 1] and class_names(records) == ["a", "b"]
    with Image.open(records[1]["image"]) as im:
        assert im.getpixel((0, 0)) == (80, 0, 0)
    with pytest.raises(DataError, match="no split 'test'"):
        read_classification(f"hf:{tmp_path / 'ds'}@test")


def test_pipeline_collate_loss_generate() -> None:
    pipe = scratch_pipeline()
    records = read_classification("digits:target@test")[:6]
    batch = pipe.collate(records, train=False)
    assert batch["pixel_values"].shape == (6, 3, 8, 8) and batch["labels"].tolist() == [
        r["label"] for r in records
    ]
    # zero-initialised head: uniform predictions, loss = log(5)
    assert pipe.loss(batch).item() == pytest.approx(np.log(5), abs=1e-5)
    assert all(name in pipe.classes for name in pipe.generate(batch))


@pytest.mark.parametrize(
    "spec,expected",
    [
        (AdapterSpec(method="vpt", options={"length": 10}), {"vit.vpt.prompts": 10 * 64}),
        (AdapterSpec(method="vpt", options={"length": 10, "deep": True}), {"vit.vpt.prompts": 4 * 10 * 64}),
    ],
)
def test_vpt_on_pipeline_trains_prompts_and_named_head_only(spec: AdapterSpec, expected: dict) -> None:
    pipe = scratch_pipeline()
    attach(pipe.model, pipe.towers, {"vision": spec, "projector": AdapterSpec(method="full")})
    trainable = {n: p.numel() for n, p in pipe.model.named_parameters() if p.requires_grad}
    assert trainable == {**expected, "head.weight": 64 * 5, "head.bias": 5}
    rows = {r.name: r for r in param_report(pipe.model, pipe.towers)}
    assert rows["vision"].adapter == sum(expected.values()) and rows["vision"].total == 136_000


def test_bitfit_trains_biases_only() -> None:
    pipe = scratch_pipeline()
    attach(pipe.model, pipe.towers, {"vision": AdapterSpec(method="bitfit")})
    names = [n for n, p in pipe.model.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(".bias") for n in names)
    assert sum(p.numel() for n, p in pipe.model.named_parameters() if p.requires_grad) == 2432


def test_recipes_resolve_with_head_trained() -> None:
    for method in METHODS:
        cfg = load_config(f"vit-{method}")
        assert cfg.model.pipeline == "vit" and cfg.adapters.projector.method == "full", method
    assert load_config("vit-vpt-deep").adapters.vision.options == {"length": 50, "deep": True}


def test_shared_trainer_lowers_loss_and_merged_model_roundtrips(tmp_path) -> None:
    from vlmtune.train.trainer import Trainer, seed_everything

    torch.set_num_threads(1)
    overrides = [
        "model.name_or_path=digits-tiny-scratch",
        "train.max_steps=8",
        "train.lr=3e-3",
        "train.projector_lr=1e-2",
    ]
    cfg = load_config("vit-lora", overrides)
    seed_everything(0)
    pipe = scratch_pipeline()
    attach(pipe.model, pipe.towers, cfg.adapters.specs())
    records = read_classification("digits:target@train")[:128]
    batch = pipe.collate(records, train=True)
    before = pipe.loss(batch).item()
    Trainer(pipe, cfg, records, tmp_path / "run", quiet=True).fit()
    pipe.model.eval()
    with torch.no_grad():
        after = pipe.loss(batch).item()
        logits = pipe.logits(batch)
    assert after < before - 0.05
    pipe.save_merged(tmp_path / "merged")
    vit, _, head = load_vit_folder(tmp_path / "merged")
    reloaded = ViTPipeline(vit, pipe.preset, pipe.classes)
    reloaded.model.head.load_state_dict(head)
    reloaded.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.logits(batch), logits, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["classes"] == pipe.classes
    # `vlmtune eval --model MERGED` (and training on it) keeps the merged classifier's own head
    from vlmtune.eval.command import load_model, merged_pipeline

    assert merged_pipeline(tmp_path / "merged") == "vit"
    evaluated, _, _ = load_model(str(tmp_path / "merged"))
    evaluated.model.eval()
    assert evaluated.classes == pipe.classes
    with torch.no_grad():
        torch.testing.assert_close(evaluated.logits(batch), logits, rtol=1e-4, atol=1e-4)


def test_bench_table_format() -> None:
    from vlmtune.bench import format_table

    table = format_table(
        [{"method": "head", "trainable": 325, "percent": 0.24, "accuracy": 43.0, "seconds": 1.0}]
    )
    assert table.splitlines()[1].split() == ["head", "325", "0.24%", "43.00%", "1.0"]


@pytest.mark.slow
def test_bench_vit_adapted_methods_beat_head(tmp_path) -> None:
    from vlmtune.bench import run_vit_bench

    torch.set_num_threads(1)
    rows = {r["method"]: r for r in run_vit_bench(list(METHODS), [], say=lambda *_: None)}
    assert all(rows[m]["accuracy"] > rows["head"]["accuracy"] for m in METHODS if m != "head")


def test_classify_benchmark_through_the_runner() -> None:
    from vlmtune.eval.runner import run_benchmark

    records = read_classification("digits:target@test")[:10]
    vit, preset = load_backbone("digits-tiny-scratch")
    pipe = ViTPipeline(vit, preset, class_names(read_classification("digits:target@train")))
    m = run_benchmark(pipe, "classify", records, progress=False)
    assert m["count"] == 10 and m["accuracy"] == pytest.approx(pipe.accuracy(records))
    assert m["accuracy"] == pytest.approx(10 * sum(r["label"] == 0 for r in records))  # zero head: argmax 0


def test_eval_classify_reads_a_digits_spec_and_scores_a_run_like_training_did(tmp_path, capsys) -> None:
    """``vlmtune eval classify --data digits:target@test --model RUN`` (a generated spec, not a file)."""
    from vlmtune import cli

    torch.set_num_threads(1)
    run = tmp_path / "run"
    overrides = ["model.name_or_path=digits-tiny-scratch", "train.max_steps=3", "train.eval_at_start=false"]
    assert cli.main(["train", "vit-lora", *overrides, "--output-dir", str(run), "--quiet"]) == 0
    trained = json.loads((run / "eval.json").read_text())
    capsys.readouterr()
    argv = [
        "eval",
        "classify",
        "--data",
        "digits:target@test",
        "--model",
        str(run),
        "--out",
        str(tmp_path / "e"),
    ]
    assert cli.main([*argv, "--quiet"]) == 0
    assert "classify: accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["count"] == len(read_classification("digits:target@test")) == trained["eval_records"]
    assert metrics["accuracy"] == pytest.approx(trained["tuned"]["accuracy"])  # the same model, the same data


def write_fruit_folder(root) -> str:
    """``imagefolder:ROOT@train`` with classes apple / banana / cherry (two 8x8 images each)."""
    for value, name in enumerate(("apple", "banana", "cherry")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (value * 120, i * 50, 0)).save(root / "train" / name / f"{i}.png")
    return f"imagefolder:{root}@train"


def test_eval_and_merge_use_the_runs_classes_and_refuse_data_with_other_classes(tmp_path, capsys) -> None:
    """Round-5 report: classes were re-read from data.train at eval/merge time, so a renamed class folder
    relabelled every prediction (banana -> zebra) and an added one gave a misleading fingerprint error."""
    from vlmtune import cli
    from vlmtune.adapters.peft_io import read_base_info

    torch.set_num_threads(1)
    spec, run = write_fruit_folder(tmp_path / "if"), tmp_path / "run"
    overrides = ["model.name_or_path=digits-tiny-scratch", f"data.train={spec}", f"data.eval={spec}",
                 "train.max_steps=2", "train.batch_size=6", "train.eval_at_start=false"]  # fmt: skip
    assert cli.main(["train", "vit-head", *overrides, "--output-dir", str(run), "--quiet"]) == 0
    fruit = ["apple", "banana", "cherry"]
    assert json.loads((run / "base_model.json").read_text())["classes"] == fruit
    assert read_base_info(run / "adapter")["classes"] == fruit  # an adapter folder copied out carries them
    (tmp_path / "if" / "train" / "banana").rename(tmp_path / "if" / "train" / "zebra")
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing ['banana'], new ['zebra']" in err and "Traceback" not in err
    assert not (tmp_path / "e" / "predictions.jsonl").exists()
    (tmp_path / "if" / "train").rename(tmp_path / "if" / "train-moved")  # the folder is there, its split gone
    assert cli.main(["merge", str(run), str(tmp_path / "merged-split-gone")]) == 0
    assert json.loads((tmp_path / "merged-split-gone" / "config.json").read_text())["classes"] == fruit
    (tmp_path / "if").rename(tmp_path / "moved")  # data.train unreachable: merge uses the run's classes
    assert cli.main(["merge", str(run), str(tmp_path / "merged")]) == 0
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["classes"] == fruit


def test_a_relative_imagefolder_path_is_recorded_absolute(tmp_path) -> None:
    """data_paths.json records ``imagefolder:if@train`` typed in /w as ``imagefolder:/w/if@train`` (it kept
    the relative spec, unreachable from any other directory)."""
    from vlmtune.recipes.run_folder import absolute_data_path, reachable

    write_fruit_folder(tmp_path / "if")
    assert (
        absolute_data_path("train", "imagefolder:if@train", tmp_path)
        == f"imagefolder:{tmp_path / 'if'}@train"
    )
    assert absolute_data_path("eval", "imagefolder:if", tmp_path) == f"imagefolder:{tmp_path / 'if'}"
    assert reachable("train", f"imagefolder:{tmp_path / 'if'}@train")
    assert not reachable("train", f"imagefolder:{tmp_path / 'gone'}@train")
    assert absolute_data_path("train", "digits:target@train", tmp_path) == "digits:target@train"
