"""Generation + scoring + output folder.

``run_benchmark`` generates answers with a pipeline (``pipeline.collate(records, train=False)`` then
``pipeline.generate(batch, max_new_tokens, num_beams)``, greedy when ``num_beams == 1``), parses and
scores them; ``score_predictions`` scores an existing predictions file the same way. Both write
``metrics.json``, ``predictions.jsonl`` (id, prediction, references) and, for VQAv2, ``submission.json``
(the official test-dev upload format).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vlmtune.core.io import atomic_write, atomic_write_json, read_text
from vlmtune.eval.benchmarks import Benchmark, get_benchmark, prepare
from vlmtune.eval.errors import EvalError
from vlmtune.models.base import move_batch

PREDICTION_KEYS = (
    "prediction",
    "answer",
    "text",
    "caption",
)  # ours, VQA results, LLaVA answers, COCO results
ID_KEYS = ("id", "question_id", "image_id")
SOURCE_KEY = (
    "source"  # metrics.json: {"model", "base", "data"} or {"predictions", "data"}: what was evaluated
)


def _has_references(benchmark: Benchmark, rows: list[dict]) -> bool:
    def filled(row: dict, key: str) -> bool:
        value = row.get(key)
        return value not in (None, "", [])

    present = [all(filled(r, k) for k in benchmark.required) for r in rows]
    if any(present) and not all(present):
        bad = rows[present.index(False)]
        raise EvalError(
            f"record {bad['id']!r} has no '{benchmark.required[0]}' but others do (benchmark {benchmark.name})"
        )
    return bool(present) and all(present)


def _finish(
    benchmark: Benchmark,
    rows: list[dict],
    out_dir,
    score_options: dict | None,
    extra: dict | None = None,
    provenance: dict | None = None,
    records_total: int | None = None,
) -> dict:
    """Score ``rows`` (if they have references), add ``extra`` (model metrics), ``records_total`` (the
    records of the data before a cap: ``data.max_eval_samples`` / ``--max-samples``) and ``provenance``
    (under :data:`SOURCE_KEY`: what was evaluated on what), write the output folder."""
    metrics: dict = {"benchmark": benchmark.name}
    if _has_references(benchmark, rows):
        metrics.update(benchmark.score(rows, **(score_options or {})))
    else:
        metrics.update(count=len(rows), scored=False, note="no references: predictions (and submission) only")
    metrics.update(extra or {})
    if records_total is not None:
        metrics["records_total"] = records_total
    if provenance:
        metrics[SOURCE_KEY] = provenance
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)

        def write_jsonl(tmp: str) -> None:
            with open(tmp, "w") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")

        atomic_write(out / "predictions.jsonl", write_jsonl)
        if benchmark.submission is not None:
            write_submission(benchmark.submission(rows), out / benchmark.submission_file)
        atomic_write_json(metrics, out / "metrics.json")
    return metrics


def write_submission(entries: list, path: Path) -> None:
    """The upload file in its server's format: a JSON list, JSON lines, or an .xlsx sheet of row dicts."""
    if path.suffix == ".jsonl":

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                for entry in entries:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")

        atomic_write(path, write)
    elif path.suffix == ".xlsx":
        from openpyxl import Workbook

        def write(tmp: str) -> None:
            book = Workbook()
            sheet = book.active
            columns = list(entries[0]) if entries else []
            sheet.append(columns)
            for entry in entries:
                sheet.append([entry.get(c) for c in columns])
            book.save(tmp)

        atomic_write(path, write)
    else:
        atomic_write_json(entries, path)


def _row(benchmark: Benchmark, record: dict, raw: str) -> dict:
    return {
        "id": record["id"],
        "raw": raw,
        "prediction": benchmark.parse(raw, record),
        **benchmark.references(record),
    }


def generate_predictions(
    pipeline,
    records: list[dict],
    batch_size: int = 16,
    max_new_tokens: int = 16,
    num_beams: int = 1,
    progress: bool = True,
    desc: str = "eval",
) -> list[str]:
    """Generated texts for prepared ``records`` (with ``prompt``), in order, batch by batch."""
    model = getattr(pipeline, "model", None)
    was_training = bool(model is not None and model.training)
    device = None
    if model is not None:
        model.eval()
        device = next((p.device for p in model.parameters()), None)
    texts: list[str] = []
    try:
        with torch.inference_mode(), tqdm(total=len(records), desc=desc, disable=not progress) as bar:
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                batch = pipeline.collate(chunk, train=False)
                if device is not None:
                    batch = move_batch(batch, device)
                out = pipeline.generate(batch, max_new_tokens=max_new_tokens, num_beams=num_beams)
                if len(out) != len(chunk):
                    raise RuntimeError(
                        f"pipeline.generate returned {len(out)} texts for {len(chunk)} records"
                    )
                texts.extend(out)
                bar.update(len(chunk))
    finally:
        if was_training:
            model.train()
    return texts


def run_benchmark(
    pipeline,
    benchmark_name: str,
    records: list[dict],
    out_dir: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    progress: bool = True,
    score_options: dict | None = None,
    provenance: dict | None = None,
    records_total: int | None = None,
) -> dict:
    """Generate, parse and score ``records`` on ``benchmark_name``; write the output folder if ``out_dir``.

    Returns the metrics dict (``benchmark``, ``count``, ``accuracy`` or the benchmark's metrics;
    ``records_total`` when given: the data's records before a cap).
    """
    benchmark = get_benchmark(benchmark_name)
    if not records:
        raise EvalError(f"no records to evaluate on {benchmark_name}")
    if batch_size <= 0 or num_beams <= 0:
        raise EvalError("batch_size and num_beams must be > 0")
    if max_new_tokens is None:
        max_new_tokens = benchmark.defaults.get("max_new_tokens", 16)
    prepared = [prepare(benchmark, r) for r in records]
    texts = generate_predictions(
        pipeline, prepared, batch_size, max_new_tokens, num_beams, progress, desc=benchmark_name
    )
    rows = [{**_row(benchmark, r, t), "prompt": r["prompt"]} for r, t in zip(prepared, texts)]
    extra = benchmark.model_metrics(pipeline, records, batch_size) if benchmark.model_metrics else None
    return _finish(benchmark, rows, out_dir, score_options, extra, provenance, records_total)


# ---------------------------------------------------------------- scoring existing predictions
def read_predictions(path: str | Path) -> list[dict]:
    """A predictions file: JSON list (official results) or JSONL (ours / LLaVA answer files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    text = read_text(path, EvalError)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvalError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    else:
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    for i, p in enumerate(data):
        if not isinstance(p, dict):
            raise EvalError(f"{path}: entry {i + 1} is not an object")
        if not any(k in p for k in ID_KEYS):
            raise EvalError(f"{path}: entry {i + 1} has none of the id keys {', '.join(ID_KEYS)}")
        if not any(k in p for k in PREDICTION_KEYS):
            raise EvalError(f"{path}: entry {i + 1} has none of the answer keys {', '.join(PREDICTION_KEYS)}")
    return data


def _record_tables(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """Records by ``id`` and by the official ``meta.question_id`` / ``meta.image_id``."""
    tables: dict[str, dict[str, list[dict]]] = {k: {} for k in ID_KEYS}
    for r in records:
        tables["id"].setdefault(str(r["id"]), []).append(r)
        meta = r.get("meta") or {}
        for key in ("question_id", "image_id"):
            if meta.get(key) is not None:
                tables[key].setdefault(str(meta[key]), []).append(r)
    return tables


def _match(tables: dict, prediction: dict, where: str) -> dict:
    """The record a prediction refers to: by its first id key, then by the record id."""
    kind = next(k for k in ID_KEYS if k in prediction)
    key = str(prediction[kind])
    found = tables[kind].get(key) or tables["id"].get(key)
    if not found:
        raise EvalError(f"{where}: {kind} {key!r} matches no record of the reference data")
    if len(found) > 1:
        raise EvalError(
            f"{where}: {kind} {key!r} matches {len(found)} records (e.g. POPE categories); give predictions an 'id'"
        )
    return found[0]


def score_predictions(
    benchmark_name: str,
    predictions: list[dict],
    records: list[dict],
    out_dir: str | Path | None = None,
    score_options: dict | None = None,
    source: str = "predictions",
    provenance: dict | None = None,
    records_total: int | None = None,
) -> dict:
    """Score ``predictions`` (``{id|question_id|image_id, prediction|answer|text|caption}``) against
    ``records``, parsing each answer with the benchmark's parser exactly as for generated text.

    Every record must have exactly one prediction.
    """
    benchmark = get_benchmark(benchmark_name)
    if benchmark.adapt_predictions is not None:
        predictions = benchmark.adapt_predictions(predictions, records)
    tables = _record_tables(records)
    by_record: dict[str, tuple[dict, str]] = {}
    for i, p in enumerate(predictions):
        record = _match(tables, p, f"{source}: entry {i + 1}")
        if record["id"] in by_record:
            raise EvalError(f"{source}: entry {i + 1} repeats the prediction for record {record['id']!r}")
        by_record[record["id"]] = (record, str(next(p[k] for k in PREDICTION_KEYS if k in p)))
    missing = [r["id"] for r in records if r["id"] not in by_record]
    if missing:
        raise EvalError(
            f"{source}: no prediction for {len(missing)} of {len(records)} records (first: {missing[0]!r})"
        )
    rows = [_row(benchmark, prepare(benchmark, r), by_record[r["id"]][1]) for r in records]
    return _finish(
        benchmark, rows, out_dir, score_options, provenance=provenance, records_total=records_total
    )
