"""``vlmtune eval --compare RUN_A RUN_B``: per-benchmark differences with a paired bootstrap 95% interval.

Each side is an eval output folder (``metrics.json`` + ``predictions.jsonl``), or a folder holding such
folders (a run's ``eval/``, or the run folder itself: ``<run>/eval/<BENCH>/``); in a folder of them the
newest output per benchmark counts (``eval RUN`` writes ``<BENCH>``, ``<BENCH>-2``...), never a run's
``eval/base`` (the base model, before training). Benchmarks present on both sides are compared example by
example on the rows' ids:

- the per-example score is the row's ``accuracy`` (VQA-style soft accuracy), else ``correct`` (0/1;
  MMBench rows are first reduced to one CircularEval 0/1 per question ``group``), else the caption's
  ``CIDEr`` (its corpus score is the mean of these), else the token ``f1`` of a ``conversation`` row;
- ``diff = mean(B) - mean(A)`` in points; the interval is the 2.5th / 97.5th percentile of the mean
  difference over ``RESAMPLES`` = 10,000 resamples of the paired examples with replacement
  (``numpy.random.default_rng(SEED = 0)``, percentile bootstrap as lmms-eval's ``bootstrap_stderr``
  resampling, here on paired differences), so the same two folders always print the same table;
- rows are broken down by ``answer_type`` (VQAv2, VizWiz, GQA open/binary), else ``category`` (POPE,
  MMBench, MME) or ``question_type`` (SEED-Bench).
A difference whose interval excludes 0 is marked ``*``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from vlmtune.eval.errors import EvalError

RESAMPLES = 10_000
SEED = 0
GROUP_KEYS = ("answer_type", "category", "question_type")
_CHUNK = 200


def find_eval_dirs(path: str | Path) -> dict[str, Path]:
    """``{benchmark: folder}`` for an eval output folder or a folder of them."""
    path = Path(path)
    if not path.is_dir():
        raise EvalError(f"--compare: {path} is not a folder (give an eval output folder or a run folder)")
    if (path / "metrics.json").is_file():
        candidates = [path]
    else:
        candidates = [d for parent in (path, path / "eval") if parent.is_dir() for d in parent.iterdir()]
        candidates = [d for d in candidates if (d / "metrics.json").is_file() and d != path / "eval" / "base"]
        candidates.sort(key=lambda d: (d / "metrics.json").stat().st_mtime, reverse=True)  # newest first
    found: dict[str, Path] = {}
    for folder in candidates:
        if not (folder / "predictions.jsonl").is_file():
            continue
        name = json.loads((folder / "metrics.json").read_text()).get("benchmark") or folder.name
        found.setdefault(name, folder)
    if not found:
        base_only = (path / "eval" / "base" / "metrics.json").is_file()
        hint = f"; only the base model's (eval/base): run `vlmtune eval {path}` first" if base_only else ""
        raise EvalError(f"--compare: no metrics.json + predictions.jsonl under {path}{hint}")
    return found


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate((folder / "predictions.jsonl").read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvalError(
                    f"{folder / 'predictions.jsonl'}:{lineno}: not valid JSON ({e.msg})"
                ) from None
    return rows


def example_scores(rows: list[dict]) -> dict[str, tuple[float, str]]:
    """``{example id: (score in [0, 1], breakdown group)}``; empty if the rows carry no per-example score."""
    if rows and "group" in rows[0] and "correct" in rows[0]:  # MMBench: CircularEval per question
        by_group: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_group[str(r["group"])].append(r)
        rows = [{**rs[0], "id": g, "correct": all(r["correct"] for r in rs)} for g, rs in by_group.items()]
    out = {}
    for r in rows:
        if isinstance(r.get("accuracy"), (int, float)):
            score = float(r["accuracy"])
        elif "correct" in r:
            score = float(bool(r["correct"]))
        elif isinstance(r.get("scores"), dict) and "CIDEr" in r["scores"]:
            score = float(r["scores"]["CIDEr"]) / 100.0
        elif isinstance(r.get("f1"), (int, float)):
            score = float(r["f1"])
        else:
            return {}
        group = next((str(r[k]) for k in GROUP_KEYS if r.get(k)), "")
        out[str(r["id"])] = (score, group)
    return out


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """95% percentile interval of ``mean(b - a)`` over ``resamples`` paired resamples (same ``seed`` -> same numbers)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare_runs(run_a: str | Path, run_b: str | Path, resamples: int = RESAMPLES) -> list[dict]:
    """One entry per (benchmark, group): n, A, B, diff and its 95% interval, all in points."""
    dirs_a, dirs_b = find_eval_dirs(run_a), find_eval_dirs(run_b)
    common = [b for b in dirs_a if b in dirs_b]
    if not common:
        raise EvalError(
            f"--compare: no benchmark evaluated in both ({', '.join(dirs_a)} vs {', '.join(dirs_b)})"
        )
    table = []
    for bench in common:
        scores_a = example_scores(read_rows(dirs_a[bench]))
        scores_b = example_scores(read_rows(dirs_b[bench]))
        ids = [i for i in scores_a if i in scores_b]
        if not ids:
            table.append(
                {"benchmark": bench, "group": "all", "n": 0, "note": "no per-example scores or no shared ids"}
            )
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for i in ids:
            groups["all"].append(i)
            if scores_a[i][1]:
                groups[scores_a[i][1]].append(i)
        for group, members in groups.items():
            a = np.array([scores_a[i][0] for i in members])
            b = np.array([scores_b[i][0] for i in members])
            low, high = paired_bootstrap(a, b, resamples)
            table.append(
                {
                    "benchmark": bench, "group": group, "n": len(members),
                    "a": round(100 * a.mean(), 2), "b": round(100 * b.mean(), 2),
                    "diff": round(100 * (b.mean() - a.mean()), 2),
                    "ci_low": round(100 * low, 2), "ci_high": round(100 * high, 2),
                }
            )  # fmt: skip
    return table


def format_table(table: list[dict], name_a: str, name_b: str) -> str:
    head = f"{'benchmark':<14} {'group':<22} {'n':>7} {'A':>7} {'B':>7} {'B-A':>7}  95% CI (paired bootstrap)"
    lines = [f"A = {name_a}", f"B = {name_b}", head]
    for t in table:
        if t["n"] == 0:
            lines.append(f"{t['benchmark']:<14} {t['group']:<22} {0:>7}  ({t['note']})")
            continue
        star = " *" if t["ci_low"] > 0 or t["ci_high"] < 0 else ""
        lines.append(
            f"{t['benchmark']:<14} {t['group'][:22]:<22} {t['n']:>7} {t['a']:>7.2f} {t['b']:>7.2f} "
            f"{t['diff']:>+7.2f}  [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}]{star}"
        )
    lines.append(f"{RESAMPLES:,} paired resamples, seed {SEED}; * = the interval excludes 0")
    return "\n".join(lines)
