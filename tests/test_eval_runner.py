"""The eval runner and `vlmtune eval` on hand-made official files, with a fake pipeline."""

import json
from pathlib import Path

import pytest
import torch

from vlmtune import cli
from vlmtune.eval import EvalError, get_benchmark, register, run_benchmark, score_predictions
from vlmtune.eval.benchmarks import BENCHMARKS, Benchmark, first_line
from vlmtune.eval.command import vqav2_official_records
from vlmtune.eval.runner import read_predictions

FIXTURES = Path(__file__).parent / "fixtures" / "official"
QUESTIONS = FIXTURES / "vqav2_eval_questions.json"
ANNOTATIONS = FIXTURES / "vqav2_eval_annotations.json"
RESULTS = FIXTURES / "vqav2_results.json"
# per question id: what the fake model says (= the official results fixture)
ANSWERS = {r["question_id"]: r["answer"] for r in json.loads(RESULTS.read_text())}


class FakePipeline:
    """Pipeline API stand-in: answers from a table keyed by the record's official question id."""

    name = "fake"
    towers: dict = {}

    def __init__(self, answers: dict, suffix: str = ""):
        self.answers = answers
        self.suffix = suffix  # e.g. "\nextra line": what a model that rambles past its answer adds
        self.model = torch.nn.Linear(1, 1)
        self.calls: list[dict] = []

    def collate(self, records, train=True):
        assert not train
        self.calls.append(
            {"n": len(records), "prompts": [r["prompt"] for r in records], "mode": self.model.training}
        )
        return {"ids": [r["id"] for r in records], "keys": [r.get("meta", {}).get("question_id") for r in records],
                "x": torch.zeros(len(records), 1)}  # fmt: skip

    def generate(self, batch, max_new_tokens=16, num_beams=1):
        self.last = {"max_new_tokens": max_new_tokens, "num_beams": num_beams}
        return [
            self.answers.get(k, self.answers.get(i, "")) + self.suffix
            for k, i in zip(batch["keys"], batch["ids"])
        ]


@pytest.fixture
def vqa_records():
    return vqav2_official_records(str(QUESTIONS), str(ANNOTATIONS), None)


def test_run_benchmark_vqav2_writes_outputs(tmp_path, vqa_records):
    pipe = FakePipeline(ANSWERS)
    pipe.model.train()
    m = run_benchmark(
        pipe, "vqav2", vqa_records, tmp_path, batch_size=3, max_new_tokens=7, num_beams=2, progress=False
    )
    # yes. -> 1.0, Two (2 of 10 said 2) -> 0.6, a dog (3 of 10) -> 0.9, skiing -> 0
    assert m["accuracy"] == 62.5
    assert m["per_answer_type"] == {"number": 60.0, "other": 45.0, "yes/no": 100.0}
    assert m["count"] == 4 and m["benchmark"] == "vqav2"
    assert [c["n"] for c in pipe.calls] == [3, 1]
    assert all(c["mode"] is False for c in pipe.calls) and pipe.model.training  # eval mode, then restored
    assert pipe.last == {"max_new_tokens": 7, "num_beams": 2}
    assert (
        pipe.calls[0]["prompts"][0]
        == "Is there a dog in the picture?\nAnswer the question using a single word or phrase."
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert (
        rows[1]["id"] == "vqav2-262148001" and rows[1]["prediction"] == "Two" and rows[1]["answers"][0] == "2"
    )
    assert rows[1]["question_id"] == 262148001 and rows[1]["accuracy"] == pytest.approx(0.6)
    sub = json.loads((tmp_path / "submission.json").read_text())
    assert sub[:2] == [{"question_id": 262148000, "answer": "yes"}, {"question_id": 262148001, "answer": "2"}]


def test_batched_equals_one_at_a_time(tmp_path, vqa_records):
    a = run_benchmark(
        FakePipeline(ANSWERS), "vqav2", vqa_records, tmp_path / "a", batch_size=16, progress=False
    )
    b = run_benchmark(
        FakePipeline(ANSWERS), "vqav2", vqa_records, tmp_path / "b", batch_size=1, progress=False
    )
    assert a == b
    assert (tmp_path / "a" / "predictions.jsonl").read_text() == (
        tmp_path / "b" / "predictions.jsonl"
    ).read_text()


def test_score_predictions_matches_generation(tmp_path, vqa_records):
    generated = run_benchmark(FakePipeline(ANSWERS), "vqav2", vqa_records, None, progress=False)
    scored = score_predictions("vqav2", read_predictions(RESULTS), vqa_records, tmp_path)
    assert scored == generated
    # our own predictions.jsonl scores the same way again
    run_benchmark(FakePipeline(ANSWERS), "vqav2", vqa_records, tmp_path / "gen", progress=False)
    again = score_predictions("vqav2", read_predictions(tmp_path / "gen" / "predictions.jsonl"), vqa_records)
    assert again == generated


def test_score_predictions_errors(tmp_path, vqa_records):
    preds = read_predictions(RESULTS)
    with pytest.raises(EvalError, match=r"no prediction for 1 of 4 records \(first: 'vqav2-393225001'\)"):
        score_predictions("vqav2", preds[:3], vqa_records)
    with pytest.raises(EvalError, match="repeats the prediction"):
        score_predictions("vqav2", preds + preds[:1], vqa_records)
    with pytest.raises(EvalError, match="matches no record"):
        score_predictions("vqav2", preds + [{"question_id": 7, "answer": "x"}], vqa_records)
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "prediction": "x"}\n{"id": \n')
    with pytest.raises(EvalError, match=r"p.jsonl:2: not valid JSON"):
        read_predictions(bad)
    bad.write_text('[{"question_id": 1}]')
    with pytest.raises(EvalError, match="none of the answer keys"):
        read_predictions(bad)


def test_unknown_benchmark_suggests():
    with pytest.raises(EvalError, match="did you mean vqav2"):
        get_benchmark("vqa2")


def test_register_a_benchmark():
    bench = Benchmark(
        "nlvr2-test", "nlvr", lambda r: r["question"], first_line, lambda r: {"answer": r["answer"]},
        lambda rows: {"accuracy": 100.0 * sum(r["prediction"] == r["answer"] for r in rows) / len(rows)},
    )  # fmt: skip
    register(bench)
    try:
        with pytest.raises(EvalError, match="already registered"):
            register(bench)
        recs = [{"id": "1", "task": "nlvr", "question": "q", "answer": "true"}]
        m = run_benchmark(FakePipeline({"1": "true"}), "nlvr2-test", recs, None, progress=False)
        assert m["accuracy"] == 100.0
    finally:
        BENCHMARKS.pop("nlvr2-test")


def test_testdev_without_answers_writes_submission_only(tmp_path):
    records = vqav2_official_records(
        str(FIXTURES / "v2_OpenEnded_mscoco_test-dev2015_questions.json"), None, "/x"
    )
    assert records[0]["image"] == "/x/test2015/COCO_test2015_000000000001.jpg"
    m = run_benchmark(FakePipeline({1000: "Two"}), "vqav2", records, tmp_path, progress=False)
    assert m["scored"] is False and m["count"] == 1
    assert json.loads((tmp_path / "submission.json").read_text()) == [{"question_id": 1000, "answer": "2"}]


# ---------------------------------------------------------------- the CLI
def test_cli_vqav2_predictions_official_files(tmp_path, capsys):
    rc = cli.main(["eval", "vqav2", "--predictions", str(RESULTS), "--questions", str(QUESTIONS),
                   "--annotations", str(ANNOTATIONS), "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "vqav2: accuracy 62.50" in out
    assert "per answer type: number 60.00 | other 45.00 | yes/no 100.00" in out
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["accuracy"] == 62.5 and m["per_answer_type"]["yes/no"] == 100.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "vqa2", "--predictions", "x"], "unknown benchmark 'vqa2'; did you mean vqav2"),
        (["eval", "vqav2"], "exactly one of --model"),
        (["eval", "gqa", "--predictions", str(RESULTS)], "no data: give --data FILE"),
        (["eval", "vqav2", "--predictions", "nope.json", "--questions", str(QUESTIONS)], "nope.json does not exist"),
        (["eval", "vqav2", "--predictions", str(RESULTS), "--questions", str(QUESTIONS), "--annotations",
          str(FIXTURES / "v2_mscoco_val2014_annotations.json")], "is not in"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("vlmtune eval: error:")


def test_cli_model_path_with_fake_pipeline(tmp_path, capsys, monkeypatch):
    import vlmtune.eval.command as command

    data = tmp_path / "vqa.jsonl"
    from PIL import Image

    with data.open("w") as f:
        for r in vqav2_official_records(str(QUESTIONS), str(ANNOTATIONS), str(tmp_path)):
            f.write(json.dumps(r) + "\n")
            Path(r["image"]).parent.mkdir(parents=True, exist_ok=True)  # the eval preflight opens every image
            Image.new("RGB", (4, 4)).save(r["image"])
    pipe = FakePipeline(ANSWERS)
    monkeypatch.setattr(command, "load_model", lambda model, force=False, base=None: (pipe, None, None))
    rc = cli.main(["eval", "vqav2", "--model", "fake", "--data", str(data), "--out", str(tmp_path / "o"),
                   "--batch-size", "2", "--quiet"])  # fmt: skip
    assert rc == 0
    assert "vqav2: accuracy 62.50" in capsys.readouterr().out
    assert [c["n"] for c in pipe.calls] == [2, 2] and pipe.last == {"max_new_tokens": 16, "num_beams": 1}
    assert (tmp_path / "o" / "submission.json").is_file()


def test_prediction_ids_match_by_kind_and_ambiguity_is_an_error():
    records = [
        {"id": "pope-random-1", "task": "vqa", "question": "q", "answer": "yes", "meta": {"question_id": 1, "category": "random"}},
        {"id": "pope-popular-1", "task": "vqa", "question": "q", "answer": "no", "meta": {"question_id": 1, "category": "popular"}},
    ]  # fmt: skip
    with pytest.raises(EvalError, match="question_id '1' matches 2 records"):
        score_predictions(
            "pope", [{"question_id": 1, "text": "yes"}, {"question_id": 1, "text": "no"}], records
        )
    m = score_predictions(
        "pope", [{"id": "pope-random-1", "text": "yes"}, {"id": "pope-popular-1", "text": "yes"}], records
    )
    assert m["accuracy"] == 50.0 and m["per_category"]["random"]["accuracy"] == 100.0
    # an image id is not a question id
    vqa = [
        {
            "id": "v",
            "task": "vqa",
            "question": "q",
            "answers": ["a"],
            "meta": {"question_id": 5, "image_id": 7},
        }
    ]
    with pytest.raises(EvalError, match="question_id '7' matches no record"):
        score_predictions("vqav2", [{"question_id": 7, "answer": "a"}], vqa)


def test_describe_prints_headline_split_and_secondary_metrics():
    from vlmtune.train.evaluate import describe

    vqa = {"accuracy": 44.58, "per_answer_type": {"yes/no": 54.0, "number": 0.0, "other": 56.8}, "count": 500}
    assert describe(vqa) == "accuracy 44.58 (number 0.0, other 56.8, yes/no 54.0)"
    multi = {"accuracy": 81.0, "CIDEr": 2.3456, "count": 10}
    assert describe(multi) == "accuracy 81.00  CIDEr 2.346"
    assert describe({"count": 3}) == "no metric"


def test_vqav2_scores_the_whole_answer_officially_first_line_leniently(vqa_records):
    # the fake model rambles: "Yes.\nextra line" etc. vqaEval turns the newline into a space, so the
    # official answer is "yes extra line" (matches nobody: 0 on every question); lenient keeps the first
    # line: yes -> 1.0, Two -> 0.6, a dog -> 0.9, skiing -> 0 = 62.5
    pipe = FakePipeline(ANSWERS, suffix="\nextra line")
    official = run_benchmark(pipe, "vqav2", vqa_records, None, progress=False)
    lenient = run_benchmark(
        pipe, "vqav2", vqa_records, None, progress=False, score_options={"scoring": "lenient"}
    )
    assert official["accuracy"] == 0.0 and official["scoring"] == "official"
    assert lenient["accuracy"] == 62.5 and lenient["scoring"] == "lenient"
