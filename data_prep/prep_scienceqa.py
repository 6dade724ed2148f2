"""ScienceQA problems.json + pid_splits.json -> vlmtune JSONL (task ``mcq``, answer = option letter).

    python data_prep/prep_scienceqa.py problems.json pid_splits.json --split test \
        --images /data/scienceqa/images --image-only --out sqa_img_test.jsonl

Image path: ``<images>/<split>/<pid>/<image>``. ``--image-only`` keeps problems with an image
(LLaVA-1.5 reports this SQA-IMG subset). ``meta.question_id`` is the pid, so a LLaVA answers file
(``question_id`` = pid) scores with ``vlmtune eval scienceqa --predictions``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def convert(problems_path, splits_path, split: str, images: str, image_only: bool, out: Path, report: Report):
    problems = read_json(problems_path, "ScienceQA problems")
    splits = read_json(splits_path, "ScienceQA pid_splits")
    if not isinstance(problems, dict):
        raise PrepError(f"{problems_path}: a ScienceQA problems file is a JSON object keyed by problem id")
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        have = ", ".join(splits) if isinstance(splits, dict) else "none"
        raise PrepError(f"{splits_path}: no split '{split}' (have: {have})")
    for pid in splits[split]:
        pid = str(pid)
        prob = problems.get(pid)
        if not isinstance(prob, dict):
            report.skip("pid not in problems.json", pid)
            continue
        choices = prob.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            report.skip("choices missing or not a list of 2+ options", pid)
            continue
        answer = prob.get("answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            report.skip("answer index out of range", pid)
            continue
        if not str(prob.get("question", "")).strip():
            report.skip("empty question", pid)
            continue
        if image_only and not prob.get("image"):
            report.note("problems without an image (dropped by --image-only)")
            continue
        record = {
            "id": f"scienceqa-{pid}",
            "task": "mcq",
            "question": prob["question"].strip(),
            "choices": [str(c) for c in choices],
            "answer": LETTERS[answer],
            "meta": {
                "pid": pid,
                "question_id": pid,  # LLaVA's answers files key by the pid
                "hint": str(prob.get("hint") or ""),
                **{k: prob[k] for k in ("subject", "grade", "topic", "category", "skill") if k in prob},
            },
        }
        if prob.get("image"):
            record["image"] = image_path(images, f"{split}/{pid}/{prob['image']}", out)
        report.keep(record)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("problems", help="ScienceQA problems.json")
    p.add_argument("pid_splits", help="ScienceQA pid_splits.json")
    p.add_argument("--split", default="test", help="split in pid_splits.json (default: test)")
    p.add_argument("--images", default="images", help="ScienceQA image root holding <split>/<pid>/")
    p.add_argument("--image-only", action="store_true", help="keep only problems with an image (SQA-IMG)")
    args = p.parse_args(argv)
    report = Report("scienceqa")
    convert(args.problems, args.pid_splits, args.split, args.images, args.image_only, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
