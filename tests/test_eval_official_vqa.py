"""VQAv2 / TextVQA / VizWiz accuracy on model-style outputs, expected values derived by hand from the
published algorithms (GT-Vision-Lab vqaEval.py, LLaVA's m4c_evaluator, VizWiz's VQAEval).

vqaEval.py, in short: prediction -> "\\n"/"\\t" to spaces, strip, processPunctuation, processDigitArticle;
human answers -> processPunctuation only, and only if they are not all identical; score = mean over the
10 leave-one-out subsets of min(1, matches / 3). processPunctuation looks at the ORIGINAL text: a mark
next to a space (or any mark when the text has digit,digit) is deleted, else replaced by a space; then
periods not followed by a digit go (at most 32).
"""

import json

import pytest

from vlmtune import cli
from vlmtune.eval.textvqa import question_from_prompt, textvqa_accuracy
from vlmtune.eval.vizwiz import vizwiz_accuracy
from vlmtune.eval.vqa import evalai_answer, vqa_accuracy


def humans(answer: str, n: int, other: str = "zzz") -> list[str]:
    """10 human answers, ``n`` of them ``answer`` (disagreeing humans -> their answers get punctuation-processed)."""
    return [answer] * n + [other] * (10 - n)


# (prediction, 10 human answers, answer type, official accuracy derived by hand)
VQA_CASES = [
    ("Yes", ["yes"] * 10, "yes/no", 1.0),  # capital: lower-cased
    ("Yes.", ["yes"] * 10, "yes/no", 1.0),  # trailing period stripped
    ("YES!", ["yes"] * 10, "yes/no", 1.0),  # "!" not next to a space -> space -> split away
    ("Yes!!!", ["yes"] * 10, "yes/no", 1.0),
    ("No, there is not.", ["no"] * 10, "yes/no", 0.0),  # multi-word: "no there is not"
    ("Yes. It is a cat.", ["yes"] * 10, "yes/no", 0.0),  # two sentences: "yes it is cat"
    ("yes\nno", ["yes"] * 10, "yes/no", 0.0),  # newline -> space: "yes no"
    ("", ["yes"] * 10, "yes/no", 0.0),  # empty answer
    ("  skiing \t", ["skiing"] * 10, "other", 1.0),  # surrounding whitespace
    ("Two", ["2"] * 10, "number", 1.0),  # number word -> digit
    ("two dogs", ["2"] * 10, "number", 0.0),  # "2 dogs"
    ("Ten.", ["10"] * 10, "number", 1.0),
    ("None", ["0"] * 10, "number", 1.0),  # "none" -> "0"
    ("eleven", ["11"] * 10, "number", 0.0),  # the map stops at ten
    ("1,000", ["1000"] * 10, "number", 1.0),  # digit,digit: every mark deleted -> "1000"
    # quirk: 10 identical humans "1,000" are compared unprocessed; the prediction became "1000"
    ("1,000", ["1,000"] * 10, "number", 0.0),
    ("1,000", humans("1,000", 4, "500"), "number", 1.0),  # disagreeing humans -> "1000" x4 -> 1.0
    ("1,2,3", ["123"] * 10, "number", 1.0),
    ("2.5", ["2.5"] * 10, "number", 1.0),  # a period before a digit stays
    ("5.", ["5"] * 10, "number", 1.0),
    ("3:00", ["3:00"] * 10, "other", 1.0),  # ":" is not in the official list
    ("3:00", ["300"] * 10, "other", 0.0),
    # quirk: "-" -> space gives "t shirt"; 10 identical humans keep "t-shirt" -> 0
    ("T-shirt.", ["t-shirt"] * 10, "other", 0.0),
    ("T-shirt", humans("t-shirt", 3, "shirt"), "other", 0.9),  # humans disagree -> "t shirt" x3 -> 0.9
    ("well - lit", ["well lit"] * 10, "other", 1.0),  # " -" next to a space: deleted
    ("{frisbee}", ["frisbee"] * 10, "other", 1.0),  # braces -> spaces
    # "(" has a space before it -> deleted; ")" has none -> space: "frisbee red "
    ("frisbee (red)", ["frisbee red"] * 10, "other", 1.0),
    ("[left]", ["left"] * 10, "other", 1.0),
    ('"stop"', ["stop"] * 10, "other", 1.0),
    ("red; white", ["red white"] * 10, "other", 1.0),  # "; " -> deleted
    ("red/white", ["red white"] * 10, "other", 1.0),  # "/" -> space
    ("1/2", ["1/2"] * 10, "number", 0.0),  # prediction "1 2", identical humans unprocessed "1/2"
    ("1/2", humans("1/2", 5, "half"), "number", 1.0),  # disagreeing humans -> "1 2" x5
    ("x=y", ["x y"] * 10, "other", 1.0),
    ("1+1", ["1 1"] * 10, "number", 1.0),
    ("back\\slash", ["back slash"] * 10, "other", 1.0),
    ("hot_dog", ["hot dog"] * 10, "other", 1.0),
    ("<3", ["3"] * 10, "number", 1.0),
    ("5 > 3", ["5 3"] * 10, "other", 1.0),  # "> " -> deleted
    ("@home", ["home"] * 10, "other", 1.0),
    ("`quote`", ["quote"] * 10, "other", 1.0),
    ("What?", ["what"] * 10, "other", 1.0),
    ("The dog", ["dog"] * 10, "other", 1.0),  # articles dropped
    ("an apple", ["apple"] * 10, "other", 1.0),
    ("A", ["a"] * 10, "other", 0.0),  # quirk: the prediction "a" is an article -> "", humans keep "a"
    ("dont", ["don't"] * 10, "other", 1.0),  # contraction map: "dont" -> "don't"
    ("don't", ["don't"] * 10, "other", 1.0),  # "'" is not punctuation
    ("Don\u2019t", ["don't"] * 10, "other", 0.0),  # a curly apostrophe stays (lenient straightens it)
    ("Im", ["i'm"] * 10, "other", 0.0),  # quirk: the map's key is "Im", never matched after lower()
    ("wont", ["won't"] * 10, "other", 1.0),
    ("Cat", ["Cat"] * 10, "other", 0.0),  # quirk: identical humans are not lower-cased
    ("a.m.", ["am"] * 10, "other", 1.0),  # both periods go
    ("Mr. Smith", ["mr smith"] * 10, "other", 1.0),
    ("yes" + "." * 40, ["yes"] * 10, "yes/no", 0.0),  # quirk: sub(..., re.UNICODE) removes only 32 periods
    ("cat", humans("cat", 1), "other", 0.3),  # leave-one-out: 1, 2, 3 humans -> 0.3, 0.6, 0.9
    ("cat", humans("cat", 2), "other", 0.6),
    ("Cat.", humans("cat", 3), "other", 0.9),
    # ", " -> "," deleted; "!" -> space; humans disagree but "red white and blue" has no marks
    ("red, white and blue!", humans("red white and blue", 4, "red"), "other", 1.0),
]


@pytest.mark.parametrize("prediction, answers, answer_type, expected", VQA_CASES)
def test_vqav2_official_accuracy(prediction, answers, answer_type, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_case_table_covers_every_official_punctuation_mark():
    text = "".join(p for p, *_ in VQA_CASES)
    for mark in ';/[]"{}()=+\\_-><@`,?!':
        assert mark in text, mark
    assert len(VQA_CASES) >= 40


def test_lenient_differs_only_where_documented():
    # lenient: humans fully normalised and curly apostrophes straightened
    assert vqa_accuracy("1,000", ["1,000"] * 10, "lenient") == 1.0
    assert vqa_accuracy("T-shirt.", ["t-shirt"] * 10, "lenient") == 1.0
    assert vqa_accuracy("Don\u2019t", ["don't"] * 10, "lenient") == 1.0
    assert vqa_accuracy("Cat", ["Cat"] * 10, "lenient") == 1.0


def _write_official(tmp_path, cases):
    questions = {"data_subtype": "val2014", "questions": []}
    annotations = {"annotations": []}
    results = []
    for qid, (pred, answers, answer_type, _) in enumerate(cases, 1):
        questions["questions"].append({"question_id": qid, "image_id": qid, "question": f"q{qid}?"})
        annotations["annotations"].append(
            {
                "question_id": qid, "image_id": qid, "answer_type": answer_type, "question_type": "what",
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
            }
        )  # fmt: skip
        results.append({"question_id": qid, "answer": pred})
    paths = [tmp_path / n for n in ("q.json", "a.json", "r.json")]
    for path, obj in zip(paths, (questions, annotations, results)):
        path.write_text(json.dumps(obj))
    return paths


def test_results_file_gives_official_overall_and_per_answer_type(tmp_path, capsys):
    q, a, r = _write_official(tmp_path, VQA_CASES)

    def official(cases):  # vqaEval: round(100 * mean of the (hand-derived) per-question accuracies, 2)
        return round(100 * sum(c[3] for c in cases) / len(cases), 2)

    expected_types = {t: official([c for c in VQA_CASES if c[2] == t]) for t in ("number", "other", "yes/no")}
    argv = ["eval", "vqav2", "--predictions", str(r), "--questions", str(q), "--annotations", str(a)]
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["accuracy"] == official(VQA_CASES) and m["scoring"] == "official"
    assert m["per_answer_type"] == expected_types
    assert f"accuracy {official(VQA_CASES):.2f}" in capsys.readouterr().out
    # --scoring lenient is a named option; it changes the number on these quirk cases
    assert cli.main(argv + ["--out", str(tmp_path / "l"), "--scoring", "lenient"]) == 0
    lenient = json.loads((tmp_path / "l" / "metrics.json").read_text())
    assert lenient["accuracy"] > m["accuracy"] and lenient["scoring"] == "lenient"


# ------------------------------------------------------------------ TextVQA (m4c evaluator)
# EvalAI processor: lower, delete "," and "?", "'s" -> " 's", then the vqaEval steps -- applied to the
# prediction AND every human answer (unlike vqaEval), then the same leave-one-out average.
TEXTVQA_CASES = [
    ("Nokia", ["nokia"] * 10, 1.0),
    ("NOKIA.", ["Nokia"] * 10, 1.0),  # humans are processed too: "Nokia" -> "nokia"
    ("Coca-Cola", ["coca-cola"] * 10, 1.0),  # both sides "coca cola" (vqaEval would give 0 here)
    ("1,000", ["1,000"] * 10, 1.0),  # "," deleted on both sides
    ("What?", ["what"] * 10, 1.0),
    ("joe's", ["joe's"] * 10, 1.0),  # both "joe 's"
    ("joe's", ["joes"] * 10, 0.0),
    ("The End", ["end"] * 10, 1.0),
    ("Two", ["2"] * 10, 1.0),
    ("", ["stop"] * 10, 0.0),
    ("stop\nsign", ["stop sign"] * 10, 1.0),  # newline -> space
    ("3:45", ["3:45"] * 10, 1.0),
    ("{frisbee}", ["frisbee"] * 10, 1.0),
    ("nike", humans("Nike", 2, "adidas"), 0.6),
    ("nike", humans("Nike!", 3, "adidas"), 0.9),
    ("dont", ["don't"] * 10, 1.0),
    ("Yes.", ["yes"] * 10, 1.0),
    ("YES!", ["yes"] * 10, 1.0),
    ("yes\nno", ["yes"] * 10, 0.0),
    ("Ten.", ["10"] * 10, 1.0),
    ("None", ["0"] * 10, 1.0),
    ("eleven", ["11"] * 10, 0.0),
    ("2.5", ["2.5"] * 10, 1.0),
    ("5.", ["5"] * 10, 1.0),
    ("T-shirt.", ["t-shirt"] * 10, 1.0),  # both "t shirt" (0 under vqaEval, whose humans stay "t-shirt")
    ("A", ["a"] * 10, 1.0),  # quirk: both sides become "" (article), and "" == ""
    ("Cat", ["Cat"] * 10, 1.0),  # humans lower-cased too
    ("Im", ["i'm"] * 10, 0.0),  # "im" (the map's "Im" key never matches) vs "i'm"
    ("wont", ["won't"] * 10, 1.0),
    ("frisbee (red)", ["frisbee red"] * 10, 1.0),
    ("red/white", ["red white"] * 10, 1.0),
    ("1/2", ["1/2"] * 10, 1.0),  # both "1 2"
    ("x=y", ["x=y"] * 10, 1.0),
    ("hot_dog", ["hot dog"] * 10, 1.0),
    ("<3", ["<3"] * 10, 1.0),
    ("@home", ["home"] * 10, 1.0),
    ("`quote`", ['"quote"'] * 10, 1.0),
    ("[left]", ["left"] * 10, 1.0),
    ("red; white", ["red white"] * 10, 1.0),
    ("back\\slash", ["back slash"] * 10, 1.0),
    ("5 > 3", ["5 3"] * 10, 1.0),
    ("Don\u2019t", ["don't"] * 10, 0.0),  # the curly apostrophe stays
    ("The dog", ["dog"] * 10, 1.0),
    ("a.m.", ["am"] * 10, 1.0),
]


@pytest.mark.parametrize("prediction, answers, expected", TEXTVQA_CASES)
def test_textvqa_m4c_accuracy(prediction, answers, expected):
    assert textvqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_evalai_processor():
    assert evalai_answer("What's THIS, Joe?") == "what 's this joe"
    assert evalai_answer("A T-Shirt.") == "t shirt"
    assert evalai_answer("1,000") == "1000"


@pytest.mark.parametrize(
    "prompt, question",
    [
        ("What brand?\nReference OCR token: nokia, 3\nAnswer the question using a single word or phrase.", "what brand?"),
        ("Reference OCR token: a\nWhat Brand?\nAnswer the question using a single word or phrase.", "what brand?"),
        ("What brand?\nAnswer the question using a single word or phrase.", "what brand?"),
        ("OCR tokens: a b Question: What brand? Short answer:", "what brand?"),
    ],
)  # fmt: skip
def test_textvqa_prompt_processor(prompt, question):
    assert question_from_prompt(prompt) == question


# ------------------------------------------------------------------ VizWiz (server VQAEval_Vizwiz)
# the upload is EvalAI-processed, the server normalises it like vqaEval and compares it with the human
# answers AS RELEASED (never processed), leave-one-out.
VIZWIZ_CASES = [
    ("Unanswerable", ["unanswerable"] * 10, 1.0),
    ("unanswerable.", ["unanswerable"] * 10, 1.0),
    ("Unsuitable", ["unanswerable"] * 10, 0.0),
    ("Coca-Cola", ["coca cola"] * 10, 1.0),
    ("Coca-Cola", ["coca-cola"] * 10, 0.0),  # humans never processed, even when they disagree
    ("Coca-Cola", humans("coca-cola", 5, "pepsi"), 0.0),
    ("Two", ["2"] * 10, 1.0),
    ("white, blue", ["white blue"] * 10, 1.0),
    ("grey", humans("grey", 2, "gray"), 0.6),
    ("", ["unanswerable"] * 10, 0.0),
    ("Yes", ["yes"] * 10, 1.0),
    ("Yes.", ["yes"] * 10, 1.0),
    ("YES!", ["yes"] * 10, 1.0),
    ("No, it is not.", ["no"] * 10, 0.0),  # "no it is not"
    ("Ten", ["10"] * 10, 1.0),
    ("1,000", ["1000"] * 10, 1.0),
    ("1,000", ["1,000"] * 10, 0.0),  # the humans' "1,000" is compared as released
    ("What?", ["what"] * 10, 1.0),
    ("The dog", ["dog"] * 10, 1.0),
    ("A", ["a"] * 10, 0.0),  # the prediction becomes "" (article)
    ("dont", ["don't"] * 10, 1.0),
    ("Cat", ["Cat"] * 10, 0.0),  # the humans are not lower-cased
    ("Cat", ["cat"] * 10, 1.0),
    ("joe's", ["joe's"] * 10, 0.0),  # the upload is EvalAI-processed: "joe 's"
    ("T-shirt", ["t-shirt"] * 10, 0.0),
    ("T-shirt", ["t shirt"] * 10, 1.0),
    ("3:00", ["3:00"] * 10, 1.0),
    ("2.5", ["2.5"] * 10, 1.0),
    ("yes\nno", ["yes"] * 10, 0.0),
    ("unanswerable", humans("unanswerable", 3, "blue"), 0.9),
    ("blue", humans("blue", 1, "unanswerable"), 0.3),
    ("Blue.", humans("blue", 2, "navy"), 0.6),
    ("{red}", ["red"] * 10, 1.0),
    ("red/white", ["red white"] * 10, 1.0),
    ("hot_dog", ["hot dog"] * 10, 1.0),
    ("Im", ["i'm"] * 10, 0.0),
    ("None", ["0"] * 10, 1.0),
    ("none", ["none"] * 10, 0.0),  # the prediction becomes "0", the humans' "none" stays
    ("an apple", ["apple"] * 10, 1.0),
    ("a.m.", ["am"] * 10, 1.0),
]


@pytest.mark.parametrize("prediction, answers, expected", VIZWIZ_CASES)
def test_vizwiz_server_accuracy(prediction, answers, expected):
    assert vizwiz_accuracy(prediction, answers) == pytest.approx(expected)
