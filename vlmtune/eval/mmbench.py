"""MMBench (Liu et al., 2023) dev-set CircularEval and the upload sheet, as LLaVA-1.5 evaluates it.

Prompt (``llava/eval/model_vqa_mmbench.py --single-pred-prompt``): the hint (if any) and the question on
separate lines, ``A. option`` lines, then "Answer with the option's letter from the given choices
directly.". CircularEval: every question is asked once per rotation of its options (the released TSVs
carry the rotated copies as rows with ``index + k * 1,000,000``; ``prep_mmbench.py --rotate`` makes them
like LLaVA's ``--all-rounds``); a question counts as right only if every rotation is right. A question
without all its rotations (one per option; e.g. cut by ``--max-samples``) has no CircularEval verdict: it
is left out of ``accuracy`` and counted in ``incomplete_questions``; when no question is complete (data
prepared without ``--rotate``), ``circular`` is False, ``accuracy`` is the round-0 accuracy and ``note``
says so.

Letter extraction is ``auto_parse_answer`` of LLaVA's ``llava/eval/eval_mmbench.py``: the answer with
periods and spaces stripped from its ends and upper-cased is an option letter; else the first letter X
with "the answer is x." in the lower-cased answer; else the only option whose text *contains* the answer
(case-insensitive; an empty answer is in every option, so it fails unless there is one option). LLaVA
and the MMBench server then ask ChatGPT about what is left; vlmtune counts it wrong and reports
``unparsed``. The upload file is LLaVA's ``convert_mmbench_for_submission.py`` sheet (``submission.xlsx``:
index, question, A-D, prediction, answer/split when present; one row per released row). With
``--all-rounds`` LLaVA's sheet keeps the last round's text for an index (its letters refer to rotated
options); vlmtune writes round 0's, the one asked with the released option order.
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.benchmarks import MCQ_LETTER, Benchmark, register, remap_answers, stripped
from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring, percent

OPTION_LETTERS = "ABCD"
ROUND_STRIDE = 1_000_000  # circular copies in the released TSVs: index + round * 1e6


def mmbench_prompt(record: dict) -> str:
    hint = str((record.get("meta") or {}).get("hint") or "").strip()
    lines = ([hint] if hint else []) + [record["question"]]
    lines += [f"{OPTION_LETTERS[i]}. {c}" for i, c in enumerate(record["choices"])]
    return "\n".join(lines + [MCQ_LETTER])


def parse_letter(text: str, choices: list[str]) -> str:
    """eval_mmbench.py ``auto_parse_answer``: a displayed option letter or ``""``.

    The letter rule is membership in the list of option letters (one letter), not a substring of "ABCD":
    "AB" is no letter and falls through to the option-text rule."""
    letters = list(OPTION_LETTERS[: len(choices)])
    answer = str(text)
    head = answer.strip(".").strip().upper()
    if head in letters:
        return head
    lowered = answer.lower()
    for letter in letters:
        if f"the answer is {letter}.".lower() in lowered:
            return letter
    matched = [letters[i] for i, c in enumerate(choices) if lowered in str(c).lower()]
    return matched[0] if len(matched) == 1 else ""


def _complete(rows: list[dict]) -> bool:
    """A question has every rotation CircularEval asks: rounds ``0 .. #options - 1``."""
    return {int(r.get("round", 0)) for r in rows} == set(range(len(rows[0]["choices"])))


def _circular_note(incomplete: int, circular: bool) -> str:
    if not circular:
        return (
            "not CircularEval: no question has all its option rotations (prepare with prep_mmbench.py "
            "--rotate or use the release's circular rows); accuracy is the round-0 (vanilla) accuracy"
        )
    return f"{incomplete} question(s) lack some of their option rotations and are left out of the CircularEval accuracy"


def score_mmbench(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``prediction``, ``choices``, ``answer`` (displayed letter), ``group``, ``round``,
    ``category``, ``l2_category``. ``accuracy`` is CircularEval over the questions with all their rotations
    (as many as options; the others are counted in ``incomplete_questions``, not scored);
    ``vanilla_accuracy`` uses round 0 only. Without any complete question ``circular`` is False and
    ``accuracy`` is the vanilla accuracy, said in ``note``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        row["parsed"] = parse_letter(row["prediction"], row["choices"])
        row["correct"] = row["parsed"] == str(row["answer"]).strip()
        groups[str(row["group"])].append(row)
    complete = {g: rs for g, rs in groups.items() if _complete(rs)}
    circular = bool(complete)
    scored = (
        complete
        if circular
        else {g: [r for r in rs if int(r.get("round", 0)) == 0] for g, rs in groups.items()}
    )
    verdict = {g: all(r["correct"] for r in rs) for g, rs in scored.items() if rs}
    per_cat: dict[str, dict[str, list[float]]] = {
        "category": defaultdict(list),
        "l2_category": defaultdict(list),
    }
    for g, hit in verdict.items():
        for key, table in per_cat.items():
            if scored[g][0].get(key):
                table[scored[g][0][key]].append(float(hit))
    first = [float(r["correct"]) for r in rows if int(r.get("round", 0)) == 0]
    incomplete = len(groups) - len(complete)
    out = {
        "accuracy": percent([float(v) for v in verdict.values()]) if verdict else 0.0,
        "vanilla_accuracy": percent(first) if first else 0.0,
        "per_category": {k: percent(v) for k, v in sorted(per_cat["category"].items())},
        "per_l2_category": {k: percent(v) for k, v in sorted(per_cat["l2_category"].items())},
        "circular": circular,
        "questions": len(verdict),
        "incomplete_questions": incomplete,
        "count": len(rows),
        "unparsed": sum(not r["parsed"] for r in rows),
        "scoring": scoring,
    }
    if incomplete:
        out["note"] = _circular_note(incomplete, circular)
    return out


def mmbench_submission(rows: list[dict]) -> list[dict]:
    """One sheet row per released TSV row (LLaVA's --all-rounds extra rounds are not released rows)."""
    out = []
    for r in rows:
        if not r.get("released", True):
            continue
        entry = {"index": r["index"], "question": r["tsv_question"]}
        entry.update({k: r["options"].get(k) for k in OPTION_LETTERS})
        entry["prediction"] = r["prediction"]
        for key in ("tsv_answer", "split"):
            if r.get(key) is not None:
                entry[key.replace("tsv_", "")] = r[key]
        out.append(entry)
    return out


def adapt_llava_answers(predictions: list[dict], records: list[dict]) -> list[dict]:
    """LLaVA MMBench answers (``question_id`` = TSV index, ``round_id``) -> ``{id, prediction}``."""
    if not predictions or "id" in predictions[0]:
        return predictions
    return remap_answers(
        predictions,
        records,
        lambda r: (str((r.get("meta") or {}).get("index")), int((r.get("meta") or {}).get("llava_round", 0))),
        lambda p: (str(p.get("question_id")), int(p.get("round_id", 0))),
        lambda key: f"MMBench record for index {key[0]} round {key[1]}",
    )


def _refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "answer": record.get("answer"),
        "choices": record.get("choices"),
        "group": meta.get("group", record["id"]),
        "round": meta.get("round", 0),
        "category": meta.get("category", ""),
        "l2_category": meta.get("l2_category", ""),
        "index": meta.get("index"),
        "tsv_question": meta.get("tsv_question", record.get("question")),
        "options": meta.get("options") or dict(zip(OPTION_LETTERS, record.get("choices") or [])),
        "tsv_answer": meta.get("tsv_answer"),
        "split": meta.get("split"),
        "released": meta.get("released", True),
    }


register(
    Benchmark(
        "mmbench", "mcq", mmbench_prompt, stripped, _refs, score_mmbench, ("answer",),
        submission=mmbench_submission, submission_file="submission.xlsx",
        description="MMBench CircularEval accuracy per category (LLaVA eval_mmbench.py parser) + upload sheet",
        adapt_predictions=adapt_llava_answers,
    ),
    overwrite=True,
)  # fmt: skip
