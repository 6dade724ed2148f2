"""POPE, GQA and ScienceQA parsers on model-style outputs; every expected value derived by hand from the
published script (LLaVA's eval_pope.py, convert_gqa_for_eval.py + GQA eval.py, eval_science_qa.py)."""

import pytest

from vlmtune.eval.gqa import normalize_answer as gqa_answer
from vlmtune.eval.gqa import score_gqa
from vlmtune.eval.pope import parse_yes_no, score_pope
from vlmtune.eval.scienceqa import parse_option, score_scienceqa

# eval_pope.py: keep text before the first ".", delete ",", split on " " only, "no" iff a word is
# exactly "No", "not" or "no"
POPE_CASES = [
    ("Yes", "yes"),
    ("No", "no"),
    ("no", "no"),
    ("NO", "yes"),  # quirk: upper case is not in the list
    ("No.", "no"),
    ("Yes.", "yes"),
    ("yes, there is a dog.", "yes"),
    ("There is no dog.", "no"),
    ("Yes. But not a big one.", "yes"),  # only the first sentence counts
    ("I do not see one", "no"),
    ("No, not really", "no"),  # comma deleted: "No not really"
    ("Not at all", "yes"),  # quirk: "Not" is not "not"
    ("Nope", "yes"),
    ("no\nthere is none", "yes"),  # quirk: split(" ") keeps "no\nthere" as one word
    ("No\n", "no"),  # the answer file's strip() removes the newline
    ("", "yes"),  # quirk: an empty answer is "yes"
    ("There is a dog, not a cat.", "no"),
    ("There are no. 5 dogs", "no"),
    ("Yes, there is no doubt.", "no"),  # "no" anywhere in the first sentence
    ("No, there is a cat", "no"),
    ("no,", "no"),  # "no," -> "no"
    ("No!", "yes"),  # quirk: "!" stays on the word
    ("no.", "no"),
    ("Not.", "yes"),
    ("cannot", "yes"),
    ("I don't think so", "yes"),  # quirk: "don't" is not a negation word here
    ("nothing", "yes"),
    ("There is not a dog in the image.", "no"),
    ("Yes\tno", "yes"),  # a tab does not split
    ("Yes no", "no"),
    ("The answer is no", "no"),
    ("No  dog", "no"),  # double space: words "No", "", "dog"
    ("  no  ", "no"),
    (".no", "yes"),  # the first sentence is empty
    ("yes.no", "yes"),
    ("1. No", "yes"),  # the first sentence is "1"
    ("No, no, no", "no"),
    ("Yes, it's not", "no"),
    ("notable", "yes"),
    ("NOT", "yes"),
    ("no-one", "yes"),
    ("Absolutely not!", "yes"),  # quirk: "not!" is not "not"
]


@pytest.mark.parametrize("text, parsed", POPE_CASES)
def test_pope_llava_parser(text, parsed):
    assert parse_yes_no(text) == parsed


@pytest.mark.parametrize("text", ["NO", "Not at all", "no\nthere is none", "NOT"])
def test_pope_lenient_reads_case_and_whitespace(text):
    assert parse_yes_no(text, "lenient") == "no"


def test_pope_metrics_per_category_and_mean_f1():
    # random: labels y y n n, raw "Yes" "NO"(->yes) "No" "Not at all"(->yes): TP 2, FP 1, TN 1, FN 0
    #   acc 3/4 = 75, P 2/3 = 66.67, R 1 = 100, F1 2*(2/3)*1/(5/3) = 80, yes-ratio 3/4 = 75
    # popular: labels y n, raw "no" "no": TP 0, FN 1, TN 1 -> acc 50, P 0 (0/0 -> 0), R 0, F1 0, yes 0
    rows = [
        {"raw": t, "prediction": t, "answer": y, "category": "random"}
        for t, y in [("Yes", "yes"), ("NO", "yes"), ("No", "no"), ("Not at all", "no")]
    ]
    rows += [
        {"raw": t, "prediction": t, "answer": y, "category": "popular"}
        for t, y in [("no", "yes"), ("no", "no")]
    ]
    m = score_pope(rows)  # fmt: skip
    r = m["per_category"]["random"]
    assert (r["accuracy"], r["precision"], r["recall"], r["f1"], r["yes_ratio"]) == (
        75.0,
        66.67,
        100.0,
        80.0,
        75.0,
    )
    p = m["per_category"]["popular"]
    assert (p["accuracy"], p["precision"], p["recall"], p["f1"], p["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 0.0)
    assert m["f1_mean_over_categories"] == 40.0  # (80 + 0) / 2
    # overall: TP 2, FP 2, TN 2, FN 1 -> acc 4/6
    assert m["accuracy"] == 66.67


# convert_gqa_for_eval.py: text.rstrip('.').lower() (after the answer file's strip()); eval.py: ==
GQA_CASES = [
    ("Yes", "yes", True),
    ("Yes.", "yes", True),
    ("yes...", "yes", True),  # rstrip removes every trailing period
    ("Left", "left", True),
    ("the woman", "woman", False),  # no article removal
    ("Woman.", "woman", True),
    (" woman ", "woman", True),
    ("woman .", "woman", False),  # quirk: "woman " after rstrip('.'), no second strip
    ("T-shirt", "t-shirt", True),
    ("t shirt", "t-shirt", False),
    ("no\nyes", "no", False),  # a multi-line answer stays whole
    ("No. It is not.", "no", False),  # only trailing periods go
    ("", "no", False),  # empty
    ("Two", "two", True),
    ("2", "two", False),  # no number mapping
    ("YES!", "yes", False),  # "!" stays
    ("jeans,", "jeans", False),
    ("Dark Brown", "dark brown", True),
    ("dark  brown", "dark brown", False),  # whitespace is not collapsed
    ("white.", "white", True),
    ("Right side", "right", False),
    ("On the left.", "left", False),
    ("SHIRT", "shirt", True),
    ("shirts", "shirt", False),
    ("Gray", "gray", True),
    ("grey", "gray", False),
    ("It is yes.", "yes", False),
    ("yes\n", "yes", True),
    ("\tno.", "no", True),
    ("man's", "man's", True),
    ("mans", "man's", False),
    ("table.\n", "table", True),
    ("wooden.", "wooden", True),
    ("Wood", "wooden", False),
    ("top.", "top", True),
    ("the top", "top", False),
    ("skateboard?", "skateboard", False),
    ("Skate-board", "skateboard", False),
    ("Both", "both", True),
    ("both.", "both", True),
]


@pytest.mark.parametrize("text, gold, correct", GQA_CASES)
def test_gqa_llava_conversion(text, gold, correct):
    assert (gqa_answer(text) == gold) is correct


def test_gqa_official_breakdown_and_balanced_only():
    rows = [
        {"raw": "Yes.", "prediction": "", "answer": "yes", "types": {"structural": "verify", "semantic": "attr"}},
        {"raw": "woman .", "prediction": "", "answer": "woman", "types": {"structural": "query", "semantic": "rel"}},
        {"raw": "Woman", "prediction": "", "answer": "woman", "types": {"structural": "query", "semantic": "rel"}},
        {"raw": "no", "prediction": "", "answer": "no", "types": {"structural": "logical", "semantic": "obj"},
         "is_balanced": False},  # left out: eval.py scores balanced questions only
    ]  # fmt: skip
    m = score_gqa(rows)
    assert (m["accuracy"], m["count"], m["binary"], m["open"]) == (66.67, 3, 100.0, 50.0)
    assert m["per_structural_type"] == {"query": 50.0, "verify": 100.0}
    assert m["unbalanced_excluded"] == 1 and "1 unbalanced question(s) left out" in m["note"]  # counted, said
    assert score_gqa([dict(r) for r in rows], scoring="lenient")["accuracy"] == 100.0  # "woman ." -> woman
    m = score_gqa([dict(r) for r in rows[:3]])
    assert (m["count"], m["unbalanced_excluded"], "note" in m) == (3, 0, False)


# eval_science_qa.py (LLaVA-1.5): whole text in A-E; else "X. " prefix; else exactly one match of
# "The answer is ([A-Z])." ("." = any character); the letter must be one of the problem's choices
SQA_CASES = [
    ("A", 4, "A"),
    ("B", 4, "B"),
    ("E", 4, ""),  # a letter beyond the 4 choices
    ("E", 5, "E"),
    ("B.", 4, ""),  # too short for the "X. " rule, no "The answer is"
    ("B. duck", 4, "B"),
    ("B.duck", 4, ""),  # no space after the period
    ("(B) duck", 4, ""),
    ("B) duck", 4, ""),
    ("The answer is A.", 4, "A"),
    ("The answer is A", 4, ""),  # quirk: the regex needs one more character after the letter
    ("The answer is AB", 4, "A"),  # "." matches "B"
    ("the answer is A.", 4, ""),  # case-sensitive
    ("The answer is (B).", 4, ""),  # "(" is not [A-Z]
    ("The answer is A. The answer is B.", 4, ""),  # two matches
    ("a", 4, ""),
    (" C ", 4, "C"),  # the answer file is stripped
    ("C\n", 4, "C"),
    ("", 4, ""),  # empty
    ("D. none of the above", 4, "D"),
    ("D. ", 4, ""),  # stripped to "D." -> too short
    ("F. x", 4, ""),
    ("E. x", 5, "E"),
    ("A\nB", 4, ""),
    ("Answer: A", 4, ""),
    ("A, B", 4, ""),
    ("I think the answer is C. Because", 4, ""),  # lower-case "the answer is"
    ("The answer is C, because", 4, "C"),
    ("The answer is Z.", 4, ""),
    ("Because of X. The answer is B.\n", 4, "B"),
    ("C", 2, ""),  # two choices: A, B only
    ("B", 2, "B"),
    ("A. True", 2, "A"),
    ("The answer is D.", 3, ""),
    ("The answer is C.", 3, "C"),
    ("B. B", 4, "B"),
    ("BB", 4, ""),
    ("The answer is B.The answer is B.", 4, ""),  # still two matches
    ("Option A", 4, ""),
    ("A.", 2, ""),
    # `pred_text in args.options` tests a list of letters, not a substring of "ABCDE"
    ("AB", 4, ""), ("ABC", 4, ""), ("BCD", 4, ""), ("DE", 5, ""), ("ABCDE", 5, ""), ("AB", 2, ""),
]  # fmt: skip


@pytest.mark.parametrize("text, n_choices, letter", SQA_CASES)
def test_scienceqa_llava_parser(text, n_choices, letter):
    assert parse_option(text, n_choices) == letter


def test_scienceqa_unparsed_is_wrong_as_llava_1_5_and_img():
    rows = [
        {"raw": "A", "prediction": "", "answer": "A", "choices": ["x", "y"], "has_image": True, "meta": {}},
        {"raw": "B.", "prediction": "", "answer": "B", "choices": ["x", "y"], "has_image": True, "meta": {}},
        {"raw": "?", "prediction": "", "answer": "A", "choices": ["x", "y", "z", "w"], "has_image": False, "meta": {}},
        {"raw": "AB", "prediction": "", "answer": "A", "choices": ["x", "y", "z", "w"], "has_image": True, "meta": {}},
    ]  # fmt: skip
    m = score_scienceqa(rows)
    # LLaVA-1.5's get_pred_idx returns -1 for FAILED (its random.choice line comes after the return and
    # never runs): 1 of 4 right, "B." / "?" / "AB" are failures
    assert (m["accuracy"], m["unparsed"], m["img_accuracy"], m["count"]) == (25.0, 3, 33.33, 4)
    assert not any("random" in key for key in m)  # no published LLaVA-1.5 number to estimate
