"""GQA, POPE, ScienceQA and COCO-caption scorers on hand-computed values."""

import shutil

import pytest

from vlmtune.eval import EvalError
from vlmtune.eval.caption import score_captions, simple_tokenize
from vlmtune.eval.gqa import normalize_answer as gqa_norm
from vlmtune.eval.gqa import score_gqa
from vlmtune.eval.pope import parse_yes_no, score_pope
from vlmtune.eval.scienceqa import parse_option, score_scienceqa


def test_gqa_exact_match_after_normalisation():
    assert gqa_norm("  Yes. ") == "yes"  # LLaVA: strip (answer file), rstrip("."), lower
    rows = [
        {"prediction": "Yes.", "answer": "yes", "types": {"structural": "verify", "semantic": "attr"}},
        {"prediction": "woman", "answer": "woman", "types": {"structural": "query", "semantic": "rel"}},
        {"prediction": "the woman", "answer": "woman", "types": {"structural": "query", "semantic": "rel"}},
        {"prediction": "no", "answer": "yes", "types": {"structural": "verify", "semantic": "attr"}},
    ]
    m = score_gqa(rows)
    assert m["accuracy"] == 50.0  # "the woman" != "woman": GQA is exact match (no article removal)
    assert m["per_structural_type"] == {"query": 50.0, "verify": 50.0}
    assert [r["correct"] for r in rows] == [True, True, False, False]


@pytest.mark.parametrize(
    "text, parsed",
    [("Yes", "yes"), ("No", "no"), ("yes, there is a dog.", "yes"), ("There is no dog.", "no"),
     ("Yes. But not a big one.", "yes"), ("I do not see one", "no"), ("No, not really", "no")],
)  # fmt: skip
def test_pope_parser(text, parsed):
    assert parse_yes_no(text) == parsed


def test_pope_metrics():
    # labels: y y y n n ; predictions: y y n y n -> TP 2, FN 1, FP 1, TN 1
    labels = ["yes", "yes", "yes", "no", "no"]
    preds = ["Yes", "yes.", "No", "Yes", "no"]
    rows = [{"prediction": p, "answer": y, "category": "random"} for p, y in zip(preds, labels)]
    m = score_pope(rows)
    assert m["accuracy"] == 60.0
    assert m["precision"] == pytest.approx(66.67)
    assert m["recall"] == pytest.approx(66.67)
    assert m["f1"] == pytest.approx(66.67)
    assert m["yes_ratio"] == 60.0
    assert m["per_category"]["random"]["accuracy"] == 60.0


def test_pope_rejects_bad_label():
    with pytest.raises(EvalError, match="yes or no"):
        score_pope([{"id": "q1", "prediction": "yes", "answer": "maybe"}])


@pytest.mark.parametrize(
    "text, letter",
    [("B", "B"), ("B.", "B"), ("B. metaphor", "B"), ("(C) duck", "C"), ("The answer is A.", "A"),
     ("the answer is (B)", "B"), ("E", ""), ("metaphor", ""), ("", "")],
)  # fmt: skip
def test_scienceqa_parser(text, letter):
    # these are the lenient rules (--scoring lenient); the official LLaVA rules: test_eval_official_parsers.py
    assert parse_option(text, 4, "lenient") == letter


def test_scienceqa_score_and_groups():
    rows = [
        {"prediction": "A", "answer": "A", "choices": ["x", "y"], "has_image": True,
         "meta": {"subject": "natural science", "grade": "grade3"}},
        {"prediction": "B. y", "answer": "A", "choices": ["x", "y"], "has_image": False,
         "meta": {"subject": "language science", "grade": "grade8"}},
        {"prediction": "no idea", "answer": "B", "choices": ["x", "y"], "has_image": True,
         "meta": {"subject": "natural science", "grade": "grade9"}},
    ]  # fmt: skip
    m = score_scienceqa(rows)
    assert m["accuracy"] == pytest.approx(33.33)
    assert m["unparsed"] == 1
    assert m["per_group"] == {"NAT": 50.0, "LAN": 0.0, "IMG": 50.0, "NO": 0.0, "G1-6": 100.0, "G7-12": 0.0}


def test_caption_metrics_without_java():
    preds = {"a": "a man riding a bike", "b": "a woman cutting a cake"}
    refs = {"a": ["A man riding a bike.", "A man is riding a bicycle."], "b": ["A woman cutting a cake."]}
    m, per = score_captions(preds, refs, metrics=("bleu", "rouge", "cider"), tokenizer="simple")
    assert m["BLEU-1"] == 100.0 and m["ROUGE-L"] == 100.0  # every hypothesis equals one reference
    assert per["b"]["BLEU-4"] == pytest.approx(100.0, abs=0.01)
    assert m["CIDEr"] > 100.0
    assert "not comparable" in m["tokenizer"]
    assert simple_tokenize({"x": ["A dog, running."]}) == {"x": ["a dog running"]}


def test_caption_errors():
    with pytest.raises(EvalError, match="unknown caption metric 'spice'"):
        score_captions({"a": "x"}, {"a": ["x"]}, metrics=("spice",), tokenizer="simple")
    with pytest.raises(EvalError, match="no reference captions"):
        score_captions({"a": "x"}, {"a": []}, metrics=("bleu",), tokenizer="simple")


def test_caption_missing_java_is_one_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EvalError, match="`java` not found") as e:
        score_captions({"a": "x"}, {"a": ["x"]}, metrics=("cider",))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_caption_ptb_tokenizer_bleu_rouge_cider():
    preds = {"a": "A man riding a bike.", "b": "a woman, cutting a cake"}
    refs = {
        "a": ["A man riding a bike down a road.", "A man rides a bike."],
        "b": ["A woman cutting a cake."],
    }
    m, _ = score_captions(preds, refs, metrics=("bleu", "rouge", "cider"))
    assert m["BLEU-1"] == 100.0  # PTB tokens, punctuation dropped: every word is in a reference
    assert 0 < m["BLEU-4"] <= 100 and 0 < m["ROUGE-L"] <= 100 and m["CIDEr"] > 0
    assert "tokenizer" not in m


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_caption_all_metrics_with_meteor():
    preds = {"a": "a dog is running on grass", "b": "two cats sleep"}
    refs = {"a": ["A dog runs on the grass.", "a dog running"], "b": ["Two cats, sleeping."]}
    m, per = score_captions(preds, refs)
    assert set(m) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    assert 0 < m["METEOR"] < 100 and per["b"]["METEOR"] > per["a"]["METEOR"]
