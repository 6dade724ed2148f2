"""Shared helpers of the data_prep scripts: reading, image paths, skip accounting, atomic JSONL output.

Every script: ``python data_prep/prep_X.py INPUTS... --out FILE.jsonl [--images DIR] [--check-images]``;
it validates each published record, writes the vlmtune schema (docs/ARCHITECTURE.md) atomically and
prints the number written plus skipped records grouped by reason (with the first few ids).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from vlmtune.core.io import read_text


class PrepError(ValueError):
    """A fatal problem with an input file; the message is one line naming the file and key."""


def read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise PrepError(f"{what} file {path} does not exist")
    try:
        return json.loads(read_text(path, PrepError))
    except json.JSONDecodeError as e:
        raise PrepError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def integer(value, path: str | Path, where: str, key: str) -> int:
    """``int(value)`` of an id field; a value that is not an integer is a PrepError naming the file, the
    record and the key (a wrong or edited file: nothing is written)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PrepError(
            f"{path}: {where}: '{key}' is {value!r}, not an integer; is it the right file?"
        ) from None


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` pairs; a line that is not a JSON object is a fatal error."""
    path = Path(path)
    if not path.is_file():
        raise PrepError(f"{what} file {path} does not exist")
    out = []
    for lineno, line in enumerate(read_text(path, PrepError).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrepError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise PrepError(f"{path}:{lineno}: expected a JSON object")
        out.append((lineno, obj))
    return out


class Report:
    """Counts written and skipped records (by reason) and prints a short summary."""

    def __init__(self, name: str):
        self.name = name
        self.records: list[dict] = []
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.notes: Counter[str] = Counter()

    def keep(self, record: dict) -> None:
        self.records.append(record)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(str(where))

    def note(self, what: str) -> None:
        self.notes[what] += 1

    def summary(self, out: Path) -> str:
        lines = [f"{self.name}: wrote {len(self.records)} records to {out}"]
        for what, n in sorted(self.notes.items()):
            lines.append(f"  {what}: {n}")
        total = sum(self.skipped.values())
        if total:
            lines.append(f"  skipped {total}:")
            for reason, n in self.skipped.most_common():
                lines.append(f"    {n} x {reason} (e.g. {', '.join(self.examples[reason])})")
        return "\n".join(lines)


def image_path(images: str, filename: str, out: Path) -> str:
    """Path stored in a record: relative to the output JSONL's folder when ``images`` is an existing or
    absolute folder, else ``images/filename`` as given (resolved later against ``data.image_root``)."""
    path = Path(images) / filename if images else Path(filename)
    if Path(images).is_absolute() or (images and Path(images).is_dir()):
        return os.path.relpath(path.resolve(), out.resolve().parent)
    return path.as_posix()


def check_image(record: dict, out: Path, report: Report) -> bool:
    """``--check-images``: skip a record whose image file does not exist."""
    for rel in [record["image"]] if record.get("image") else record.get("images", []):
        p = Path(os.path.normpath(Path(rel) if Path(rel).is_absolute() else out.resolve().parent / rel))
        if not p.is_file():
            report.skip("image file not found", f"{record['id']} ({p})")
            return False
    return True


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, rename: never a torn JSONL
    (the same scheme as vlmtune.core.io, without importing torch into these scripts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="output JSONL path")
    p.add_argument("--check-images", action="store_true", help="skip records whose image file is missing")
    p.add_argument("--limit", type=int, default=0, help="keep at most this many records (0 = all)")
    return p


def finish(report: Report, args: argparse.Namespace) -> int:
    out = Path(args.out)
    records = report.records
    if args.check_images:
        records = [r for r in records if check_image(r, out, report)]
    if args.limit > 0:
        records = records[: args.limit]
    report.records = records
    if not records:
        print(report.summary(out).replace("wrote 0 records to", "no records left for"), file=sys.stderr)
        return 2
    write_jsonl(records, out)
    print(report.summary(out))
    return 0


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` turning input errors into one line on stderr and exit code 2."""
    try:
        return main(argv)
    except (PrepError, FileNotFoundError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 2
