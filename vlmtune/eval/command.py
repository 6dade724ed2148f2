"""``vlmtune eval BENCH``: evaluate a model / run folder, or score an existing predictions file.

    vlmtune eval runs/llava-dora                              # a run on its own benchmark and data.eval
    vlmtune eval shapes-vqa --model runs/llava-dora           # adapter run folder (adapter on its base)
    vlmtune eval vqav2 --model merged/ --data vqav2_val.jsonl  # merged or plain model folder, preset name
    vlmtune eval vqav2 --predictions results.json --questions q.json --annotations a.json
    vlmtune eval pope --predictions answers.jsonl --data pope.jsonl
    vlmtune eval --compare runs/llava-lora runs/llava-dora          # differences with bootstrap intervals

Writes ``metrics.json`` (with ``source``: the model, its base, the data), ``predictions.jsonl`` (and
``submission.json`` for vqav2) under ``--out``; without ``--out`` a new folder ``<run>/eval/<BENCH>`` or
``runs/eval/<BENCH>`` (``-2``, ``-3``... when it already holds results: nothing is overwritten).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmtune.eval.benchmarks import BENCHMARKS, get_benchmark, load_extensions
from vlmtune.eval.errors import EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load_extensions()
    parser.add_argument(
        "benchmark",
        metavar="BENCH",
        nargs="?",
        help=f"one of: {', '.join(BENCHMARKS)}; or a run folder alone: its own benchmark on its data.eval",
    )
    parser.add_argument(
        "--model", help="run folder (adapter on its base), merged/plain model folder or preset"
    )
    parser.add_argument(
        "--base", help="a run's base model at another place (model.name_or_path), as for `vlmtune merge`"
    )
    parser.add_argument(
        "--data", help="vlmtune JSONL or a data spec (shapes:vqa, digits:target@test); default: the run's"
    )
    parser.add_argument("--predictions", help="score this predictions file instead of running a model")
    parser.add_argument("--questions", help="vqav2: official questions JSON (instead of --data)")
    parser.add_argument("--annotations", help="vqav2: official annotations JSON (omit for test-dev)")
    parser.add_argument("--image-root", help="folder that record image paths are relative to")
    parser.add_argument(
        "--out", help="output folder (default: a new <run>/eval/<BENCH>[-N] or runs/eval/<BENCH>[-N])"
    )
    parser.add_argument("--batch-size", type=int, help="generation batch size (default: the run's, else 16)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="default: the run's / benchmark's (16, captions 32)"
    )
    parser.add_argument("--num-beams", type=int, help="1 = greedy (default); > 1 = beam search")
    parser.add_argument("--max-samples", type=int, default=0, help="evaluate the first N records only")
    parser.add_argument("--caption-metrics", default="bleu,meteor,rouge,cider", help="coco-caption metrics")
    parser.add_argument(
        "--caption-tokenizer", default="ptb", choices=("ptb", "simple"), help="simple = no Java (approximate)"
    )
    parser.add_argument(
        "--scoring",
        default="official",
        choices=("official", "lenient"),
        help="official = the published scorer exactly (default); lenient = the documented deviations",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="compare two eval outputs / run folders: B-A per benchmark and answer type, bootstrap 95%% CI",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the results still print)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="evaluate even on a base other than the one the adapter was trained on",
    )


# ---------------------------------------------------------------- model loading
def is_run(model: str | Path) -> bool:
    """A run folder, checkpoint or adapter folder, vlmtune's or plain peft's (``adapter_config.json``),
    loaded with its base by ``load_run``."""
    path = Path(model)
    return any(
        (path / name).is_file() for name in ("config.yaml", "vlmtune_adapter.json", "adapter_config.json")
    )


def load_model(model: str, force: bool = False, base: str | None = None):
    """``(pipeline, run config or None, run folder or None)`` for ``--model``.

    A run folder, checkpoint or adapter folder (``adapter_model.safetensors`` here or in ``adapter/``) is
    loaded by :func:`vlmtune.recipes.run_folder.load_run` (the base it was trained on or ``base``, checked,
    then the adapter: the code path of ``vlmtune merge``); anything else (a merged / plain model folder, a
    preset name like ``shapes-tiny``, a hub id) is loaded as the base model of a default LLaVA config.
    """
    from vlmtune.core.config import RunConfig
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes.run_folder import load_run

    path = Path(model)
    if is_run(path):
        return load_run(path, build_pipeline, base=base, force=force)
    if base:
        raise EvalError(
            f"--base replaces the base of a run or adapter folder; {model} is neither, drop --base"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise EvalError(
            f"--model {path}: not a run folder (config.yaml), adapter folder (adapter_config.json) or model "
            "folder (config.json)"
        )
    cfg = RunConfig()
    cfg.model.name_or_path = model
    kind = merged_pipeline(path)
    if kind is not None:  # a merged ViT classifier or VL-BART folder carries what its pipeline needs
        cfg.model.pipeline, cfg.data.train = kind, ""
    return build_pipeline(cfg), None, None


def merged_pipeline(path: Path) -> str | None:
    """``vit`` / ``vlbart`` for a folder ``vlmtune merge`` wrote from those pipelines, else None (LLaVA-style)."""
    from vlmtune.models.vit import saved_classes
    from vlmtune.models.vlbart import META_FILE

    if (path / META_FILE).is_file():
        return "vlbart"
    if path.is_dir() and saved_classes(path) is not None:
        return "vit"
    return None


def take_run_positional(args: argparse.Namespace) -> None:
    """``vlmtune eval RUN``: a run folder as the only positional is ``--model RUN`` on the benchmark its
    config names (``eval.benchmark``), with its ``data.eval`` unless ``--data`` is given."""
    from vlmtune.recipes.run_folder import locate, run_config

    if not args.benchmark or args.benchmark in BENCHMARKS or not Path(args.benchmark).is_dir():
        return
    if args.model or args.predictions:
        raise EvalError(f"{args.benchmark} is a folder, not a benchmark; give BENCH --model FOLDER")
    run_dir = locate(args.benchmark).run_dir
    if run_dir is None:
        raise EvalError(
            f"{args.benchmark} has no config.yaml (not a run folder): give the benchmark, "
            f"vlmtune eval BENCH --model {args.benchmark}"
        )
    args.model, args.benchmark = args.benchmark, run_config(run_dir).eval.benchmark


# ---------------------------------------------------------------- data
def vqav2_official_records(questions: str, annotations: str | None, image_root: str | None) -> list[dict]:
    """Records straight from the official VQAv2 files (no data_prep step)."""
    from vlmtune.eval.vqa import load_official

    root = Path(image_root) if image_root else Path(questions).resolve().parent
    records = []
    for qid, q in load_official(questions, annotations).items():
        folder = "test2015" if q["data_subtype"].startswith("test") else q["data_subtype"]
        record = {
            "id": f"vqav2-{qid}",
            "task": "vqa",
            "image": str(root / folder / f"COCO_{folder}_{q['image_id']:012d}.jpg"),
            "question": q["question"],
            "meta": {
                "question_id": qid,
                "image_id": q["image_id"],
                "question_type": q.get("question_type", ""),
            },
        }
        if "answers" in q:
            record["answers"] = q["answers"]
            record["answer_type"] = q["answer_type"]
        records.append(record)
    return records


def read_eval_data(spec: str, image_root: str | None) -> list[dict]:
    """Records of ``--data``; references are optional here (VQAv2 test-dev has none), the scorer checks them."""
    from vlmtune.core.data_spec import parse_spec
    from vlmtune.data.records import REQUIRED_FIELDS, load_records, read_records

    parsed = parse_spec(spec)
    if parsed.generated:  # shapes:, digits:, imagefolder:, hf:
        return load_records(spec, split="test", image_root=image_root)
    relaxed = {
        task: tuple(
            g for g in groups if "image" in g or "images" in g or "question" in g or "conversations" in g
        )
        for task, groups in REQUIRED_FIELDS.items()
    }
    records: list[dict] = []
    for part in (p for p in parsed.items if p):
        records += read_records(
            part, parsed.split_or("test"), required_fields_by_task=relaxed, image_root=image_root
        )
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise EvalError(f"--data {spec}: record ids repeat across files")
    return records


def load_data(args, cfg, run_dir: Path | None = None) -> tuple[list[dict], int]:
    """The records to evaluate and how many the data holds: ``--questions``, ``--data``, else the run's
    ``data.eval`` (resolved by :func:`vlmtune.recipes.run_folder.run_config`; one line when it cannot be read
    from here), all of them unless ``--max-samples`` (a run's ``data.max_eval_samples`` capped the evaluation
    during training only: a later evaluation is the user's choice)."""
    from vlmtune.data.records import cap_records, load_records
    from vlmtune.recipes.run_folder import unreachable_eval_data

    if args.questions:
        if args.benchmark not in ("vqav2", "shapes-vqa"):
            raise EvalError(
                "--questions/--annotations are the official VQAv2 files; use --data for other benchmarks"
            )
        if args.data:
            raise EvalError("give either --data or --questions/--annotations, not both")
        records = vqav2_official_records(args.questions, args.annotations, args.image_root)
    elif args.data:
        records = read_eval_data(args.data, args.image_root)
    elif cfg is not None and cfg.data.eval:
        from vlmtune.data.errors import ErrorLog
        from vlmtune.data.records import load_split

        records = load_split(cfg, cfg.data.eval, "test", 0, ErrorLog())
        cap = cfg.data.max_eval_samples
        if cap and len(records) > cap and not args.max_samples:
            print(
                f"eval: all {len(records):,} records of the run's data.eval (its data.max_eval_samples={cap} "
                f"capped the evaluation during training; --max-samples {cap} for those records)"
            )
    elif run_dir is not None and unreachable_eval_data(run_dir):
        raise EvalError(unreachable_eval_data(run_dir))
    elif args.benchmark == "shapes-vqa":
        records = load_records("shapes:vqa", split="test")
    else:
        raise EvalError(f"no data: give --data FILE (vlmtune JSONL from data_prep/) for {args.benchmark}")
    total = len(records)
    records, cut = cap_records(records, args.max_samples, "eval", "--max-samples")
    if cut:
        print(cut)
    if not records:
        raise EvalError("the evaluation data has no records")
    return records, total


# ---------------------------------------------------------------- output
def format_metrics(metrics: dict) -> str:
    """Headline numbers on the first line, each breakdown on its own line."""
    from vlmtune.eval.runner import SOURCE_KEY

    name = metrics.get("benchmark", "")
    metrics = {k: v for k, v in metrics.items() if k != SOURCE_KEY}
    flat = [f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)]
    count = metrics.get("count")
    lines = [f"{name}: " + ", ".join(flat) + (f"  ({count} examples)" if count is not None else "")]
    for key, value in metrics.items():
        if isinstance(value, dict) and value:
            parts = []
            for k, v in value.items():
                if isinstance(v, dict):
                    parts.append(
                        f"{k} " + " ".join(f"{kk}={vv:.2f}" for kk, vv in v.items() if isinstance(vv, float))
                    )
                else:
                    parts.append(f"{k} {v:.2f}")
            lines.append(f"  {key.replace('_', ' ')}: " + " | ".join(parts))
    if metrics.get("note"):
        lines.append(f"  {metrics['note']}")
    return "\n".join(lines)


def scoring_options(benchmark, scoring: str) -> dict:
    """``{"scoring": ...}`` for scorers that take it; ``lenient`` on one without variants is an error."""
    import inspect

    if "scoring" in inspect.signature(benchmark.score).parameters:
        return {"scoring": scoring}
    if scoring != "official":
        raise EvalError(f"benchmark {benchmark.name} has no --scoring {scoring} variant; drop --scoring")
    return {}


def data_description(args: argparse.Namespace, cfg) -> str:
    """What :func:`load_data` read, for ``metrics.json``."""
    if args.questions:
        return f"questions {Path(args.questions).resolve()}" + (
            f", annotations {Path(args.annotations).resolve()}" if args.annotations else ""
        )
    return args.data or (cfg.data.eval if cfg is not None and cfg.data.eval else "shapes:vqa")


def model_source(model: str, pipeline, run_dir: Path | None) -> dict:
    """``{"model": absolute path (or the preset / hub name), "base": identity}`` for ``metrics.json``: the
    base a run recorded (:data:`~vlmtune.recipes.run_folder.BASE_FILE`) with the one used now, else the
    identity of the model itself (name, config hash, weights fingerprint)."""
    import json

    from vlmtune.recipes.run_folder import BASE_FILE, base_identity

    path = Path(model)
    source = {"model": str(path.resolve()) if path.exists() else model}
    recorded = run_dir / BASE_FILE if run_dir is not None else None
    if recorded is not None and recorded.is_file():
        source["base"] = {**json.loads(recorded.read_text()), "used": pipeline.name_or_path}
    elif run_dir is None and not is_run(path):
        source["base"] = base_identity(model, pipeline.model)
    return source


def default_out(parent: Path, benchmark: str) -> Path:
    """``parent/<benchmark>``, or ``-2``, ``-3``... when it holds results already (nothing is overwritten)."""
    from vlmtune.train.run import next_free_dir

    return next_free_dir(parent / benchmark)


def check_counts(args: argparse.Namespace) -> None:
    """One line for a count flag below its minimum (before anything loads)."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--num-beams", args.num_beams, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--max-samples", args.max_samples, 0)):  # fmt: skip
        if value is not None and value < low:
            raise EvalError(
                f"{flag} must be >= {low} ({'0: all records' if low == 0 else 'a count'}), got {value}"
            )


def main(args: argparse.Namespace) -> int:
    from vlmtune.eval.runner import read_predictions, run_benchmark, score_predictions
    from vlmtune.recipes.run_folder import locate, run_config

    check_counts(args)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the checkpoint-loading bar too
    if args.compare:
        from vlmtune.eval.compare import compare_runs, format_table

        if args.benchmark or args.model or args.predictions:
            raise EvalError("--compare RUN_A RUN_B takes no BENCH, --model or --predictions")
        print(format_table(compare_runs(*args.compare), *args.compare))
        return 0
    if not args.benchmark:
        raise EvalError(
            "give a benchmark (vlmtune eval BENCH ...), a run folder (vlmtune eval RUN) or --compare RUN_A RUN_B"
        )
    take_run_positional(args)
    benchmark = get_benchmark(args.benchmark)
    if bool(args.model) == bool(args.predictions):
        raise EvalError("give exactly one of --model (run a model) or --predictions (score a file)")
    if args.annotations and not args.questions:
        raise EvalError("--annotations needs --questions (the official VQAv2 questions JSON)")
    options = {}
    if benchmark.name == "coco-caption":
        metrics = tuple(m.strip() for m in args.caption_metrics.split(",") if m.strip())
        options = {"metrics": metrics, "tokenizer": args.caption_tokenizer}
    options.update(scoring_options(benchmark, args.scoring))

    if args.predictions:
        records, total = load_data(args, None)
        out = Path(args.out) if args.out else default_out(Path("runs") / "eval", benchmark.name)
        source = {"predictions": str(Path(args.predictions).resolve()), "data": data_description(args, None)}
        metrics = score_predictions(
            benchmark.name, read_predictions(args.predictions), records, out, options, source=args.predictions,
            provenance=source, records_total=total,
        )  # fmt: skip
    else:
        from vlmtune.recipes.preflight import check_eval_data

        run_dir = locate(args.model).run_dir if is_run(args.model) else None
        cfg = run_config(run_dir) if run_dir else None
        records, total = load_data(args, cfg, run_dir)  # before the model loads
        pipeline, cfg, run_dir = load_model(args.model, args.force, base=args.base)
        check_eval_data(records, benchmark.name, progress=not args.quiet)  # before the first generation
        import torch

        pipeline.model.to("cuda" if torch.cuda.is_available() else "cpu")
        same_task = cfg is not None and BENCHMARKS.get(cfg.eval.benchmark, benchmark).task == benchmark.task
        batch_size = args.batch_size or (cfg.eval.batch_size if cfg else 16)
        num_beams = args.num_beams or (cfg.eval.num_beams if cfg else 1)
        max_new = args.max_new_tokens or (cfg.eval.max_new_tokens if same_task else None)
        out = Path(args.out) if args.out else default_out((run_dir or Path("runs")) / "eval", benchmark.name)
        source = {**model_source(args.model, pipeline, run_dir), "data": data_description(args, cfg)}
        metrics = run_benchmark(
            pipeline, benchmark.name, records, out, batch_size, max_new, num_beams, not args.quiet, options,
            provenance=source, records_total=total,
        )  # fmt: skip
    print(format_metrics(metrics))
    files = ["metrics.json", "predictions.jsonl"] + (
        [benchmark.submission_file] if benchmark.submission else []
    )
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0
