"""VQA accuracy: the official evaluator's normalisation and leave-one-out averaging."""

import json
from pathlib import Path

import pytest

from vlmtune.eval import EvalError
from vlmtune.eval.vqa import (
    load_official,
    load_results,
    normalize_answer,
    process_punctuation,
    score_vqa,
    submission,
    vqa_accuracy,
)

FIXTURES = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two", "2"),  # number words -> digits, lower case
        ("ten", "10"),
        ("none", "0"),
        ("a dog", "dog"),  # articles
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions
        ("don't", "don't"),
        ("Don\u2019t", "don\u2019t"),  # official: a curly apostrophe is not straightened (lenient: below)
        ("isnt", "isn't"),
        ("yes.", "yes"),  # trailing period
        ("yes", "yes"),
        ("Yes!", "yes"),  # "!" is in the official list: replaced by a space, then split away
        ("2.5", "2.5"),  # a period before a digit stays
        ("1,000", "1000"),  # digit comma digit: punctuation deleted, not spaced
        ("red, white", "red white"),  # ", " -> deleted
        ("red/white", "red white"),  # no space around: replaced by a space
        ("man's", "man's"),  # "'" is not in the official list: a possessive stays as it is
        ("  hot\tdog\n", "hot dog"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_process_punctuation_matches_official_rules():
    assert process_punctuation("what?") == "what "
    assert process_punctuation("what ?") == "what "
    assert process_punctuation("a.m.") == "am"
    assert process_punctuation("3.14") == "3.14"


@pytest.mark.parametrize("prediction", ["Two", "2", "two.", "2."])
def test_number_word_matches_digit(prediction):
    assert vqa_accuracy(prediction, ["2"] * 10) == 1.0


@pytest.mark.parametrize(
    "prediction, answer", [("a dog", "dog"), ("dont", "don't"), ("yes.", "yes"), ("Yes", "yes")]
)
def test_normalisation_cases_match(prediction, answer):
    assert vqa_accuracy(prediction, [answer] * 10) == 1.0


def test_lenient_normalises_the_humans_too():
    # official: 10 identical human answers "dont" are compared unprocessed, the prediction "don't" stays
    # "don't" -> no match; lenient normalises "dont" -> "don't" on the human side as well
    assert vqa_accuracy("don't", ["dont"] * 10) == 0.0
    assert vqa_accuracy("don't", ["dont"] * 10, scoring="lenient") == 1.0
    assert normalize_answer("Don\u2019t", "lenient") == "don't"


@pytest.mark.parametrize(
    "humans, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)]
)
def test_leave_one_out_averaging(humans, expected):
    # acc = mean over the 10 subsets of 9 of min(1, matches / 3):
    # 2 of 10: 2 subsets see 1 match (1/3), 8 see 2 (2/3) -> (2/3 + 16/3) / 10 = 0.6
    # 3 of 10: 3 subsets see 2 (2/3), 7 see 3 (1) -> 0.9; 4 or more -> 1.0
    answers = ["cat"] * humans + ["dog"] * (10 - humans)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_leave_one_out_on_normalised_answers():
    # official: the humans disagree, so their answers are punctuation-processed only: "2", "Two", "two",
    # "2" -> two humans match "2" -> 0.6. lenient: "Two" / "two." -> "2" too, 4 humans -> 1.0
    answers = ["2", "Two", "two.", "2"] + ["3"] * 6
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)
    assert vqa_accuracy("2", answers, scoring="lenient") == 1.0


def test_single_reference_is_exact_match():
    assert vqa_accuracy("A red circle.", ["red circle"]) == 1.0
    assert vqa_accuracy("blue", ["red"]) == 0.0


def test_no_reference_is_an_error():
    with pytest.raises(EvalError, match="at least one"):
        vqa_accuracy("x", [])


def test_score_vqa_overall_and_per_type():
    rows = [
        {"prediction": "yes", "answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is"},
        {
            "prediction": "two",
            "answers": ["2"] * 2 + ["3"] * 8,
            "answer_type": "number",
            "question_type": "how many",
        },
        {"prediction": "no", "answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is"},
    ]
    m = score_vqa(rows)
    assert m["accuracy"] == pytest.approx(100 * 1.6 / 3, abs=0.005)
    assert m["per_answer_type"] == {"number": 60.0, "yes/no": 50.0}
    assert m["per_question_type"] == {"how many": 60.0, "is": 50.0}
    assert m["count"] == 3
    assert [r["accuracy"] for r in rows] == pytest.approx([1.0, 0.6, 0.0])


def test_official_files(fixtures):
    gts = load_official(fixtures / "vqav2_eval_questions.json", fixtures / "vqav2_eval_annotations.json")
    assert sorted(gts) == [262148000, 262148001, 393225000, 393225001]
    assert gts[262148001]["answers"].count("2") == 2 and gts[262148001]["answer_type"] == "number"
    res = load_results(fixtures / "vqav2_results.json")
    assert res[393225000] == "a dog"


def test_official_files_errors(tmp_path, fixtures):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(EvalError, match="entry 0 needs 'question_id' and 'answer'"):
        load_results(bad)
    bad.write_text("{not json")
    with pytest.raises(EvalError, match="not valid JSON"):
        load_results(bad)
    with pytest.raises(EvalError, match="not in"):
        load_official(fixtures / "vqav2_eval_questions.json", fixtures / "v2_mscoco_val2014_annotations.json")


def test_submission_format():
    # LLaVA's convert_vqav2_for_submission.py: EvalAI processor ("," and "?" deleted, lower-case, ...)
    sub = submission(
        [{"question_id": 5, "prediction": "Two."}, {"question_id": 6, "prediction": "What, Me?"}]
    )
    assert sub == [{"question_id": 5, "answer": "2"}, {"question_id": 6, "answer": "what me"}]
