"""The rest of LLaVA-1.5's suite (TextVQA, VizWiz, MME, MMBench, SEED-Bench): parsers on model-style outputs
with hand-derived expectations, then data_prep from hand-made files in the official release formats and
`vlmtune eval NAME --predictions` on each benchmark's published answer format."""

import csv
import json
from pathlib import Path

import pytest
from test_data_prep import FIXTURES, evaluate, prep, script

from vlmtune import cli
from vlmtune.eval.mmbench import parse_letter, score_mmbench
from vlmtune.eval.mme import parse_yes_no_other
from vlmtune.eval.seed import score_seed
from vlmtune.eval.textvqa import textvqa_prompt

# calculation.py parse_pred_ans on the lower-cased answer: exactly yes/no, else "yes" in the first 4
# characters, else "no" in them, else "other"
MME_CASES = [
    ("Yes", "yes"), ("No", "no"), ("yes", "yes"), ("no", "no"), ("YES", "yes"),
    ("Yes.", "yes"), ("No.", "no"), ("Yes, there is", "yes"), ("No, there is not", "no"),
    ("Not really", "no"),  # "not " contains "no"
    ("None", "no"), ("Nope", "no"), ("nothing", "no"),
    ("I don't know", "other"), ("The answer is yes", "other"), ("There is no train", "other"),
    ("Y", "other"), ("N", "other"), ("", "other"),
    ("yes\nno", "yes"),  # the first line (the tool's line format cannot hold a newline)
    ("no\nyes", "no"),
    ("Yes, no", "yes"),  # "yes" is looked for first
    ("no yes", "no"),  # "no y" has no "yes"
    ("ayes", "yes"), ("eyes", "yes"),  # quirk: substring of the first 4 characters
    ("snow", "no"), ("know", "no"),  # quirk
    ("unknown", "other"),  # "unkn"
    ("Noo", "no"), ("yes!", "yes"),
    ("  yes", "other"),  # no strip in the tool: "  ye" (LLaVA's answer files are stripped already)
    ("Yes it is", "yes"), ("It is yes", "other"), ("not sure", "no"), ("n/a", "other"),
    ("yeah", "other"), ("yep", "other"), ("True", "other"), ("no.", "no"), ("NO!", "no"),
    ("nah", "other"), ("Absolutely yes", "other"), ("2", "other"),
]  # fmt: skip


@pytest.mark.parametrize("text, parsed", MME_CASES)
def test_mme_parser(text, parsed):
    assert parse_yes_no_other(text) == parsed


ANIMALS = ["cow", "horse", "sheep", "pig"]
YES_NO = ["yes", "no"]
BLOOD = ["AB blood", "O blood", "cat", "dog"]
# eval_mmbench.py auto_parse_answer: strip(".").strip().upper() is a letter; else "the answer is x."
# in the lower-cased text (first letter A..D that fits); else the ONLY option containing the answer
MMBENCH_CASES = [
    ("A", ANIMALS, "A"), ("B.", ANIMALS, "B"), (" c ", ANIMALS, "C"), ("d", ANIMALS, "D"), ("A..", ANIMALS, "A"),
    (".B.", ANIMALS, "B"),
    ("E", ANIMALS, ""),  # not a letter of 4 options; "e" is in "horse" and "sheep": 2 matches
    ("The answer is C.", ANIMALS, "C"), ("the answer is c.", ANIMALS, "C"),
    ("The answer is C", ANIMALS, ""),  # no period: the phrase test fails, and no option contains it
    ("horse", ANIMALS, "B"), ("Horse", ANIMALS, "B"), ("hors", ANIMALS, "B"),  # answer inside an option
    ("h", ANIMALS, ""),  # in "horse" and "sheep"
    ("o", ANIMALS, ""),  # in "cow" and "horse"
    ("pig.", ANIMALS, ""),  # quirk: "pig." is not inside "pig"
    ("cow", ANIMALS, "A"),
    ("A cow", ANIMALS, ""),  # quirk: the option does not contain "a cow"
    ("", ANIMALS, ""),  # empty is inside every option
    ("I think it is a horse", ANIMALS, ""),
    ("B) horse", ANIMALS, ""), ("(A)", ANIMALS, ""), ("sheep", ANIMALS, "C"), ("sheep and pig", ANIMALS, ""),
    ("The answer is A. The answer is B.", ANIMALS, "A"),
    ("The answer is B. Or the answer is A.", ANIMALS, "A"),  # quirk: letters are tried in order A..D
    ("A. cow", ANIMALS, ""), ("Answer: A", ANIMALS, ""),
    ("yes", YES_NO, "A"), ("no", YES_NO, "B"), ("No", YES_NO, "B"),
    ("C", YES_NO, ""),  # 2 options: only A, B
    ("y", YES_NO, "A"), ("n", YES_NO, "B"), ("e", YES_NO, "A"), ("o", YES_NO, "B"), ("", YES_NO, ""),
    ("cat", ["A cat", "A dog"], "A"), ("A", ["A cat", "A dog"], "A"), ("dog", ["A cat", "A dog"], "B"),
    ("a", ["A cat", "A dog"], "A"),  # the letter rule comes first
    # auto_parse_answer tests membership in the list of option letters, not a substring of "ABCD":
    ("AB", BLOOD, "A"),  # not a letter; the only option containing "ab" is "AB blood"
    ("BC", BLOOD, ""), ("abcd", BLOOD, ""), ("ABC", BLOOD, ""), ("ab.", BLOOD, ""),
    ("CD", ANIMALS, ""), ("AB", YES_NO, ""),
]  # fmt: skip


@pytest.mark.parametrize("text, choices, letter", MMBENCH_CASES)
def test_mmbench_parser(text, choices, letter):
    assert parse_letter(text, choices) == letter


# convert_seed_for_submission.py: right iff the answer text == the gold letter (our answers are stripped)
SEED_CASES = [
    ("A", "A", True), ("B", "A", False), ("A.", "A", False), ("A. One", "A", False), ("(A)", "A", False),
    ("a", "A", False), (" A ", "A", True), ("A\n", "A", True), ("", "A", False), ("The answer is A", "A", False),
    ("One", "A", False), ("D", "D", True), ("D.", "D", False), ("C", "D", False), ("B", "B", True),
    ("B)", "B", False), ("b", "B", False), ("B\nC", "B", False), ("BB", "B", False), ("C", "C", True),
    ("Answer: C", "C", False), ("C. Three", "C", False), ("c", "C", False), ("C ", "C", True), ("\tC", "C", True),
    ("A", "B", False), ("A", "C", False), ("A", "D", False), ("D", "A", False), ("B", "D", False),
    ("The answer is B.", "B", False), ("option B", "B", False), ("[B]", "B", False), ("B!", "B", False),
    ("two", "B", False), ("D\n\n", "D", True), (" D", "D", True), ("DD", "D", False), ("d.", "D", False),
    ("E", "D", False),
]  # fmt: skip


@pytest.mark.parametrize("text, gold, correct", SEED_CASES)
def test_seed_exact_letter(text, gold, correct):
    rows = [{"prediction": text.strip(), "answer": gold, "question_type": "t", "choices": ANIMALS}]
    assert score_seed(rows)["accuracy"] == (100.0 if correct else 0.0)


def test_seed_lenient_reads_the_letter():
    rows = [{"prediction": p, "answer": "A", "choices": ANIMALS} for p in ("A.", "(A)", "A. One", "B")]
    assert score_seed([dict(r) for r in rows])["accuracy"] == 0.0
    assert score_seed([dict(r) for r in rows], scoring="lenient")["accuracy"] == 75.0


# ------------------------------------------------------------------ end to end on official formats
def test_textvqa_prep_then_llava_answers(tmp_path, capsys):
    out = tmp_path / "textvqa.jsonl"
    records, log = prep(
        "prep_textvqa", [str(FIXTURES / "TextVQA_0.5.1_val.json"), "--ocr", "--out", str(out)], capsys
    )
    assert "wrote 3 records" in log and "1 x no 'answers' (test split?) (e.g. data[3])" in log
    assert records[0]["meta"]["ocr_tokens"] == ["NIKON", "D3100"] and len(records[0]["answers"]) == 10
    # the LLaVA answers file (question_id = image id, prompt with the OCR tokens) is matched as
    # eval_textvqa.py does. Nikon: 8 of 10 humans say nikon/Nikon -> 1.0; "STOP." -> "stop", 2 humans
    # -> 0.6; "1999": "1,999" -> "1999" on the human side too -> 10 -> 1.0. Mean 2.6 / 3 -> 86.67
    answers = [
        json.loads(line) for line in (FIXTURES / "llava_textvqa_answers.jsonl").read_text().splitlines()
    ]
    m = evaluate("textvqa", out, answers, tmp_path)
    assert (m["accuracy"], m["count"]) == (86.67, 3)
    assert textvqa_prompt(records[0]) == answers[0]["prompt"]  # LLaVA-1.5's OCR prompt, byte for byte


def test_textvqa_ocr_tokens_from_the_rosetta_file_or_refused(tmp_path, capsys):
    # the TextVQA_0.5.1 release entries carry no ocr_tokens: they are in TextVQA_Rosetta_OCR_v0.2_*.json
    release = json.loads((FIXTURES / "TextVQA_0.5.1_val.json").read_text())
    for q in release["data"]:
        q.pop("ocr_tokens", None)
    ann = tmp_path / "TextVQA_0.5.1_val.json"
    ann.write_text(json.dumps(release))
    out = tmp_path / "tv.jsonl"
    module = script("prep_textvqa")
    assert module.run(module.main, [str(ann), "--ocr", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ocr_tokens" in err and "--ocr-file" in err
    assert not out.exists()
    rosetta = tmp_path / "TextVQA_Rosetta_OCR_v0.2_val.json"
    rosetta.write_text(json.dumps({"data": [
        {"image_id": "003a8ae2ef43b901", "ocr_tokens": ["NIKON", "D3100"], "ocr_info": []},
        {"image_id": "00685bc495504d61", "ocr_tokens": [], "ocr_info": []},
    ]}))  # fmt: skip
    records, log = prep("prep_textvqa", [str(ann), "--ocr-file", str(rosetta), "--out", str(out)], capsys)
    assert [r["meta"]["ocr_tokens"] for r in records] == [["NIKON", "D3100"], [], []]
    assert "records without OCR tokens (none for their image): 1" in log  # image 0101
    assert textvqa_prompt(records[0]).splitlines()[1] == "Reference OCR token: NIKON, D3100"


def test_textvqa_llava_answers_for_one_question_asked_twice_on_an_image(tmp_path):
    # two TextVQA questions with the same image and text (ids 1, 2): eval_textvqa.py keys by (image,
    # question) and scores both answers. Record 1: 10 x "nokia"; record 2: 8 x "nokia", 2 x "samsung".
    # "Nokia" -> 1.0 on either; "Samsung" -> min(1, 2/3) left-one-out mean on record 2 = 0.6 (LLaVA's
    # dict keeps record 2 for the key, so it scores "Samsung" there too). Mean 1.6 / 2 -> 80.00
    records = [
        {"id": f"textvqa-{i}", "task": "vqa", "image": "img1.jpg", "question": "What brand?", "answers": answers,
         "meta": {"question_id": i, "image_id": "img1"}}
        for i, answers in ((1, ["nokia"] * 10), (2, ["nokia"] * 8 + ["samsung"] * 2))
    ]  # fmt: skip
    data = tmp_path / "tv.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    prompt = "what brand?\nAnswer the question using a single word or phrase."
    answers = [{"question_id": "img1", "prompt": prompt, "text": t} for t in ("Nokia", "Samsung")]
    m = evaluate("textvqa", data, answers, tmp_path)
    assert (m["accuracy"], m["count"]) == (80.0, 2)
    rows = [json.loads(x) for x in (tmp_path / "textvqa_eval" / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prediction"]) for r in rows] == [("textvqa-1", "Nokia"), ("textvqa-2", "Samsung")]
    # a third answer for the pair has no record left: refused in one line
    assert cli.main(["eval", "textvqa", "--predictions", str(_jsonl(tmp_path, answers + answers[:1])),
                     "--data", str(data), "--out", str(tmp_path / "x")]) == 2  # fmt: skip


def _jsonl(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vizwiz_prep_eval_and_submission(tmp_path, capsys):
    out = tmp_path / "vizwiz.jsonl"
    records, _ = prep("prep_vizwiz", [str(FIXTURES / "vizwiz_val.json"), "--out", str(out)], capsys)
    assert records[1]["answer_type"] == "unanswerable" and records[1]["meta"]["answerable"] == 0
    preds = [
        {"id": r["id"], "prediction": p} for r, p in zip(records, ["Coca-Cola", "Unanswerable", "No.", "Two"])
    ]
    # Coca-Cola -> "coca cola", 4 humans wrote exactly that -> 1.0; unanswerable 9 -> 1.0; no 10 -> 1.0;
    # "Two" -> "2": only 2 humans wrote "2" (8 wrote "two", compared as released) -> 0.6. Mean 0.9
    m = evaluate("vizwiz", out, preds, tmp_path)
    assert m["accuracy"] == 90.0
    assert m["per_answer_type"] == {"number": 60.0, "other": 100.0, "unanswerable": 100.0, "yes/no": 100.0}
    sub = json.loads((tmp_path / "vizwiz_eval" / "submission.json").read_text())
    assert sub[0] == {"image": "VizWiz_val_00000000.jpg", "answer": "coca cola"}
    lenient = evaluate("vizwiz", out, preds, tmp_path, "--scoring", "lenient")
    assert lenient["accuracy"] == 100.0  # "two" -> "2" on the human side too


def test_mme_prep_then_llava_answers(tmp_path, capsys):
    out = tmp_path / "mme.jsonl"
    records, log = prep("prep_mme", [str(FIXTURES / "MME"), "--out", str(out)], capsys)
    assert "wrote 8 records" in log
    assert {r["meta"]["category"] for r in records} == {"existence", "artwork", "code_reasoning"}
    say = {
        "Is there a train": "Yes",
        "Is there a bed": "No, there is no bed.",  # image 1: both right
        "Is there a dog": "Yes",
        "Is there a cat": "yes",  # image 2: one right
        "Is this artwork created by Titian": "The answer is yes",  # "the " -> other (wrong)
        "Is this artwork created by Monet": "no",
        "Is the output 5": "Yes",
        "Is the output 7": "Nope",
    }
    answers = []
    for r in records:
        text = next(v for k, v in say.items() if r["question"].startswith(k))
        prompt = r["question"] + "\nAnswer the question using a single word or phrase."
        answers.append({"question_id": r["meta"]["question_id"], "prompt": prompt, "text": text})
    m = evaluate("mme", out, answers, tmp_path)
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125; artwork: 50 + 0 -> 50; code_reasoning: 100 + 100
    assert m["per_subtask"]["existence"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "other": 0}
    assert m["per_subtask"]["artwork"]["score"] == 50.0 and m["per_subtask"]["artwork"]["other"] == 1
    assert (m["perception"], m["cognition"], m["incomplete_images"]) == (175.0, 200.0, 0)


def _released_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_mmbench_circular_eval_and_upload_sheet(tmp_path, capsys):
    out = tmp_path / "mmbench.jsonl"
    argv = [str(FIXTURES / "mmbench_dev.tsv"), "--images", str(tmp_path / "img"), "--out", str(out)]
    records, log = prep("prep_mmbench", argv, capsys)
    assert (
        "wrote 6 records" in log
        and (tmp_path / "img" / "1.png").is_file()
        and (tmp_path / "img" / "2.jpg").is_file()
    )
    assert [r["answer"] for r in records] == ["B", "A", "D", "C", "A", "B"]
    # LLaVA answers: question_id = TSV index. Question 1, all 4 rotations right ("A." strips to A; "The
    # answer is D."; "horse" is inside option C only); question 2: "no" in rotation 2 picks A (gold B)
    texts = {1: "B", 1000001: "A.", 2000001: "The answer is D.", 3000001: "horse", 2: "yes", 1000002: "no"}
    answers = [
        {"question_id": r["meta"]["index"], "round_id": 0, "text": texts[r["meta"]["index"]]} for r in records
    ]
    m = evaluate("mmbench", out, answers, tmp_path)
    assert (m["accuracy"], m["vanilla_accuracy"], m["questions"], m["unparsed"]) == (50.0, 100.0, 2, 0)
    assert m["per_category"] == {"attribute_recognition": 0.0, "object_localization": 100.0}
    from openpyxl import load_workbook

    sheet = list(load_workbook(tmp_path / "mmbench_eval" / "submission.xlsx").active.values)
    assert sheet[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split")
    assert sheet[1] == (1, "Which animal is shown?", "cow", "horse", "sheep", "pig", "B", "B", "dev")
    assert len(sheet) == 7


def test_mmbench_test_split_rows_without_answer_have_no_gold(tmp_path, capsys):
    # the test TSVs have no answer: '' (and a bad 'AB') is not a letter, whatever "ABCD" contains
    rows = _released_rows(FIXTURES / "mmbench_dev.tsv")[:2]
    col = rows[0].index("answer")
    tsv = tmp_path / "test.tsv"
    with open(tsv, "w", newline="") as f:
        body = [rows[1][:col] + [gold] + rows[1][col + 1 :] for gold in ("", "AB")]
        for i, r in enumerate(body):
            r[0] = str(i + 1)
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows([rows[0]] + body)
    argv = [str(tsv), "--images", str(tmp_path / "i"), "--rotate", "--out", str(tmp_path / "t.jsonl")]
    records, log = prep("prep_mmbench", argv, capsys)
    assert "rows whose answer is not one of their option letters (kept without a gold answer): 1" in log
    assert len(records) == 8 and not any("answer" in r or "tsv_answer" in r["meta"] for r in records)


def test_mmbench_rotate_matches_the_released_copies(tmp_path, capsys):
    rows = _released_rows(FIXTURES / "mmbench_dev.tsv")
    originals = tmp_path / "orig.tsv"
    with open(originals, "w", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(
            [rows[0]] + [r for r in rows[1:] if int(r[0]) < 10**6]
        )
    out = tmp_path / "rot.jsonl"
    records, _ = prep(
        "prep_mmbench",
        [str(originals), "--images", str(tmp_path / "i"), "--rotate", "--out", str(out)],
        capsys,
    )
    by_id = {r["id"]: r for r in records}
    assert len(records) == 6
    # LLaVA --all-rounds round 1 = the release's copy 1000001: options shifted by one, answer B -> A
    assert (
        by_id["mmbench-1-r1"]["choices"] == ["horse", "sheep", "pig", "cow"]
        and by_id["mmbench-1-r1"]["answer"] == "A"
    )
    assert by_id["mmbench-1-r3"]["answer"] == "C" and by_id["mmbench-2-r1"]["answer"] == "B"
    answers = [
        {"question_id": r["meta"]["index"], "round_id": r["meta"]["llava_round"], "text": "B"}
        for r in records
    ]
    m = evaluate("mmbench", out, answers, tmp_path)  # "B" everywhere: only round 0 of question 1 is right
    assert (m["accuracy"], m["vanilla_accuracy"]) == (0.0, 50.0)


def _mmbench_rows(rounds: dict[int, list[int]], right: bool = True) -> list[dict]:
    """Rows of ``score_mmbench`` for questions ``{group: [rounds present]}`` over 2 options; all right."""
    rows = []
    for group, present in rounds.items():
        for r in present:
            answer = "AB"[r % 2]
            pred = answer if right else "AB"[(r + 1) % 2]
            rows.append({"prediction": pred, "choices": ["x", "y"], "answer": answer, "group": group, "round": r,
                         "category": f"c{group}"})  # fmt: skip
    return rows


def test_mmbench_incomplete_rotations_are_left_out_of_circular_eval_and_counted():
    # question 1 has both its rotations (right), question 2 only round 0 (right): CircularEval needs every
    # rotation, so question 2 has no CircularEval verdict; it is counted, not scored as circular-correct
    rows = _mmbench_rows({1: [0, 1], 2: [0]}) + _mmbench_rows({3: [0, 1]}, right=False)
    m = score_mmbench(rows)
    assert (m["accuracy"], m["vanilla_accuracy"], m["questions"], m["incomplete_questions"]) == (
        50.0,
        66.67,
        2,
        1,
    )
    assert m["circular"] is True and m["per_category"] == {"c1": 100.0, "c3": 0.0}
    assert "1 question(s)" in m["note"] and "left out" in m["note"]
    m = score_mmbench(_mmbench_rows({1: [0, 1], 2: [0, 1]}))
    assert (m["accuracy"], m["incomplete_questions"], m["circular"], "note" in m) == (100.0, 0, True, False)


def test_mmbench_without_rotations_says_accuracy_is_not_circular():
    m = score_mmbench(_mmbench_rows({1: [0], 2: [0]}))  # prepared without --rotate
    assert (m["accuracy"], m["vanilla_accuracy"], m["circular"], m["incomplete_questions"]) == (
        100.0,
        100.0,
        False,
        2,
    )
    assert "not CircularEval" in m["note"] and "--rotate" in m["note"]


def test_seed_prep_eval_and_submission(tmp_path, capsys):
    out = tmp_path / "seed.jsonl"
    records, log = prep("prep_seed", [str(FIXTURES / "SEED-Bench.json"), "--out", str(out)], capsys)
    assert "wrote 3 records" in log and "1 x video question (image subset only)" in log
    assert records[0]["meta"]["question_type"] == "Scene Understanding"
    answers = [{"question_id": q, "text": t} for q, t in [("101669", "A"), ("101670", "B."), ("101671", "D")]]
    m = evaluate("seed-bench", out, answers, tmp_path)
    # "B." is not "B" (exact comparison): 2 of 3; Scene Understanding 2/2, Instance Identity 0/1
    assert m["accuracy"] == 66.67
    assert m["per_question_type"] == {"Instance Identity": 0.0, "Scene Understanding": 100.0}
    lines = (tmp_path / "seed-bench_eval" / "submission.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"question_id": "101670", "prediction": "B."}


def test_lenient_on_a_benchmark_without_variants_is_an_error(tmp_path, capsys):
    argv = [
        "eval",
        "coco-caption",
        "--predictions",
        str(tmp_path / "x.jsonl"),
        "--data",
        "x",
        "--scoring",
        "lenient",
    ]
    assert cli.main(argv) == 2
    assert "no --scoring lenient variant" in capsys.readouterr().err
