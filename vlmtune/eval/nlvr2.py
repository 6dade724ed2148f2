"""NLVR2 (Suhr et al., 2019) accuracy and the ``shapes-vl`` multi-task benchmark of VL-BART.

* ``nlvr2``: records ``{"task": "nlvr", "images": [left, right], "sentence"|"question", "answer":
  true/false}``; the generated text is read as true/false (``yes``/``no`` accepted) and compared with
  the gold label; accuracy in percent like the other benchmarks.
* ``shapes-vl``: a mixed record set (VL-Adapter's multi-task evaluation on the shapes default):
  VQA accuracy on ``vqa`` records, CIDEr (and BLEU/ROUGE) on ``caption`` records, NLVR accuracy on
  ``nlvr`` records. ``accuracy`` is the VQA accuracy, so it stays the headline number.
"""

from __future__ import annotations

from vlmtune.eval import vqa
from vlmtune.eval.benchmarks import Benchmark, _caption_refs, _score_captions, _vqa_refs, first_line, register
from vlmtune.eval.errors import EvalError

TRUE_WORDS = {"true", "yes", "1"}
FALSE_WORDS = {"false", "no", "0"}


def parse_true_false(text: str, record: dict | None = None) -> str:
    """First word of the answer -> ``true`` / ``false`` (anything else is kept, and scores 0)."""
    words = first_line(text).lower().strip(" .!").split()
    word = words[0] if words else ""
    return "true" if word in TRUE_WORDS else "false" if word in FALSE_WORDS else word


def gold_label(record: dict) -> str:
    answer = record.get("answer", record.get("label"))
    if isinstance(answer, bool):
        return "true" if answer else "false"
    label = parse_true_false(str(answer))
    if label not in ("true", "false"):
        raise EvalError(f"record {record.get('id')!r}: NLVR2 answer must be true/false, got {answer!r}")
    return label


def nlvr_prompt(record: dict) -> str:
    return str(record.get("sentence") or record.get("question") or "")


def _nlvr_refs(record: dict) -> dict:
    return {"answer": gold_label(record)}


def score_nlvr2(rows: list[dict]) -> dict:
    if not rows:
        raise EvalError("no predictions to score")
    hits = [float(r["prediction"] == r["answer"]) for r in rows]
    for r, h in zip(rows, hits):
        r["accuracy"] = h
    return {"accuracy": round(100.0 * sum(hits) / len(hits), 2), "count": len(rows)}


# ---------------------------------------------------------------- shapes-vl (multi-task)
def _vl_prompt(record: dict) -> str:
    return nlvr_prompt(record) if record.get("task") != "caption" else "caption"


def _vl_parse(text: str, record: dict) -> str:
    return parse_true_false(text) if record.get("task") == "nlvr" else first_line(text)


SHAPES_VL_TASKS = ("vqa", "caption", "nlvr")  # what score_shapes_vl scores


def _vl_refs(record: dict) -> dict:
    task = record.get("task")
    if task not in SHAPES_VL_TASKS:  # scored by nothing: refused, not a silent "no metric"
        raise EvalError(
            f"record '{record.get('id')}' is a {task} record; shapes-vl scores {', '.join(SHAPES_VL_TASKS)} records"
        )
    refs = (
        _caption_refs(record)
        if task == "caption"
        else _nlvr_refs(record)
        if task == "nlvr"
        else _vqa_refs(record)
    )
    return {"task": task, **refs}


def score_shapes_vl(
    rows: list[dict], caption_metrics=("bleu", "rouge", "cider"), tokenizer: str = "ptb"
) -> dict:
    """``accuracy`` (VQA), ``CIDEr`` ... (captions), ``nlvr_accuracy``, per-task counts."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    out: dict = {"count": len(rows), "per_task_count": {t: len(v) for t, v in by_task.items()}}
    if by_task.get("vqa"):
        out["accuracy"] = vqa.score_vqa(by_task["vqa"])["accuracy"]
    if by_task.get("caption"):
        captions = _score_captions(by_task["caption"], metrics=caption_metrics, tokenizer=tokenizer)
        captions.pop("count")  # the caption records only; ``count`` stays the number of all rows
        out.update(captions)
    if by_task.get("nlvr"):
        out["nlvr_accuracy"] = score_nlvr2(by_task["nlvr"])["accuracy"]
    return out


register(
    Benchmark(
        "nlvr2", "nlvr", nlvr_prompt, parse_true_false, _nlvr_refs, score_nlvr2, ("answer",),
        description="NLVR2 true/false accuracy (two images per example)", defaults={"max_new_tokens": 4},
    ),
    overwrite=True,
)  # fmt: skip
register(
    Benchmark(
        "shapes-vl", "multi", _vl_prompt, _vl_parse, _vl_refs, score_shapes_vl,
        description="VL-BART multi-task on shapes: VQA accuracy, caption CIDEr, NLVR accuracy",
        defaults={"max_new_tokens": 20},
    ),
    overwrite=True,
)  # fmt: skip
