"""VQA accuracy (Antol et al., ICCV 2015; VQAv2, Goyal et al., CVPR 2017) exactly as GT-Vision-Lab/VQA
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` computes it:

    acc(a) = 1/N * sum_{i=1..N} min(1, #{j != i : gt_j == a} / 3)

i.e. min(#humans who said ``a`` / 3, 1) averaged over the N leave-one-out subsets of the N (= 10) human
answers: 1 of 10 humans -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0. Overall and per-type numbers are
``round(100 * mean, 2)`` of the unrounded per-question accuracies.

``scoring="official"`` (default) reproduces the evaluator, quirks included:
- the prediction: newlines/tabs -> spaces, strip, ``processPunctuation`` then ``processDigitArticle``;
- the human answers: only ``processPunctuation``, and only when they are not all identical (no lower-casing,
  no number words, no articles: the released annotations are already in that form);
- the punctuation list is ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` (no ``:`` and no ``'``); a mark is
  deleted when the *original* text has it next to a space, or when the text has a digit-comma-digit
  anywhere ("1,000"), else replaced by a space;
- the period regex is ``(?!<=\\d)(\\.)(?!\\d)``: ``(?!<=\\d)`` is a look-*ahead* (a typo for a
  look-behind) so it never fires, and a period is removed whenever no digit follows ("5." -> "5", "2.5"
  kept, "a.m." -> "am"); the call passes ``re.UNICODE`` (= 32) as ``count``, so at most 32 periods go;
- number words none/zero..ten -> digits and articles a/an/the are dropped after lower-casing; the
  contraction map is keyed on apostrophe-free spellings ("dont" -> "don't") and also maps
  "somebody'd" -> "somebodyd"; its capitalised keys ("Im", "Ive") never match lower-cased text;
- curly apostrophes are not straightened ("don\u2019t" stays as it is).

The whole generated text is scored (LLaVA's answer files keep it whole; vqaEval turns newlines into
spaces), so "yes\nno" is the answer "yes no".

``scoring="lenient"`` (documented deviations, off by default): only the first line of a generated answer
is scored, human answers go through the same full normalisation as the prediction, and curly
apostrophes are straightened first.

A single reference answer (non-VQAv2 data, e.g. the shapes default) is scored by exact match of the two
normalised answers in both modes; the official formula would give 0 (no other human left).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from vlmtune.eval.errors import EvalError

SCORING_MODES = ("official", "lenient")
# the official contraction map, "key value" pairs (keys are what a lower-cased word must equal)
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't
ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's
shouldve should've|shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's
somethingd something'd|somethingd've something'd've|something'dve something'd've|somethingll something'll
thats that's|thered there'd|thered've there'd've|there'dve there'd've|therere there're|theres there's
theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're
whats what's|whatve what've|whens when's|whered where'd|wheres where's|whereve where've|whod who'd
whod've who'd've|who'dve who'd've|wholl who'll|whos who's|whove who've|whyll why'll|whyre why're|whys why's
wont won't|wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all
yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd
youd've you'd've|you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS: dict[str, str] = dict(
    pair.split(" ") for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair.strip()
)
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# the official pattern verbatim: "(?!<=\d)" is a look-ahead that never matches before a ".", so in effect
# a period not followed by a digit
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32: the official call passes re.UNICODE as sub()'s count
DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def check_scoring(scoring: str) -> str:
    if scoring not in SCORING_MODES:
        raise EvalError(f"scoring must be one of {', '.join(SCORING_MODES)}, got '{scoring}'")
    return scoring


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop or space out punctuation marks, strip periods (at most 32)."""
    out = text
    delete_all = DIGIT_COMMA.search(text) is not None
    for p in PUNCTUATION:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str, scoring: str = "official") -> str:
    """The official normalisation of a prediction (``lenient``: curly apostrophes straightened first)."""
    text = str(text)
    if scoring == "lenient":
        text = text.translate(_APOSTROPHES)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def reference_answers(answers: list[str], scoring: str = "official") -> list[str]:
    """Human answers as the official evaluator compares them: punctuation-processed only if they disagree
    (``lenient``: fully normalised like a prediction)."""
    if scoring == "lenient":
        return [normalize_answer(a, "lenient") for a in answers]
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return list(answers)


def leave_one_out(prediction: str, references: list[str]) -> float:
    """Mean over the N subsets of N-1 references of ``min(1, matches / 3)`` (``prediction`` already normalised)."""
    hits = sum(r == prediction for r in references)
    # leaving out a matching answer leaves hits - 1 matches, leaving out another leaves hits
    return sum(min(1.0, (hits - (r == prediction)) / 3.0) for r in references) / len(references)


def vqa_accuracy(prediction: str, answers: list[str], scoring: str = "official") -> float:
    """Leave-one-out VQA accuracy of ``prediction`` against the human ``answers`` (in [0, 1])."""
    if not answers:
        raise EvalError("VQA accuracy needs at least one reference answer")
    check_scoring(scoring)
    answers = [str(a) for a in answers]
    pred = normalize_answer(prediction, scoring)
    if len(answers) == 1:  # non-VQAv2 data: exact match after normalisation (see the module docstring)
        return float(pred == normalize_answer(answers[0], scoring))
    return leave_one_out(pred, reference_answers(answers, scoring))


def evalai_answer(text: str) -> str:
    """The EvalAI answer processor (LLaVA ``m4c_evaluator.EvalAIAnswerProcessor``, from pythia): lower-case,
    delete every "," and "?", split "'s" off as " 's", then newlines/tabs -> spaces, strip, and the official
    punctuation and digit/article steps. LLaVA applies it to VQAv2/VizWiz submissions and TextVQA scoring."""
    text = str(text).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def percent(values: list[float]) -> float:
    """``round(100 * mean, 2)`` as the official tools report."""
    return round(100.0 * sum(values) / len(values), 2)


def score_vqa(rows: list[dict], scoring: str = "official") -> dict:
    """Overall and per-answer-type (and per-question-type) VQA accuracy in percent, as ``vqaEval.py``
    reports them (``overall``, ``perAnswerType``, ``perQuestionType`` under vlmtune's names).

    ``rows``: dicts with ``prediction``, ``answers`` and optional ``answer_type`` / ``question_type``.
    """
    if not rows:
        raise EvalError("no predictions to score")
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question_type: dict[str, list[float]] = defaultdict(list)
    accs = []
    for row in rows:
        prediction = str(row["prediction"])
        if scoring == "lenient":
            prediction = (prediction.strip().splitlines() or [""])[0]
        acc = vqa_accuracy(prediction, row["answers"], scoring)
        row["accuracy"] = acc
        accs.append(acc)
        if row.get("answer_type"):
            per_answer_type[row["answer_type"]].append(acc)
        if row.get("question_type"):
            per_question_type[row["question_type"]].append(acc)

    return {
        "accuracy": percent(accs),
        "per_answer_type": {k: percent(v) for k, v in sorted(per_answer_type.items())},
        "per_question_type": {k: percent(v) for k, v in sorted(per_question_type.items())},
        "count": len(accs),
        "scoring": scoring,
    }


# ---------------------------------------------------------------- official file formats
def _read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def load_official(questions_path: str | Path, annotations_path: str | Path | None = None) -> dict[int, dict]:
    """Official VQAv2 questions (+ annotations) JSON -> ``{question_id: {question, image_id, answers, ...}}``.

    Without annotations (test-dev) the entries have no ``answers``.
    """
    qdata = _read_json(questions_path, "VQA questions")
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise EvalError(f"{questions_path}: not an official VQA questions file (no 'questions' list)")
    subtype = str(qdata.get("data_subtype", ""))
    out: dict[int, dict] = {}
    for i, q in enumerate(qdata["questions"]):
        missing = [k for k in ("question_id", "image_id", "question") if k not in q]
        if missing:
            raise EvalError(f"{questions_path}: questions[{i}] has no '{missing[0]}'")
        out[int(q["question_id"])] = {
            "question_id": int(q["question_id"]),
            "image_id": int(q["image_id"]),
            "question": q["question"],
            "data_subtype": subtype,
        }
    if annotations_path is None:
        return out
    adata = _read_json(annotations_path, "VQA annotations")
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        raise EvalError(f"{annotations_path}: not an official VQA annotations file (no 'annotations' list)")
    for i, a in enumerate(adata["annotations"]):
        qid = a.get("question_id")
        if qid is None or not isinstance(a.get("answers"), list):
            raise EvalError(f"{annotations_path}: annotations[{i}] needs 'question_id' and an 'answers' list")
        if int(qid) not in out:
            raise EvalError(
                f"{annotations_path}: annotations[{i}] question_id {qid} is not in {questions_path}"
            )
        out[int(qid)].update(
            answers=[str(x["answer"]) for x in a["answers"]],
            answer_type=a.get("answer_type", ""),
            question_type=a.get("question_type", ""),
            multiple_choice_answer=a.get("multiple_choice_answer", ""),
        )
    return out


def load_results(path: str | Path) -> dict[int, str]:
    """Official results JSON (a list of ``{"question_id", "answer"}``) -> ``{question_id: answer}``."""
    data = _read_json(path, "VQA results")
    if not isinstance(data, list):
        raise EvalError(f"{path}: a VQA results file is a JSON list of {{'question_id', 'answer'}} objects")
    out: dict[int, str] = {}
    for i, r in enumerate(data):
        if not isinstance(r, dict) or "question_id" not in r or "answer" not in r:
            raise EvalError(f"{path}: entry {i} needs 'question_id' and 'answer'")
        qid = int(r["question_id"])
        if qid in out:
            raise EvalError(f"{path}: entry {i} repeats question_id {qid}")
        out[qid] = str(r["answer"])
    return out


def _official_id(qid):
    return int(qid) if isinstance(qid, int) or str(qid).isdigit() else qid


def submission(rows: list[dict]) -> list[dict]:
    """Test-dev submission entries as LLaVA's ``convert_vqav2_for_submission.py`` writes them:
    ``[{"question_id": int, "answer": EvalAI-processed answer}]`` (non-numeric ids, e.g. of the shapes
    default, are kept as they are), one per evaluated question; that script also lists every other
    test2015 question with ``''``: ``data_prep/pad_vqav2_submission.py`` does that."""
    return [
        {"question_id": _official_id(r["question_id"]), "answer": evalai_answer(r["prediction"])}
        for r in rows
    ]
