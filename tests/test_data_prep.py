"""data_prep scripts on hand-made files in each official format, then `vlmtune eval --predictions` on the output."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlmtune import cli
from vlmtune.data.records import read_jsonl

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "official"


def script(name: str):
    """Import data_prep/<name>.py the way it runs as a script."""
    spec = importlib.util.spec_from_file_location(f"_prep_{name}", REPO / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prep(name: str, argv: list[str], capsys) -> tuple[list[dict], str]:
    assert script(name).main(argv) == 0
    out = capsys.readouterr().out
    path = Path(argv[argv.index("--out") + 1])
    return [json.loads(line) for line in path.read_text().splitlines()], out


def evaluate(bench: str, data: Path, predictions: list[dict], tmp_path: Path, *extra: str) -> dict:
    pred_file = tmp_path / f"{bench}_predictions.jsonl"
    pred_file.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    out = tmp_path / f"{bench}_eval"
    argv = ["eval", bench, "--predictions", str(pred_file), "--data", str(data), "--out", str(out), *extra]
    assert cli.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_vqav2_prep_then_eval(tmp_path, capsys):
    out = tmp_path / "vqav2.jsonl"
    records, log = prep(
        "prep_vqav2",
        [str(FIXTURES / "v2_OpenEnded_mscoco_val2014_questions.json"), "--annotations",
         str(FIXTURES / "v2_mscoco_val2014_annotations.json"), "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert "wrote 4 records" in log and "1 x empty question (e.g. 393226000)" in log
    r = records[1]
    assert r["id"] == "vqav2-262148001" and r["task"] == "vqa" and len(r["answers"]) == 10
    assert r["image"] == "val2014/COCO_val2014_000000262148.jpg" and r["answer_type"] == "number"
    assert r["meta"]["question_id"] == 262148001 and r["meta"]["question_type"] == "how many"
    assert len(read_jsonl(out)) == 4  # valid for the record reader
    # official results format keyed by question_id against the prepared JSONL
    results = json.loads((FIXTURES / "vqav2_results.json").read_text())
    m = evaluate("vqav2", out, results, tmp_path)
    assert m["accuracy"] == 62.5 and m["per_answer_type"] == {"number": 60.0, "other": 45.0, "yes/no": 100.0}


def test_vqav2_testdev_has_no_answers(tmp_path, capsys):
    out = tmp_path / "td.jsonl"
    records, _ = prep(
        "prep_vqav2",
        [str(FIXTURES / "v2_OpenEnded_mscoco_test-dev2015_questions.json"), "--out", str(out)],
        capsys,
    )
    assert records == [{"id": "vqav2-1000", "task": "vqa", "image": "test2015/COCO_test2015_000000000001.jpg",
                        "question": "What is it?", "meta": {"question_id": 1000, "image_id": 1, "split": "test-dev2015"}}]  # fmt: skip
    m = evaluate("vqav2", out, [{"question_id": 1000, "answer": "Two"}], tmp_path)
    assert m["scored"] is False
    assert json.loads((tmp_path / "vqav2_eval" / "submission.json").read_text()) == [
        {"question_id": 1000, "answer": "2"}
    ]
    # the upload as LLaVA's convert_vqav2_for_submission.py writes it: every test2015 question, in the
    # questions file's order, '' where unanswered
    test2015 = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    test2015.write_text(json.dumps({"data_subtype": "test2015", "questions": [
        {"question_id": q, "image_id": 1, "question": "?"} for q in (999, 1000, 1001)]}))  # fmt: skip
    module, upload = script("pad_vqav2_submission"), tmp_path / "upload.json"
    argv = [str(tmp_path / "vqav2_eval" / "submission.json"), str(test2015), "--out", str(upload)]
    assert module.run(module.main, argv) == 0
    assert "wrote 3 entries" in capsys.readouterr().out
    assert json.loads(upload.read_text()) == [
        {"question_id": 999, "answer": ""}, {"question_id": 1000, "answer": "2"}, {"question_id": 1001, "answer": ""}
    ]  # fmt: skip
    assert module.run(module.main, argv) == 2  # the upload exists: not overwritten
    assert "exists" in capsys.readouterr().err
    argv[1] = str(FIXTURES / "v2_OpenEnded_mscoco_val2014_questions.json")
    argv[-1] = str(tmp_path / "upload2.json")
    assert module.run(module.main, argv) == 2  # question 1000 is not in that file
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 answered question(s) are not in it (first: 1000)" in err


def test_gqa_prep_then_eval(tmp_path, capsys):
    out = tmp_path / "gqa.jsonl"
    records, log = prep(
        "prep_gqa", [str(FIXTURES / "testdev_balanced_questions.json"), "--out", str(out)], capsys
    )
    assert [r["answer"] for r in records] == ["no", "woman", "yes"]
    assert (
        records[0]["image"] == "images/n161313.jpg" and records[0]["meta"]["types"]["structural"] == "verify"
    )
    assert "no 'answer'" in log
    preds = [{"question_id": "201307251", "text": "No."}, {"question_id": "201640614", "text": "Woman"},
             {"id": "gqa-202225914", "prediction": "no"}]  # fmt: skip
    m = evaluate("gqa", out, preds, tmp_path)
    assert m["accuracy"] == pytest.approx(66.67) and m["per_structural_type"] == {
        "query": 100.0,
        "verify": 50.0,
    }


def test_coco_captions_prep_then_eval(tmp_path, capsys):
    out = tmp_path / "coco.jsonl"
    records, log = prep(
        "prep_coco_captions",
        [str(FIXTURES / "dataset_coco.json"), "--split", "test", "--out", str(out)],
        capsys,
    )
    assert [r["id"] for r in records] == ["coco-391895", "coco-522418"]
    assert records[0]["image"] == "val2014/COCO_val2014_000000391895.jpg" and len(records[0]["captions"]) == 3
    assert "image without captions" in log
    train, _ = prep(
        "prep_coco_captions",
        [str(FIXTURES / "dataset_coco.json"), "--split", "train", "--out", str(tmp_path / "t.jsonl")],
        capsys,
    )
    assert [r["id"] for r in train] == ["coco-57870"]
    # official COCO results format: [{"image_id", "caption"}]
    preds = [{"image_id": 391895, "caption": "A man riding a bike down a dirt road."},
             {"image_id": 522418, "caption": "a woman cutting a large cake"}]  # fmt: skip
    m = evaluate(
        "coco-caption",
        out,
        preds,
        tmp_path,
        "--caption-metrics",
        "bleu,rouge,cider",
        "--caption-tokenizer",
        "simple",
    )
    assert m["BLEU-1"] == 100.0 and m["count"] == 2 and m["CIDEr"] > 0


def test_pope_prep_then_eval(tmp_path, capsys):
    out = tmp_path / "pope.jsonl"
    records, log = prep(
        "prep_pope", [str(FIXTURES / "coco_pope_adversarial.json"), "--out", str(out)], capsys
    )
    assert [r["answer"] for r in records] == ["yes", "no", "yes", "no"]
    assert records[0]["id"] == "pope-adversarial-1" and records[0]["meta"]["category"] == "adversarial"
    assert "label is not yes/no (e.g. coco_pope_adversarial.json:5)" in log
    # LLaVA answer-file format: {"question_id", "text"}
    preds = [{"question_id": 1, "text": "Yes, there is."}, {"question_id": 2, "text": "No"},
             {"question_id": 3, "text": "There is no car."}, {"question_id": 4, "text": "yes"}]  # fmt: skip
    m = evaluate("pope", out, preds, tmp_path)
    assert (m["accuracy"], m["precision"], m["recall"], m["yes_ratio"]) == (50.0, 50.0, 50.0, 50.0)
    assert m["per_category"]["adversarial"]["f1"] == 50.0


def test_scienceqa_prep_then_eval(tmp_path, capsys):
    out = tmp_path / "sqa.jsonl"
    argv = [str(FIXTURES / "problems.json"), str(FIXTURES / "pid_splits.json"), "--out", str(out)]
    records, log = prep("prep_scienceqa", argv, capsys)
    assert [r["answer"] for r in records] == ["A", "A"] and records[0]["task"] == "mcq"
    assert "image" not in records[0] and records[1]["image"] == "images/test/2/image.png"
    assert "answer index out of range" in log and "pid not in problems.json" in log
    img_only, _ = prep("prep_scienceqa", argv[:-1] + [str(tmp_path / "img.jsonl"), "--image-only"], capsys)
    assert [r["id"] for r in img_only] == ["scienceqa-2"]
    preds = [
        {"id": "scienceqa-1", "prediction": "B"},
        {"id": "scienceqa-2", "prediction": "A. West Virginia"},
    ]
    m = evaluate("scienceqa", out, preds, tmp_path)
    assert m["accuracy"] == 50.0 and m["per_group"]["IMG"] == 100.0 and m["per_group"]["LAN"] == 0.0


def test_scienceqa_llava_answers_file_matches_by_pid(tmp_path, capsys):
    out = tmp_path / "sqa.jsonl"
    argv = [str(FIXTURES / "problems.json"), str(FIXTURES / "pid_splits.json"), "--out", str(out)]
    records, _ = prep("prep_scienceqa", argv, capsys)
    assert [r["meta"]["question_id"] for r in records] == ["1", "2"]
    # LLaVA's model_vqa_science.py answers file: question_id = the ScienceQA pid (as eval_science_qa.py keys it)
    answers = [{"question_id": "2", "prompt": "<image>\n...", "text": "A"}, {"question_id": "1", "text": "B"}]
    m = evaluate("scienceqa", out, answers, tmp_path)
    assert (m["accuracy"], m["count"], m["per_group"]["IMG"]) == (50.0, 2, 100.0)


def test_scienceqa_prompt_is_llava_format(tmp_path, capsys):
    from vlmtune.eval.benchmarks import get_benchmark

    out = tmp_path / "sqa.jsonl"
    records, _ = prep(
        "prep_scienceqa",
        [str(FIXTURES / "problems.json"), str(FIXTURES / "pid_splits.json"), "--out", str(out)],
        capsys,
    )
    assert get_benchmark("scienceqa").prompt(records[0]) == (
        "Context: Sing a song of sixpence.\nWhich figure of speech is used in this text?\nA. simile\nB. metaphor\n"
        "Answer with the option's letter from the given choices directly."
    )


def test_llava_instruct_prep(tmp_path, capsys):
    out = tmp_path / "instruct.jsonl"
    records, log = prep(
        "prep_llava_instruct", [str(FIXTURES / "llava_instruct.json"), "--out", str(out)], capsys
    )
    assert [r["id"] for r in records] == ["llava-000000033471", "llava-000000052846", "llava-text-only-1"]
    assert records[0]["task"] == "conversation" and len(records[0]["conversations"]) == 4
    assert "image" not in records[2] and "text-only conversations: 1" in log
    assert "turns do not alternate" in log and "exactly one <image> token" in log
    assert len(read_jsonl(out)) == 3


def test_check_images_and_relative_paths(tmp_path, capsys):
    images = tmp_path / "coco" / "val2014"
    images.mkdir(parents=True)
    (images / "COCO_val2014_000000310196.jpg").write_bytes(b"x")
    out = tmp_path / "data" / "pope.jsonl"
    argv = [
        str(FIXTURES / "coco_pope_adversarial.json"),
        "--images",
        str(images),
        "--check-images",
        "--out",
        str(out),
    ]
    records, log = prep("prep_pope", argv, capsys)
    assert [r["id"] for r in records] == ["pope-adversarial-1", "pope-adversarial-2"]
    assert records[0]["image"] == "../coco/val2014/COCO_val2014_000000310196.jpg"  # relative to the JSONL
    assert "2 x image file not found" in log


def test_bad_input_is_one_line_error(tmp_path):
    bad = tmp_path / "q.json"
    bad.write_text('{"questions": 3}')
    proc = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "prep_vqav2.py"), str(bad), "--out", str(tmp_path / "o.jsonl")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"prep_vqav2.py: error: {bad}: not an official VQA questions file (no 'questions' list)"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_nothing_left_is_an_error(tmp_path, capsys):
    assert (
        script("prep_gqa").main(
            [
                str(FIXTURES / "testdev_balanced_questions.json"),
                "--out",
                str(tmp_path / "g.jsonl"),
                "--check-images",
            ]
        )
        == 2
    )
    assert "no records left" in capsys.readouterr().err


def test_input_that_is_not_utf8_is_one_line_and_writes_nothing(tmp_path, capsys):
    questions = tmp_path / "coco_pope_random.json"
    questions.write_bytes(
        b'{"question_id": 1, "image": "a.jpg", "text": "Is there a \xff?", "label": "yes"}\n'
    )
    out = tmp_path / "pope.jsonl"
    module = script("prep_pope")
    assert module.run(module.main, [str(questions), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8 text" in err and str(questions) in err and len(err.splitlines()) == 1
    assert not out.exists()


BAD_RECORDS = [
    ("prep_vqav2", "vq.json", '{"data_subtype": "val2014", "questions": [{"question_id": "q-1", "image_id": 1, '
     '"question": "What?"}]}', ["questions[0]", "'question_id'", "'q-1'"]),
    ("prep_seed", "seed.json", '{"question_type": {"Scene Understanding": 1}, "questions": [{"question_id": "1", '
     '"question": "Q?", "answer": "A", "data_id": "1.jpg", "data_type": "image", "question_type_id": "scene", '
     '"choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d"}]}',
     ["questions[0]", "'question_type_id'", "'scene'"]),
    ("prep_seed", "seed.json", '{"question_type": {"Scene Understanding": "one"}, "questions": []}',
     ["question_type", "'Scene Understanding'", "'one'"]),
]  # fmt: skip


@pytest.mark.parametrize("name, filename, text, said", BAD_RECORDS)
def test_a_bad_id_field_is_one_line_naming_file_record_and_key(tmp_path, capsys, name, filename, text, said):
    src = tmp_path / filename
    src.write_text(text)
    out = tmp_path / "out.jsonl"
    module = script(name)
    assert module.run(module.main, [str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(src) in err and all(s in err for s in said), err
    assert not out.exists()


def test_mme_questions_file_not_utf8_is_one_line(tmp_path, capsys):
    task = tmp_path / "MME" / "existence"
    task.mkdir(parents=True)
    (task / "1.jpg").write_bytes(b"x")
    (task / "1.txt").write_bytes(b"Is there caf\xe9?\tYes\n")
    out = tmp_path / "mme.jsonl"
    module = script("prep_mme")
    assert module.run(module.main, [str(tmp_path / "MME"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1.txt" in err and "not UTF-8" in err, err
    assert not out.exists()


def test_seed_gold_answer_must_be_one_letter(tmp_path, capsys):
    choices = {k: k[-1] for k in ("choice_a", "choice_b", "choice_c", "choice_d")}
    questions = [
        {
            "question_id": str(i),
            "question": "Q?",
            "answer": a,
            "data_id": "1.jpg",
            "question_type_id": 1,
            **choices,
        }
        for i, a in enumerate(["", "AB", "B", "e"])
    ]
    src = tmp_path / "seed.json"
    src.write_text(json.dumps({"question_type": {"Scene Understanding": 1}, "questions": questions}))
    records, log = prep("prep_seed", [str(src), "--out", str(tmp_path / "s.jsonl")], capsys)
    assert [r["answer"] for r in records] == ["B"]  # "" and "AB" are substrings of "ABCD", not letters
    assert "3 x choices or answer letter missing" in log


def _pope_file(path: Path, ids: list[int]) -> Path:
    path.write_text("".join(
        json.dumps({"question_id": q, "image": f"{k}.jpg", "text": "Is there a dog?", "label": "yes"}) + "\n"
        for k, q in enumerate(ids)
    ))  # fmt: skip
    return path


def test_pope_repeated_question_id_in_one_file_and_shared_category_are_told_apart(tmp_path, capsys):
    module = script("prep_pope")
    out = tmp_path / "pope.jsonl"
    one = _pope_file(tmp_path / "coco_pope_random.json", [1, 1])
    assert module.run(module.main, [str(one), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{one}:2" in err and "repeats line 1" in err, err
    (tmp_path / "b").mkdir()
    other = _pope_file(tmp_path / "b" / "coco_pope_random.json", [1])
    ok = _pope_file(one, [1, 2])
    assert module.run(module.main, [str(ok), str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "category 'random'" in err and "two files share a category" in err
    assert f"{other}:1" in err and f"is also at {ok}:1" in err, err
    assert not out.exists()
