"""MME (Fu et al., 2023) perception / cognition scores as the MME ``eval_tool/calculation.py`` computes them.

Every image has two yes/no questions. The tool lower-cases the answer and reads it as ``yes`` / ``no``
if it is exactly that word, else ``yes`` if its first 4 characters contain "yes", else ``no`` if they
contain "no", else ``other`` (wrong either way): "Yes, it is" -> yes, "Not really" -> no, "None" -> no,
"I don't know" -> other, "The answer is yes" -> other. Per subtask: ``acc`` = % questions right,
``acc_plus`` = % images with both questions right, score = acc + acc_plus (max 200); ``perception`` sums
the 10 perception subtasks (max 2000), ``cognition`` the 4 cognition ones (max 800), unrounded.
LLaVA-1.5 writes its answers into the tool's per-subtask files with ``convert_answer_to_mme.py``;
a line there is ``image\\tquestion\\tgt\\tanswer`` and a newline inside an answer would break the
file, so vlmtune scores the answer up to its first newline. The tool pairs consecutive lines; vlmtune
pairs the two questions of an image by (subtask, image) and reports images without both questions in
``incomplete_images`` (they are left out of acc_plus).
"""

from __future__ import annotations

from collections import defaultdict

from vlmtune.eval.benchmarks import SHORT_ANSWER, Benchmark, register, remap_answers, stripped
from vlmtune.eval.errors import EvalError
from vlmtune.eval.vqa import check_scoring

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_yes_no_other(text: str) -> str:
    """calculation.py ``parse_pred_ans`` on the lower-cased answer."""
    answer = str(text).split("\n")[0].lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def mme_prompt(record: dict) -> str:
    """LLaVA's ``llava_mme.jsonl`` prompt: the MME question (it ends with "Please answer yes or no.")."""
    return f"{record['question']}\n{SHORT_ANSWER}"


def score_mme(rows: list[dict], scoring: str = "official") -> dict:
    """``rows``: dicts with ``prediction``, ``answer`` (yes/no), ``category`` (subtask), ``image_name``."""
    if not rows:
        raise EvalError("no predictions to score")
    check_scoring(scoring)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        gold = str(row["answer"]).strip().lower()
        if gold not in ("yes", "no"):
            raise EvalError(f"MME record {row.get('id')!r}: answer must be yes or no, got {row['answer']!r}")
        if row.get("category") not in PERCEPTION + COGNITION:
            raise EvalError(f"MME record {row.get('id')!r}: unknown subtask {row.get('category')!r}")
        row["parsed"] = parse_yes_no_other(row["prediction"])
        row["correct"] = row["parsed"] == gold
        by_task[row["category"]].append(row)
    per_task: dict[str, dict] = {}
    incomplete = 0
    for task in PERCEPTION + COGNITION:
        task_rows = by_task.get(task)
        if not task_rows:
            continue
        images: dict[str, list[bool]] = defaultdict(list)
        for r in task_rows:
            images[str(r.get("image_name"))].append(r["correct"])
        pairs = [v for v in images.values() if len(v) == 2]
        incomplete += len(images) - len(pairs)
        acc = 100.0 * sum(r["correct"] for r in task_rows) / len(task_rows)
        acc_plus = 100.0 * sum(all(v) for v in pairs) / len(pairs) if pairs else 0.0
        per_task[task] = {
            "acc": round(acc, 2), "acc_plus": round(acc_plus, 2), "score": round(acc + acc_plus, 2),
            "other": sum(r["parsed"] == "other" for r in task_rows), "_score": acc + acc_plus,
        }  # fmt: skip
    out: dict = {}
    for name, tasks in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [t for t in tasks if t in per_task]
        if present:
            out[name] = round(sum(per_task[t].pop("_score") for t in present), 2)
            out[f"{name}_subtasks"] = len(present)
    out["per_subtask"] = per_task
    out["count"] = len(rows)
    out["incomplete_images"] = incomplete
    out["scoring"] = scoring
    return out


def _question_key(text: str) -> str:
    """A question as convert_answer_to_mme.py matches it: instruction removed, spaces collapsed (its
    two-space variant of " Please answer yes or no." included)."""
    return " ".join(str(text).replace(SHORT_ANSWER, "").split())


def adapt_llava_answers(predictions: list[dict], records: list[dict]) -> list[dict]:
    """LLaVA MME answers (``question_id`` = "subtask/image.png", shared by the image's 2 questions, and
    ``prompt``) -> ``{id, prediction}`` by (question_id, question)."""
    if not predictions or "prompt" not in predictions[0]:
        return predictions
    return remap_answers(
        predictions,
        records,
        lambda r: (str((r.get("meta") or {}).get("question_id")), _question_key(r["question"])),
        lambda p: (str(p.get("question_id")), _question_key(p.get("prompt", ""))),
        lambda key: f"MME record for {key[0]!r} with question {key[1]!r}",
    )


def _refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "answer": record.get("answer"),
        "category": meta.get("category", ""),
        "image_name": meta.get("image_name", ""),
    }


register(
    Benchmark(
        "mme", "vqa", mme_prompt, stripped, _refs, score_mme, ("answer",),
        description="MME perception / cognition scores (acc + acc+ per subtask, MME calculation.py)",
        adapt_predictions=adapt_llava_answers,
    ),
    overwrite=True,
)  # fmt: skip
