"""VQA accuracy (Antol et al., ICCV 2015; VQAv2, Goyal et al., CVPR 2017) as the official evaluator computes it.

Answers are normalised (punctuation, number words, articles, contractions), then

    acc(a) = 1/N * sum_{i=1..N} min(1, #{j != i : gt_j == a} / 3)

i.e. min(#humans who said ``a`` / 3, 1) averaged over the N leave-one-out subsets of the N (= 10)
human answers: 1 of 10 humans -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.

Normalisation follows GT-Vision-Lab/VQA ``vqaEval.py`` (punctuation list, period/comma regexes,
number-word map, articles, contraction map), with two documented choices:
- prediction and every human answer go through the same full normalisation (the official script only
  punctuation-strips human answers, and only when they disagree; the released annotations are already
  in that form, so this changes nothing there but makes scoring symmetric);
- a contraction written with an apostrophe ("don't") is the same answer as without ("dont"): both map to
  the contraction map's form, with a straight apostrophe.
A single reference answer (non-VQAv2 data, e.g. the shapes default) is scored by exact match.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from vlmtune.eval.errors import EvalError

# apostrophe-free spelling -> contraction (the official map, curly quotes made straight)
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
    "he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's "
    "should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've "
    "someone'll someone's something'd something'd've something'll that's there'd there'd've there're there's "
    "they'd they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's "
    "what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't "
    "would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've"
)
CONTRACTIONS: dict[str, str] = {c.replace("'", ""): c for c in _CONTRACTIONS.split()}
# the official map is keyed without apostrophes except "let's" / "she's" / "somebody'd"; "lets" / "shes"
# / "somebodyd" are not keys there, keep them as plain words
for _word in ("lets", "shes", "somebodyd"):
    CONTRACTIONS.pop(_word)
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
PERIOD_STRIP = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("yes." -> "yes", "2.5" kept)
DIGIT_COMMA = re.compile(r"\d,\d")  # "1,000": punctuation is deleted instead of replaced by a space
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_WORD_WITH_APOSTROPHE = re.compile(r"[\w']*'[\w']*")


def _join_contraction(match: re.Match) -> str:
    word = match.group(0)
    bare = word.replace("'", "")
    return bare if bare.lower() in CONTRACTIONS else word


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop or space out punctuation marks, strip sentence periods."""
    out = text
    delete_all = DIGIT_COMMA.search(text) is not None
    for p in PUNCTUATION:
        if delete_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out)


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits, drop articles, contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """Full normalisation of one answer: whitespace, punctuation, digits, articles, contractions."""
    text = str(text).replace("\n", " ").replace("\t", " ").strip().translate(_APOSTROPHES)
    text = _WORD_WITH_APOSTROPHE.sub(_join_contraction, text)
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Leave-one-out VQA accuracy of ``prediction`` against the human ``answers`` (in [0, 1])."""
    if not answers:
        raise EvalError("VQA accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    hits = sum(g == pred for g in gts)
    # leaving out a matching answer leaves hits - 1 matches, leaving out another leaves hits
    total = sum(min(1.0, (hits - (g == pred)) / 3.0) for g in gts)
    return total / len(gts)


def score_vqa(rows: list[dict]) -> dict:
    """Overall and per-answer-type (and per-question-type) VQA accuracy in percent.

    ``rows``: dicts with ``prediction``, ``answers`` and optional ``answer_type`` / ``question_type``.
    """
    if not rows:
        raise EvalError("no predictions to score")
    per_answer_type: dict[str, list[float]] = defaultdict(list)
    per_question_type: dict[str, list[float]] = defaultdict(list)
    accs = []
    for row in rows:
        acc = vqa_accuracy(row["prediction"], row["answers"])
        row["accuracy"] = acc
        accs.append(acc)
        if row.get("answer_type"):
            per_answer_type[row["answer_type"]].append(acc)
        if row.get("question_type"):
            per_question_type[row["question_type"]].append(acc)

    def pct(xs: list[float]) -> float:
        return round(100.0 * sum(xs) / len(xs), 2)

    return {
        "accuracy": pct(accs),
        "per_answer_type": {k: pct(v) for k, v in sorted(per_answer_type.items())},
        "per_question_type": {k: pct(v) for k, v in sorted(per_question_type.items())},
        "count": len(accs),
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
    """Official test-dev submission: ``[{"question_id": int, "answer": normalised answer}]``
    (non-numeric ids, e.g. of the shapes default, are kept as they are)."""
    return [
        {"question_id": _official_id(r["question_id"]), "answer": normalize_answer(r["prediction"])}
        for r in rows
    ]
