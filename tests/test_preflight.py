"""The preflight of ``vlmtune train`` (issue 21): every record, image, target and eval record checked before
the base model is loaded or evaluated; one line per problem kind, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest
from toy_models import write_vqa_records as write_records

from vlmtune import cli
from vlmtune.core.config import load_config
from vlmtune.core.errors import DataError
from vlmtune.recipes.preflight import preflight, preflight_model


def no_build(monkeypatch) -> list:
    """Replace the preset-aware builder by a spy that fails the test if the base model is ever loaded."""
    import vlmtune.presets

    built: list = []

    def spy(cfg):
        built.append(cfg)
        raise AssertionError("the preflight let the base model be loaded")

    monkeypatch.setattr(vlmtune.presets, "build_pipeline", spy)
    return built


def test_a_missing_image_stops_in_the_preflight_before_the_model_loads(tmp_path, monkeypatch, capsys):
    data = write_records(tmp_path / "data", 2000, missing={1800})
    built = no_build(monkeypatch)
    out = tmp_path / "run"
    argv = [
        "train",
        "llava-dora",
        f"data.train={data}",
        f"data.eval={data}",
        "--output-dir",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "vlmtune train: error: preflight found problems; nothing was run or written:"
    # one line per problem kind, naming the record and the file (the eval copy stops at data.max_eval_samples)
    assert [line.strip() for line in err[1:-1]] == [
        f"data.train: image not found: 1 record(s): 'rec-1800' ({tmp_path / 'data' / 'gone.png'})"
    ]
    assert built == [] and not out.exists()  # no model loaded, nothing written (not even the folder)


def test_problems_are_grouped_by_kind_with_the_first_ids_and_a_count(tmp_path):
    data = write_records(tmp_path, 50, missing={3, 7, 11, 19, 23})
    (tmp_path / "bad.png").write_bytes(b"not a png")
    lines = data.read_text().splitlines()
    lines[30] = lines[30].replace("red.png", "bad.png")
    data.write_text("\n".join(lines) + "\n")
    cfg = load_config("llava-dora", [f"data.train={data}", "data.eval="])
    with pytest.raises(DataError) as e:
        preflight(cfg, tmp_path / "run", print, progress=False)
    message = str(e.value).splitlines()
    assert message[1].strip().startswith("data.train: image not found: 5 record(s): 'rec-3' (")
    assert message[1].rstrip().endswith("(+2 more)")
    assert (
        message[2].strip()
        == f"data.train: image not readable: 1 record(s): 'rec-30' ({tmp_path / 'bad.png'})"
    )


def test_truncated_png_and_jpeg_are_caught_without_decoding_whole_images(tmp_path):
    """The first 100 bytes of a PNG, a PNG without its last chunk and half a JPEG open (the header is whole)
    but cannot be decoded: the preflight names them as unreadable; a JPEG with bytes after its end marker
    decodes, so it passes."""
    import io

    import numpy as np
    from PIL import Image

    data = write_records(tmp_path, 6)
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    Image.fromarray(pixels).save(jpeg, "JPEG")
    files = {"trunc.png": png.getvalue()[:100], "cut.png": png.getvalue()[:-12],
             "cut.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "tail.jpg": jpeg.getvalue() + b"\0junk"}  # fmt: skip
    lines = data.read_text().splitlines()
    for i, (name, content) in enumerate(files.items(), start=1):
        (tmp_path / name).write_bytes(content)
        lines[i] = lines[i].replace("red.png", name)
    data.write_text("\n".join(lines) + "\n")
    cfg = load_config("llava-dora", [f"data.train={data}", "data.eval="])
    with pytest.raises(DataError) as e:
        preflight(cfg, tmp_path / "run", print, progress=False)
    message = str(e.value).splitlines()
    assert len(message) == 3, message
    assert message[1].strip().startswith("data.train: image not readable: 3 record(s): 'rec-1' (")
    for rid, name in (("rec-1", "trunc.png"), ("rec-2", "cut.png"), ("rec-3", "cut.jpg")):
        assert f"'{rid}' ({tmp_path / name}: truncated or corrupt image data" in message[1]
    assert "rec-4" not in message[1]  # tail.jpg decodes


def test_on_error_skip_turns_record_problems_into_counts(tmp_path, capsys):
    data = write_records(tmp_path, 20, missing={4, 9})
    cfg = load_config("llava-dora", [f"data.train={data}", "data.eval=", "data.on_error=skip", "train.epochs=2",
                                     "train.max_steps=0", "train.batch_size=6"])  # fmt: skip
    checked = preflight(cfg, tmp_path / "run", print, progress=False)
    assert [r["id"] for r in checked.train] == [f"rec-{i}" for i in range(20) if i not in (4, 9)]
    assert checked.errors.count == 2 and "rec-4" in checked.errors.reasons[0]
    summary = capsys.readouterr().out
    # the summary: records, images, steps = epochs x batches, what trains
    assert "train 18 records, eval 0" in summary and "18 images opened" in summary  # the reader skipped 2
    assert (
        "6 steps = 2.00 epochs x 3 batches" in summary
        and "trains: language dora r=8, projector full" in summary  # the recipe's shapes-tiny rank
    )
    checked.write(tmp_path)
    assert json.loads((tmp_path / "data_errors.json").read_text())["skipped"] == 2


def test_eval_records_are_checked_against_the_eval_benchmark(tmp_path):
    data = write_records(tmp_path, 4)
    captions = tmp_path / "captions.jsonl"  # caption records have no question for shapes-vqa
    captions.write_text(json.dumps({"id": "cap-1", "task": "caption", "image": "red.png",
                                    "captions": ["a red circle"]}) + "\n")  # fmt: skip
    cfg = load_config("llava-dora", [f"data.train={data}", f"data.eval={captions}"])
    with pytest.raises(
        DataError,
        match=r"data.eval: eval record unusable for shapes-vqa: 1 record\(s\): 'cap-1' \(.*'question'",
    ):
        preflight(cfg, tmp_path / "run", print, progress=False)


def test_conversation_eval_data_switches_to_the_conversation_benchmark_in_the_preflight(tmp_path, capsys):
    data = write_records(tmp_path, 4)
    conversation = tmp_path / "chat.jsonl"
    conversation.write_text(json.dumps({"id": "chat-1", "task": "conversation", "image": "red.png",
                                        "conversations": [{"from": "human", "value": "<image>\nHi"},
                                                          {"from": "gpt", "value": "Hello"}]}) + "\n")  # fmt: skip
    cfg = load_config("llava-dora", [f"data.train={data}", f"data.eval={conversation}"])
    checked = preflight(cfg, tmp_path / "run", print, progress=False)
    assert cfg.eval.benchmark == "conversation" and [r["id"] for r in checked.eval] == ["chat-1"]
    assert "benchmark conversation instead of shapes-vqa" in capsys.readouterr().out


@pytest.fixture
def long_prompts(tmp_path, model_dir):
    """Records whose question is far longer than data.max_length=100 (16 image tokens): no answer token left."""
    long = "What color is the shape " + "in the middle of the picture " * 20 + "?"
    data = write_records(tmp_path / "long", 6, question=long)
    short = write_records(tmp_path / "short", 6)
    mixed = tmp_path / "short" / "mixed.jsonl"  # beside red.png
    mixed.write_text(short.read_text() + data.read_text().replace('"rec-', '"long-'))
    return data, mixed


def _pipeline(cfg):
    from vlmtune.models import build_pipeline

    return build_pipeline(cfg)


def test_prompts_too_long_for_max_length_on_every_record_stop_the_run(
    long_prompts, model_dir, tmp_path, capsys
):
    data, _ = long_prompts
    out = tmp_path / "run"
    argv = ["train", "llava-dora", f"model.name_or_path={model_dir}", f"data.train={data}", "data.eval=",
            "data.max_length=100", "--output-dir", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "data.train: all 6 records have no supervised token within data.max_length=100" in err
    assert "first: rec-0, rec-1, rec-2" in err
    assert not out.exists()


def test_some_prompts_too_long_are_named_or_skipped_with_a_count(long_prompts, model_dir, tmp_path):
    _, mixed = long_prompts
    args = [f"model.name_or_path={model_dir}", f"data.train={mixed}", "data.eval=", "data.max_length=100"]
    cfg = load_config("llava-dora", args)
    checked = preflight(cfg, tmp_path, print, progress=False)
    pipe = _pipeline(cfg)
    with pytest.raises(
        DataError, match=r"no supervised token within data.max_length=100 .*: 6 record\(s\): 'long-0'"
    ):
        preflight_model(pipe, cfg, checked, print)

    cfg.data.on_error = "skip"  # the same config (the pipeline filled its default targets in)
    checked = preflight(cfg, tmp_path, print, progress=False)
    preflight_model(pipe, cfg, checked, print)
    assert [r["id"] for r in checked.train] == [f"rec-{i}" for i in range(6)]
    assert checked.errors.count == 6 and "long-0" in checked.errors.reasons[0]


def test_a_target_typo_stops_before_the_base_evaluation(model_dir, tmp_path, monkeypatch, capsys):
    import vlmtune.train.evaluate

    data = write_records(tmp_path / "data", 4)
    evaluated: list = []
    monkeypatch.setattr(vlmtune.train.evaluate, "evaluate", lambda *a, **k: evaluated.append(a) or {})
    out = tmp_path / "run"
    argv = ["train", "llava-dora", f"model.name_or_path={model_dir}", f"data.train={data}", f"data.eval={data}",
            "adapters.language.targets=[q_proj,qproj]", "--output-dir", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "adapters.language.targets: 'qproj' matches no linear layer" in err and len(err.splitlines()) == 1
    assert evaluated == [] and not out.exists()


def test_a_misspelt_method_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    data = write_records(tmp_path / "data", 4)
    built = no_build(monkeypatch)
    out = tmp_path / "run"
    argv = ["train", "llava-dora", "adapters.language.method=dorra", f"data.train={data}",
            "--output-dir", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "vlmtune train: error: adapters.language.method='dorra' is unknown; choose one of: "
    )
    assert "dora" in err and len(err.splitlines()) == 1 and built == [] and not out.exists()


def test_steps_plan_names_a_pipeline_that_plans_its_own_batches():
    """VL-BART's per-task batches are counted by the pipeline: the preflight says so instead of a guess."""
    from vlmtune.recipes.preflight import steps_plan

    cfg = load_config("vlbart-dora")
    records = [{"id": f"r{i}", "task": "vqa" if i % 3 else "caption", "image": "x.png"} for i in range(10)]
    assert (
        steps_plan(cfg, records)
        == "steps: set by the vlbart pipeline's per-task batches (the trainer prints the plan)"
    )
