"""`vlmtune eval --compare`: paired bootstrap intervals on two prediction sets with a known difference."""

import json

import numpy as np
import pytest

from vlmtune import cli
from vlmtune.eval import score_predictions
from vlmtune.eval.compare import RESAMPLES, compare_runs, paired_bootstrap


def pope_records(n: int = 200) -> list[dict]:
    # first half "random", second half "popular"; every gold answer is "yes"
    return [
        {"id": f"p{i}", "task": "vqa", "question": "Is there a dog?", "answer": "yes",
         "meta": {"category": "random" if i < n // 2 else "popular"}}
        for i in range(n)
    ]  # fmt: skip


def write_run(path, n_right: int, records: list[dict]) -> None:
    preds = [{"id": r["id"], "text": "Yes" if i < n_right else "No"} for i, r in enumerate(records)]
    score_predictions("pope", preds, records, path / "eval" / "pope")


def test_known_difference_and_its_interval(tmp_path):
    records = pope_records()
    write_run(tmp_path / "a", 100, records)  # A: right on the 100 "random" questions only (50%)
    write_run(tmp_path / "b", 150, records)  # B: also on the first 50 "popular" ones (75%)
    table = {t["group"]: t for t in compare_runs(tmp_path / "a", tmp_path / "b")}
    overall = table["all"]
    assert (overall["n"], overall["a"], overall["b"], overall["diff"]) == (200, 50.0, 75.0, 25.0)
    # the paired differences are 50 ones and 150 zeros: the resampled mean is Binomial(200, 1/4) / 200,
    # sd = sqrt(0.25 * 0.75 / 200) = 3.06 points, so the 95% interval is about 25 +- 6
    assert 18.0 <= overall["ci_low"] <= 20.5 and 29.5 <= overall["ci_high"] <= 32.0
    # per category: random is identical (interval [0, 0]); popular 0 -> 50, sd 5 points -> about 50 +- 10
    assert (table["random"]["diff"], table["random"]["ci_low"], table["random"]["ci_high"]) == (0.0, 0.0, 0.0)
    assert table["popular"]["diff"] == 50.0 and 39.0 <= table["popular"]["ci_low"] <= 41.5
    assert 58.5 <= table["popular"]["ci_high"] <= 61.0


def test_bootstrap_is_seeded_and_paired():
    a = np.array([0.0, 1.0] * 50)
    assert paired_bootstrap(a, a) == (0.0, 0.0)  # identical runs: no difference in any resample
    b = np.array([1.0, 0.0] * 50)  # every example flips: diff is +1 / -1
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)  # same seed, same interval
    low, high = paired_bootstrap(a, b)
    assert low < 0 < high and RESAMPLES == 10_000


def test_cli_compare_prints_the_table(tmp_path, capsys):
    records = pope_records()
    write_run(tmp_path / "a", 100, records)
    write_run(tmp_path / "b", 150, records)
    assert cli.main(["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("pope") and " all " in x)
    assert "200" in line and "50.00" in line and "75.00" in line and "+25.00" in line and line.endswith("*")
    assert "10,000 paired resamples, seed 0" in out


def test_compare_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["eval", "--compare", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 2
    assert "no metrics.json + predictions.jsonl" in capsys.readouterr().err
    assert cli.main(["eval", "pope", "--compare", "a", "b"]) == 2
    assert "takes no BENCH" in capsys.readouterr().err


def test_vqa_soft_accuracy_rows(tmp_path):
    # VQA rows carry a soft accuracy per question: A scores 0.6 (2 of 10 humans), B 1.0
    records = [
        {
            "id": f"q{i}",
            "task": "vqa",
            "question": "?",
            "answers": ["2"] * 2 + ["3"] * 8,
            "answer_type": "number",
        }
        for i in range(5)
    ]
    score_predictions("vqav2", [{"id": r["id"], "answer": "2"} for r in records], records, tmp_path / "a")
    score_predictions("vqav2", [{"id": r["id"], "answer": "3"} for r in records], records, tmp_path / "b")
    table = compare_runs(tmp_path / "a", tmp_path / "b")
    assert [(t["group"], t["a"], t["b"], t["diff"]) for t in table] == [
        ("all", 60.0, 100.0, 40.0),
        ("number", 60.0, 100.0, 40.0),
    ]
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["accuracy"] == 60.0
    assert table[0]["ci_low"] == table[0]["ci_high"] == pytest.approx(40.0)


def test_a_run_folder_compares_its_newest_tuned_eval_never_the_base_eval(tmp_path):
    """A run's eval/base is the base model (the same on both sides); of eval/pope and eval/pope-2 (a second
    `vlmtune eval RUN`), the newer counts."""
    import os

    records = pope_records()
    for side, right in (("a", 100), ("b", 150)):
        score_predictions("pope", [{"id": r["id"], "text": "No"} for r in records], records,
                          tmp_path / side / "eval" / "base")  # fmt: skip
        write_run(tmp_path / side, 0, records)  # an older evaluation
        newer = tmp_path / side / "eval" / "pope-2"
        score_predictions("pope", [{"id": r["id"], "text": "Yes" if i < right else "No"}
                                   for i, r in enumerate(records)], records, newer)  # fmt: skip
        os.utime(newer / "metrics.json", (2e9, 2e9))
    overall = next(t for t in compare_runs(tmp_path / "a", tmp_path / "b") if t["group"] == "all")
    assert (overall["a"], overall["b"], overall["diff"]) == (50.0, 75.0, 25.0)
