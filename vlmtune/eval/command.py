"""``vlmtune eval BENCH``: evaluate a model / run folder, or score an existing predictions file.

    vlmtune eval shapes-vqa --model runs/llava-dora           # adapter run folder (adapter on its base)
    vlmtune eval vqav2 --model merged/ --data vqav2_val.jsonl  # merged or plain model folder, preset name
    vlmtune eval vqav2 --predictions results.json --questions q.json --annotations a.json
    vlmtune eval pope --predictions answers.jsonl --data pope.jsonl
    vlmtune eval --compare runs/llava-lora runs/llava-dora          # differences with bootstrap intervals

Writes ``metrics.json``, ``predictions.jsonl`` (and ``submission.json`` for vqav2) under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlmtune.eval.benchmarks import BENCHMARKS, get_benchmark, load_extensions
from vlmtune.eval.errors import EvalError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load_extensions()
    parser.add_argument("benchmark", metavar="BENCH", nargs="?", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--model", help="run folder (adapter on its base), merged/plain model folder or preset"
    )
    parser.add_argument(
        "--data", help="vlmtune JSONL or a data spec (shapes:vqa, digits:target@test); default: the run's"
    )
    parser.add_argument("--predictions", help="score this predictions file instead of running a model")
    parser.add_argument("--questions", help="vqav2: official questions JSON (instead of --data)")
    parser.add_argument("--annotations", help="vqav2: official annotations JSON (omit for test-dev)")
    parser.add_argument("--image-root", help="folder that record image paths are relative to")
    parser.add_argument("--out", help="output folder (default: <run>/eval/<BENCH> or runs/eval/<BENCH>)")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--force",
        action="store_true",
        help="evaluate even on a base other than the one the adapter was trained on",
    )


# ---------------------------------------------------------------- model loading
def load_model(model: str, force: bool = False):
    """``(pipeline, run config or None, run folder or None)`` for ``--model``.

    A run folder, checkpoint or adapter folder (``adapter_model.safetensors`` here or in ``adapter/``) is
    loaded by :func:`vlmtune.recipes.run_folder.load_run` (the base it was trained on, checked, then the
    adapter); anything else (a merged / plain model folder, a preset name like ``shapes-tiny``, a hub id)
    is loaded as the base model of a default LLaVA config.
    """
    from vlmtune.core.config import RunConfig
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes.run_folder import load_run

    path = Path(model)
    if (path / "config.yaml").is_file() or (path / "vlmtune_adapter.json").is_file():
        return load_run(path, build_pipeline, force=force)
    if path.exists() and not (path / "config.json").is_file():
        raise EvalError(
            f"--model {path}: not a run folder (config.yaml), adapter or model folder (config.json)"
        )
    cfg = RunConfig()
    cfg.model.name_or_path = model
    return build_pipeline(cfg), None, None


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


def load_data(args, cfg) -> list[dict]:
    from vlmtune.data.records import load_records

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

        # exactly the records `vlmtune train` evaluated on
        records = load_split(cfg, cfg.data.eval, "test", cfg.data.max_eval_samples, ErrorLog())
    elif args.benchmark == "shapes-vqa":
        records = load_records("shapes:vqa", split="test")
    else:
        raise EvalError(f"no data: give --data FILE (vlmtune JSONL from data_prep/) for {args.benchmark}")
    if args.max_samples > 0:
        records = records[: args.max_samples]
    if not records:
        raise EvalError("the evaluation data has no records")
    return records


# ---------------------------------------------------------------- output
def format_metrics(metrics: dict) -> str:
    """Headline numbers on the first line, each breakdown on its own line."""
    name = metrics.get("benchmark", "")
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


def main(args: argparse.Namespace) -> int:
    from vlmtune.eval.runner import read_predictions, run_benchmark, score_predictions

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--num-beams", args.num_beams, 1),
                             ("--max-samples", args.max_samples, 0)):  # fmt: skip
        if value is not None and value < low:
            raise EvalError(
                f"{flag} must be >= {low} ({'0: all records' if low == 0 else 'a count'}), got {value}"
            )
    if args.compare:
        from vlmtune.eval.compare import compare_runs, format_table

        if args.benchmark or args.model or args.predictions:
            raise EvalError("--compare RUN_A RUN_B takes no BENCH, --model or --predictions")
        print(format_table(compare_runs(*args.compare), *args.compare))
        return 0
    if not args.benchmark:
        raise EvalError("give a benchmark (vlmtune eval BENCH ...) or --compare RUN_A RUN_B")
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
        records = load_data(args, None)
        out = Path(args.out or Path("runs") / "eval" / benchmark.name)
        metrics = score_predictions(
            benchmark.name, read_predictions(args.predictions), records, out, options, source=args.predictions
        )
    else:
        from vlmtune.recipes.preflight import check_eval_data

        pipeline, cfg, run_dir = load_model(args.model, args.force)
        records = load_data(args, cfg)
        check_eval_data(records, benchmark.name, progress=not args.quiet)  # before the first generation
        import torch

        pipeline.model.to("cuda" if torch.cuda.is_available() else "cpu")
        same_task = cfg is not None and BENCHMARKS.get(cfg.eval.benchmark, benchmark).task == benchmark.task
        batch_size = args.batch_size or (cfg.eval.batch_size if cfg else 16)
        num_beams = args.num_beams or (cfg.eval.num_beams if cfg else 1)
        max_new = args.max_new_tokens or (cfg.eval.max_new_tokens if same_task else None)
        default_out = run_dir / "eval" / benchmark.name if run_dir else Path("runs") / "eval" / benchmark.name
        out = Path(args.out or default_out)
        metrics = run_benchmark(
            pipeline, benchmark.name, records, out, batch_size, max_new, num_beams, not args.quiet, options
        )
    print(format_metrics(metrics))
    files = ["metrics.json", "predictions.jsonl"] + (
        [benchmark.submission_file] if benchmark.submission else []
    )
    print(f"wrote {', '.join(str(out / f) for f in files)}")
    return 0
