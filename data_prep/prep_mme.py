"""MME release folder (MME_Benchmark_release_version/) -> vlmtune JSONL (task ``vqa``, yes/no answers).

    python data_prep/prep_mme.py MME_Benchmark_release_version --out mme.jsonl

Each subtask folder holds either ``images/`` + ``questions_answers_YN/`` or the images and their
``.txt`` files side by side; a ``.txt`` line is ``question<TAB>Yes|No``, two per image. Image paths
are written relative to the output file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, run
from vlmtune.core.io import read_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _image_for(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def convert(root: Path, out: Path, report: Report) -> None:
    if not root.is_dir():
        raise PrepError(f"MME folder {root} does not exist")
    subtasks = sorted(d for d in root.iterdir() if d.is_dir())
    if not subtasks:
        raise PrepError(f"{root}: no subtask folders (expected e.g. existence/, OCR/)")
    for task_dir in subtasks:
        task = task_dir.name
        images = task_dir / "images" if (task_dir / "images").is_dir() else task_dir
        qa = task_dir / "questions_answers_YN" if (task_dir / "images").is_dir() else task_dir
        for txt in sorted(qa.glob("*.txt")):
            image = _image_for(images, txt.stem)
            if image is None:
                report.skip("no image next to the questions file", f"{task}/{txt.name}")
                continue
            for k, line in enumerate(read_text(txt, PrepError).splitlines()):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                    report.skip("line is not 'question<TAB>Yes|No'", f"{task}/{txt.name}:{k + 1}")
                    continue
                report.keep(
                    {
                        "id": f"mme-{task}-{txt.stem}-{k}",
                        "task": "vqa",
                        "image": os.path.relpath(image.resolve(), out.resolve().parent),
                        "question": parts[0],
                        "answer": parts[1].strip(),
                        "meta": {
                            "category": task,
                            "image_name": image.name,
                            "question_id": f"{task}/{image.name}",
                        },
                    }
                )


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("root", help="MME_Benchmark_release_version folder")
    args = p.parse_args(argv)
    report = Report("mme")
    convert(Path(args.root), Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
