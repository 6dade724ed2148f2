"""The preflight of ``vlmtune train``: read everything once, before the expensive part.

Before the base model is loaded (:func:`preflight`): every record parsed and validated (the data
readers of ``vlmtune.data.records``), every image opened (header + size, and a truncated PNG/JPEG caught
without decoding: :func:`check_complete`; in a thread pool, with a progress bar), the eval records
checked against the eval benchmark (prompt fields and references).
After it is loaded, before the base evaluation (:func:`preflight_model`): every tower's method and
targets resolved against the model (``adapters.attach.check_specs``, the checks ``attach`` makes), and
every training record encoded once to count those that ``data.max_length`` leaves without a single
supervised token (they would train at loss 0 and say nothing).

Problems are collected, not raised one by one: the run stops with one line per problem kind (count
and the first ids), nothing written. ``data.on_error=skip`` turns record problems into counts in the
run's :class:`~vlmtune.data.errors.ErrorLog` (written as ``data_errors.json``) and drops those records.
One summary line says what will happen: records, images, steps = epochs x batches, what trains.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlmtune.core.errors import DataError

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig
    from vlmtune.data.errors import ErrorLog
    from vlmtune.models.base import Pipeline

SHOWN_IDS = 3  # ids named per problem kind


@dataclass
class Problems:
    """Record problems by kind: ``{kind: [(record id, detail)]}``, reported as one line per kind."""

    found: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, kind: str, record_id: str, detail: str = "") -> None:
        self.found.setdefault(kind, []).append((record_id, detail))

    def lines(self) -> list[str]:
        out = []
        for kind, items in self.found.items():
            shown = ", ".join(
                f"'{rid}'" + (f" ({detail})" if detail else "") for rid, detail in items[:SHOWN_IDS]
            )
            more = f" (+{len(items) - SHOWN_IDS} more)" if len(items) > SHOWN_IDS else ""
            out.append(f"{kind}: {len(items)} record(s): {shown}{more}")
        return out

    def raise_if_any(self, hint: str) -> None:
        """One :class:`DataError`: a first line, then one line per problem kind."""
        if self.found:
            raise DataError("\n  ".join(["preflight found problems; nothing was run or written:",
                                         *self.lines(), hint]))  # fmt: skip


@dataclass
class Checked:
    """What the preflight read: the records to train and evaluate on and the skipped ones."""

    train: list[dict]
    eval: list[dict]
    errors: ErrorLog
    images: int = 0
    eval_total: int = 0  # data.eval's records before data.max_eval_samples

    def write(self, run_dir: Path) -> None:
        """``data_errors.json`` when records were skipped (``data.on_error=skip``)."""
        if self.errors.count:
            self.errors.write(run_dir / "data_errors.json")


# ---------------------------------------------------------------- images
JPEG_END = b"\xff\xd9"  # the EOI marker that closes a JPEG stream


def check_complete(image, path: Path) -> None:
    """Raise ``OSError`` / ``SyntaxError`` when the data of an opened image is cut short, without decoding
    what is whole. PNG: ``Image.verify()`` walks every chunk to IEND and checks its CRC. JPEG: the file
    ends with the EOI marker; if not (a cut file, or bytes appended after EOI), it is decoded to decide.
    Other formats: the header only."""
    if image.format == "PNG":
        image.verify()
    elif image.format == "JPEG":
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - len(JPEG_END)))
            if f.read() != JPEG_END:
                image.load()


def image_problem(path: str) -> tuple[str, str] | None:
    """``(kind, detail)`` when the image at ``path`` cannot be used, else None. Reads the header, the size
    (``data.images``' decompression-bomb guard) and checks the data is complete (:func:`check_complete`:
    a truncated PNG or JPEG), without decoding a whole image."""
    from PIL import Image, UnidentifiedImageError

    from vlmtune.data.images import max_pixels_default

    p = Path(path)
    if not p.is_file():
        return ("image not found", str(p)) if not p.is_dir() else ("image is a folder", str(p))
    limit = max_pixels_default()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as image:
                width, height = image.size
                if limit and width * height > limit:
                    return (
                        "image too large",
                        f"{p}: {width}x{height} pixels > {limit}; raise VLMTUNE_MAX_IMAGE_PIXELS",
                    )
                check_complete(image, p)
    except Image.DecompressionBombError:
        return "image too large", str(p)
    except UnidentifiedImageError:
        return "image not readable", str(p)
    except (OSError, SyntaxError, ValueError) as e:
        return "image not readable", f"{p}: truncated or corrupt image data ({e})"
    return None


def check_images(records: list[dict], problems: Problems, progress: bool, desc: str) -> int:
    """Open every image of ``records`` (:func:`image_problem`) in a thread pool; adds problems; returns the count."""
    from tqdm import tqdm

    from vlmtune.data.records import record_images

    pairs = [(r["id"], p) for r in records for p in record_images(r)]
    workers = min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(pairs), desc=desc, disable=not progress) as bar:
        for (rid, _), found in zip(pairs, pool.map(image_problem, [p for _, p in pairs], chunksize=64)):
            if found:
                problems.add(found[0], rid, found[1])
            bar.update(1)
    return len(pairs)


# ---------------------------------------------------------------- eval data vs the benchmark
def check_eval_records(records: list[dict], benchmark_name: str, problems: Problems) -> None:
    """Each record builds the benchmark's prompt and its references (what the scorer reads)."""
    from vlmtune.core.errors import ConfigError
    from vlmtune.eval.benchmarks import get_benchmark, prepare

    benchmark = get_benchmark(benchmark_name)
    for record in records:
        try:
            benchmark.references(prepare(benchmark, record))
        except (ConfigError, KeyError, TypeError, IndexError) as e:
            problems.add(f"eval record unusable for {benchmark_name}", record["id"], str(e)[:80])


def check_eval_data(records: list[dict], benchmark_name: str, progress: bool = True) -> None:
    """``vlmtune eval``: every image opened and every record usable by the benchmark, before generating;
    one :class:`DataError` with a line per problem kind otherwise."""
    problems = Problems()
    check_images(records, problems, progress, "preflight: images")
    check_eval_records(records, benchmark_name, problems)
    problems.raise_if_any("fix these records (or --image-root), or leave them out of --data")


# ---------------------------------------------------------------- the plan
def steps_plan(cfg: RunConfig, records: list[dict]) -> str:
    """``N steps = E epochs x B batches / grad_accum`` as the trainer counts them (the same
    :func:`~vlmtune.data.sampler.epoch_batch_count`; one global batch of ``train.batch_size`` however many
    processes share it); a pipeline that plans its own batches (VL-BART's per-task batches) is named
    instead of guessed."""
    from vlmtune.data.records import record_images
    from vlmtune.data.sampler import epoch_batch_count

    t = cfg.train
    if cfg.model.pipeline == "vlbart":
        return "steps: set by the vlbart pipeline's per-task batches (the trainer prints the plan)"
    with_image = [bool(record_images(r)) for r in records]
    batches = epoch_batch_count(with_image, t.batch_size, cfg.data.group_by_length)
    steps = max(1, t.max_steps or math.ceil(t.epochs * batches / t.grad_accum))
    epochs = steps * t.grad_accum / max(1, batches)
    rule = f"train.max_steps={t.max_steps}" if t.max_steps else f"train.epochs={t.epochs:g}"
    return f"{steps:,} steps = {epochs:.2f} epochs x {batches:,} batches / grad_accum {t.grad_accum} ({rule})"


def what_trains(cfg: RunConfig) -> str:
    """``language dora r=128, projector full`` from ``cfg.adapters``."""
    from vlmtune.adapters.registry import layer_method_names

    layer_methods = layer_method_names()
    parts = []
    for tower, spec in cfg.adapters.specs().items():
        if spec is not None and spec.method != "frozen":
            parts.append(f"{tower} {spec.method}" + (f" r={spec.r}" if spec.method in layer_methods else ""))
    return ", ".join(parts) or "nothing (every tower frozen)"


# ---------------------------------------------------------------- before the model
def _apply(problems: Problems, records: list[dict], errors: ErrorLog) -> list[dict]:
    """Drop the records with problems, counting each in ``errors`` (``data.on_error=skip``)."""
    bad: dict[str, str] = {}
    for kind, items in problems.found.items():
        for rid, detail in items:
            bad.setdefault(rid, f"record '{rid}': {kind}" + (f" ({detail})" if detail else ""))
    for reason in bad.values():
        errors.add(reason)
    problems.found.clear()
    return [r for r in records if r["id"] not in bad]


def settle(cfg: RunConfig, checks: list[tuple[str, Problems, list[dict]]], errors: ErrorLog, hint: str):
    """``[(what, problems, records)]`` -> the records to keep: under ``data.on_error=skip`` the others are
    counted in ``errors``; else one :class:`DataError` with a line per (what, kind)."""
    if cfg.data.on_error == "skip":
        return [_apply(problems, records, errors) for _, problems, records in checks]
    merged = Problems()
    for what, problems, _ in checks:
        for kind, items in problems.found.items():
            merged.found[f"{what}: {kind}" if what else kind] = items
    merged.raise_if_any(hint)
    return [records for _, _, records in checks]


def read_split(cfg: RunConfig, spec: str, split: str, limit: int, errors: ErrorLog) -> list[dict]:
    from vlmtune.data.records import load_split
    from vlmtune.train import distributed as ddp

    with ddp.main_process_first():  # the main process fills the dataset cache
        return load_split(cfg, spec, split, limit, errors)


def choose_benchmark(cfg: RunConfig, evals: list[dict], say: Callable[[str], None]) -> None:
    """Conversation ``data.eval`` is scored by the ``conversation`` benchmark (sets ``cfg.eval.benchmark``)."""
    from vlmtune.eval.conversation import benchmark_for

    if (chosen := benchmark_for(evals, cfg.eval.benchmark)) != cfg.eval.benchmark:
        say(f"eval: data.eval holds conversations: benchmark {chosen} instead of {cfg.eval.benchmark} "
            f"(answers generated up to eval.max_new_tokens={cfg.eval.max_new_tokens} tokens)")  # fmt: skip
        cfg.eval.benchmark = chosen


def preflight(cfg: RunConfig, run_dir: Path, say: Callable[[str], None], progress: bool = True) -> Checked:
    """Read and check the data of ``cfg`` (see the module docstring); raise one :class:`DataError` with a
    line per problem kind, or return the records to use."""
    from vlmtune.data.errors import ErrorLog

    t0 = time.perf_counter()
    check_methods(cfg)
    errors = ErrorLog()
    train = read_split(cfg, cfg.data.train, "train", cfg.data.max_train_samples, errors)
    if cfg.data.turns_per_image > 1:
        from vlmtune.data.multiturn import pack_turns

        train = pack_turns(train, cfg.data.turns_per_image, cfg.data.template_seed, cfg.train.seed)
    from vlmtune.data.records import cap_records

    evals = read_split(cfg, cfg.data.eval, "test", 0, errors) if cfg.data.eval else []
    eval_total = len(evals)
    evals, cut = cap_records(evals, cfg.data.max_eval_samples, "eval", "data.max_eval_samples")
    choose_benchmark(cfg, evals, say)
    train_problems, eval_problems = Problems(), Problems()
    images = check_images(train, train_problems, progress, "preflight: train images")
    images += check_images(evals, eval_problems, progress, "preflight: eval images")
    if evals:
        check_eval_records(evals, cfg.eval.benchmark, eval_problems)
    train, evals = settle(
        cfg,
        [("data.train", train_problems, train), ("data.eval", eval_problems, evals)],
        errors,
        "fix these records (or data.image_root), or set data.on_error=skip to go on without them",
    )
    if not train:
        raise DataError(f"data.train={cfg.data.train}: no usable record left ({errors.summary()})")
    say(
        f"preflight: run folder {run_dir} | train {len(train):,} records, eval {len(evals):,}"
        f"{f' of {eval_total:,}' if len(evals) < eval_total else ''} | "
        f"{images:,} images opened ({time.perf_counter() - t0:.1f}s) | {steps_plan(cfg, train)} | "
        f"trains: {what_trains(cfg)}"
    )
    if cut:
        say(cut)
    if errors.count:
        say(f"data: {errors.summary()}")
    return Checked(train, evals, errors, images, eval_total)


# ---------------------------------------------------------------- with the model
def check_methods(cfg: RunConfig) -> None:
    """Every method named in ``cfg.adapters`` is registered and its options are well typed (before the base
    loads): :func:`vlmtune.adapters.attach.check_methods`."""
    from vlmtune.adapters.attach import check_methods as check

    check(cfg.adapters.specs())


def check_adapter_specs(pipeline: Pipeline, cfg: RunConfig) -> None:
    """Every tower named in ``cfg.adapters`` exists and its targets resolve on the loaded model: ``attach``'s
    own checks (:func:`vlmtune.adapters.attach.check_specs`), made before the base evaluation."""
    from vlmtune.adapters.attach import check_specs

    check_specs(pipeline.model, pipeline.towers, cfg.adapters.specs())


def encode_problems(pipeline: Pipeline, records: list[dict], max_length: int) -> Problems | None:
    """Every training record encoded once: the ones the model cannot take (a :class:`DataError` of its
    encoding, e.g. PaliGemma's multi-turn or text-only records) and those whose labels are all ignored after
    ``data.max_length``, by kind (None when the pipeline has no per-record ``encode`` with labels)."""
    from vlmtune.data.collate import IGNORE_INDEX
    from vlmtune.models.base import truncation_counts_kept

    encode = getattr(pipeline, "encode", None)
    if encode is None:
        return None
    problems = Problems()
    with truncation_counts_kept(pipeline):  # the trainer counts cut answers itself
        for record in records:
            try:
                labels = getattr(encode(record, train=True), "labels", None)
            except DataError as e:
                problems.add(UNUSABLE, str(record["id"]), str(e).splitlines()[0])
                continue
            if labels is None:
                return None
            if all(int(x) == IGNORE_INDEX for x in labels):
                problems.add(
                    f"{NO_SUPERVISION} within data.max_length={max_length} (prompt too long)", record["id"]
                )
    return problems


NO_SUPERVISION = "no supervised token"
UNUSABLE = "not usable by this model"


def train_record_problems(pipeline: Pipeline, records: list[dict]) -> Problems:
    """The training records a pipeline without a per-record ``encode`` (VL-BART) cannot take: its
    ``check_record``, without processing them."""
    problems = Problems()
    check = getattr(pipeline, "check_record", None)
    for record in records if check is not None else []:
        try:
            check(record, train=True)
        except DataError as e:
            problems.add(UNUSABLE, str(record["id"]), str(e).splitlines()[0])
    return problems


def eval_record_problems(pipeline: Pipeline, records: list[dict], benchmark_name: str) -> Problems:
    """The eval records the model cannot take (its ``check_record``, on the benchmark's prepared record, as
    the evaluator will collate it), without processing them."""
    from vlmtune.eval.benchmarks import get_benchmark, prepare

    problems = Problems()
    check = getattr(pipeline, "check_record", None)
    if check is None:
        return problems
    benchmark = get_benchmark(benchmark_name)
    for record in records:
        try:
            check(prepare(benchmark, record), train=False)
        except DataError as e:
            problems.add(UNUSABLE, str(record["id"]), str(e).splitlines()[0])
    return problems


def preflight_model(pipeline: Pipeline, cfg: RunConfig, checked: Checked, say: Callable[[str], None]) -> None:
    """The checks that need the loaded model (see the module docstring); drops records under ``skip``."""
    check_adapter_specs(pipeline, cfg)
    problems = encode_problems(pipeline, checked.train, cfg.data.max_length)
    problems = train_record_problems(pipeline, checked.train) if problems is None else problems
    evals = eval_record_problems(pipeline, checked.eval, cfg.eval.benchmark)
    if not problems.found and not evals.found:
        return
    if len(problems.found) == 1:
        ((kind, empty),) = problems.found.items()
        if kind.startswith(NO_SUPERVISION) and len(empty) == len(checked.train):
            raise DataError(
                f"data.train: all {len(empty):,} records have {kind}; raise data.max_length "
                f"(first: {', '.join(rid for rid, _ in empty[:SHOWN_IDS])})"
            )
    hint = (
        "fix these records (raise data.max_length or shorten prompts that are too long), or set "
        "data.on_error=skip to go on without them"
    )
    checks = [("data.train", problems, checked.train), ("data.eval", evals, checked.eval)]
    checked.train[:], checked.eval[:] = settle(cfg, checks, checked.errors, hint)
    if not checked.train:
        raise DataError(f"data.train={cfg.data.train}: no usable record left ({checked.errors.summary()})")
    say(f"data: {checked.errors.summary()}")
