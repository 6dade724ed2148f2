"""Benchmark registry: name -> prompt builder (LLaVA-1.5 prompts), answer parser, reference fields, scorer.

Others add benchmarks (e.g. ``nlvr2``, ``pin-loc``) with :func:`register`. A benchmark turns a vlmtune
record (docs/ARCHITECTURE.md) into the user prompt the pipeline sees (``record["prompt"]``), parses the
generated text into an answer, and scores rows ``{id, prediction, **references(record)}``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from vlmtune.eval import caption, gqa, pope, scienceqa, vqa
from vlmtune.eval.errors import EvalError

SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_LETTER = "Answer with the option's letter from the given choices directly."
SHORT_CAPTION = "Provide a one-sentence caption for the provided image."


@dataclass(frozen=True)
class Benchmark:
    name: str
    task: str  # the record task it reads (vqa | mcq | caption | ...)
    prompt: Callable[[dict], str]  # record -> user prompt text (the pipeline adds the image token)
    parse: Callable[[str, dict], str]  # (generated text, record) -> answer
    references: Callable[[dict], dict]  # record -> fields kept with the prediction and given to score
    score: Callable[..., dict]  # (rows, **options) -> metrics
    required: tuple[str, ...] = ()  # record fields needed to score
    submission: Callable[[list[dict]], list] | None = None  # rows -> official upload file
    description: str = ""
    defaults: dict = field(default_factory=dict)  # e.g. max_new_tokens
    # (entries of a published answers/results file, records) -> [{"id": record id, "prediction": text}]
    adapt_predictions: Callable[[list[dict], list[dict]], list[dict]] | None = None
    submission_file: str = "submission.json"  # .json (a list), .jsonl (one object a line) or .xlsx (rows)
    # (pipeline, records, batch_size) -> metrics that need the model itself (e.g. conversation loss)
    model_metrics: Callable[..., dict] | None = None


BENCHMARKS: dict[str, Benchmark] = {}
# modules that register more benchmarks when imported (owned by other areas); loaded on first lookup
EXTENSIONS = (
    "vlmtune.eval.nlvr2",
    "vlmtune.eval.pin_loc",
    "vlmtune.eval.classify",
    "vlmtune.eval.textvqa",
    "vlmtune.eval.vizwiz",
    "vlmtune.eval.mme",
    "vlmtune.eval.mmbench",
    "vlmtune.eval.seed",
    "vlmtune.eval.conversation",
)


def load_extensions() -> None:
    import importlib

    for module in EXTENSIONS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def register(benchmark: Benchmark, overwrite: bool = False) -> Benchmark:
    if benchmark.name in BENCHMARKS and not overwrite:
        raise EvalError(f"benchmark '{benchmark.name}' is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        load_extensions()
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, list(BENCHMARKS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose from {', '.join(BENCHMARKS)}"
        raise EvalError(f"unknown benchmark '{name}'; {hint}")
    return BENCHMARKS[name]


def prepare(benchmark: Benchmark, record: dict) -> dict:
    """A copy of ``record`` with the benchmark's ``prompt``; checks the fields the prompt needs."""
    if "question" not in record and benchmark.task in ("vqa", "mcq"):
        raise EvalError(f"record {record.get('id')!r} has no 'question' (benchmark {benchmark.name})")
    if benchmark.task == "mcq" and not record.get("choices"):
        raise EvalError(f"record {record.get('id')!r} has no 'choices' (benchmark {benchmark.name})")
    return {**record, "prompt": benchmark.prompt(record)}


def question_id(record: dict):
    """The official question id (``meta.question_id``) if the record has one, else its ``id``."""
    return (record.get("meta") or {}).get("question_id", record["id"])


# ---------------------------------------------------------------- prompts and parsers
def remap_answers(
    predictions: list[dict],
    records: list[dict],
    record_key: Callable[[dict], tuple],
    prediction_key: Callable[[dict], tuple],
    describe: Callable[[tuple], str],
) -> list[dict]:
    """A published answers file (LLaVA's ``{question_id, ..., text}`` lines) -> ``{id, prediction}`` rows:
    each prediction's ``prediction_key`` looked up among the records' ``record_key``; an entry with no
    record is a one-line EvalError (``describe(key)`` says what was looked for)."""
    table = {record_key(r): r["id"] for r in records}
    out = []
    for i, p in enumerate(predictions):
        key = prediction_key(p)
        if key not in table:
            raise EvalError(f"answers entry {i + 1}: no {describe(key)}")
        out.append({"id": table[key], "prediction": p.get("text", "")})
    return out


def short_answer_prompt(record: dict) -> str:
    return f"{record['question']}\n{SHORT_ANSWER}"


def mcq_prompt(record: dict) -> str:
    """LLaVA-1.5 ScienceQA (CQM-A): ``Context: hint`` (if any), question, ``A. choice`` lines, instruction."""
    hint = str((record.get("meta") or {}).get("hint") or "").strip()
    lines = [f"Context: {hint}"] if hint else []
    lines.append(record["question"])
    lines += [f"{scienceqa.LETTERS[i]}. {c}" for i, c in enumerate(record["choices"])]
    lines.append(MCQ_LETTER)
    return "\n".join(lines)


def stripped(text: str, record: dict | None = None) -> str:
    """The whole generated text, stripped (LLaVA's answer files: ``outputs.strip()``)."""
    return str(text).strip()


def first_line(text: str, record: dict | None = None) -> str:
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""


# ---------------------------------------------------------------- scorers on rows
def _vqa_refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    answers = record.get("answers") or ([record["answer"]] if record.get("answer") not in (None, "") else [])
    return {
        "question_id": question_id(record),
        "answers": [str(a) for a in answers],
        "answer_type": record.get("answer_type") or meta.get("answer_type", ""),
        "question_type": meta.get("question_type", ""),
    }


def _vqa_submission(rows: list[dict]) -> list[dict]:
    return vqa.submission(rows)


def _gqa_refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "answer": record.get("answer"),
        "types": meta.get("types") or {},
        "is_balanced": meta.get("is_balanced", True),
    }


def _pope_refs(record: dict) -> dict:
    return {"answer": record.get("answer"), "category": (record.get("meta") or {}).get("category", "")}


def _sqa_refs(record: dict) -> dict:
    meta = record.get("meta") or {}
    return {
        "answer": record.get("answer"),
        "choices": record.get("choices"),
        "has_image": bool(record.get("image")),
        "meta": {k: meta[k] for k in ("subject", "grade") if k in meta},
    }


def _caption_refs(record: dict) -> dict:
    return {
        "image_id": (record.get("meta") or {}).get("image_id", record["id"]),
        "captions": record.get("captions"),
    }


def _score_captions(rows: list[dict], metrics=caption.ALL_METRICS, tokenizer: str = "ptb") -> dict:
    preds = {r["id"]: r["prediction"] for r in rows}
    refs = {r["id"]: r["captions"] for r in rows}
    corpus, per_image = caption.score_captions(preds, refs, metrics=tuple(metrics), tokenizer=tokenizer)
    for r in rows:
        r["scores"] = per_image[r["id"]]
    return corpus


def _vqa(name: str, description: str, submission: bool) -> Benchmark:
    return Benchmark(
        name=name,
        task="vqa",
        prompt=short_answer_prompt,
        parse=stripped if submission else first_line,
        references=_vqa_refs,
        score=vqa.score_vqa,
        required=("answers",),
        submission=_vqa_submission if submission else None,
        description=description,
    )


register(_vqa("vqav2", "VQAv2 official VQA accuracy (overall, per answer type) + test-dev submission", True))
register(_vqa("shapes-vqa", "VQA accuracy on the embedded shapes default", False))
register(
    Benchmark(
        "gqa", "vqa", short_answer_prompt, lambda t, r: gqa.normalize_answer(t), _gqa_refs,
        gqa.score_gqa, ("answer",), description="GQA testdev accuracy (LLaVA conversion + official eval.py)",
    )
)  # fmt: skip
register(
    Benchmark(
        "pope", "vqa", short_answer_prompt, lambda t, r: pope.parse_yes_no(t), _pope_refs, pope.score_pope,
        ("answer",), description="POPE accuracy, precision, recall, F1, yes-ratio (LLaVA eval_pope.py parser)",
    )
)  # fmt: skip
register(
    Benchmark(
        "scienceqa", "mcq", mcq_prompt, lambda t, r: scienceqa.parse_option(t, len(r.get("choices") or [])),
        _sqa_refs, scienceqa.score_scienceqa, ("answer",), description="ScienceQA option-letter accuracy (LLaVA eval_science_qa.py)",
    )
)  # fmt: skip
register(
    Benchmark(
        "coco-caption", "caption", lambda r: SHORT_CAPTION, first_line, _caption_refs, _score_captions,
        ("captions",), description="COCO captions BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap)",
        defaults={"max_new_tokens": 32},
    )
)  # fmt: skip
