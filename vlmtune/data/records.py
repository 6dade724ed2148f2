"""Read and validate records: vlmtune JSONL (one record per line), a JSON list (LLaVA / ShareGPT), or a
``datasets`` Parquet file / ``save_to_disk`` folder.

Each row is first brought to the internal record (:mod:`vlmtune.data.conversation_formats`: ``data.columns``
renaming, OpenAI/ShareGPT ``messages`` -> LLaVA ``conversations``, a derived id when it has none), then
checked for an ``id`` (unique), a known ``task`` and the fields that task needs (:data:`REQUIRED_FIELDS`);
image paths are resolved to absolute paths (relative to ``image_root``, else the data file's folder).
Errors name ``file:line`` and the key; see :mod:`vlmtune.data.errors` for the raise/skip policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from vlmtune.core.data_spec import check_columns, file_format, parse_spec
from vlmtune.core.io import read_text
from vlmtune.data.conversation_formats import check_turns, rename_columns, to_internal
from vlmtune.data.errors import ON_ERROR, DataError, ErrorLog, handle
from vlmtune.data.images import load_image
from vlmtune.data.spec import spec_paths

if TYPE_CHECKING:
    from vlmtune.core.config import RunConfig

log = logging.getLogger("vlmtune.data")

# task -> groups of alternatives; each group needs at least one of its fields.
REQUIRED_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "vqa": (("image",), ("question",), ("answers", "answer")),
    "caption": (("image",), ("captions", "caption")),
    "vqg": (("image",), ("question",), ("answer", "answers")),
    "grounding": (("image",), ("boxes",)),
    "conversation": (("conversations",),),
    "nlvr": (("images", "image"), ("question",), ("answer",)),
    "mcq": (("question",), ("choices",), ("answer",)),
    "classify": (("image",), ("label",)),
}
TASKS = tuple(REQUIRED_FIELDS)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _is_box(box: Any) -> bool:
    bbox = box.get("bbox") if isinstance(box, dict) else None
    return (
        isinstance(box, dict)
        and isinstance(box.get("label"), str)
        and isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    )


def _is_turn(turn: Any) -> bool:
    return (
        isinstance(turn, dict)
        and turn.get("from") in ("human", "gpt", "system")
        and isinstance(turn.get("value"), str)
    )


# field -> (check, what it must be)
FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "image": (lambda v: isinstance(v, str) and v != "", "a non-empty path string"),
    "images": (_is_str_list, "a non-empty list of path strings"),
    "question": (lambda v: isinstance(v, str), "a string"),
    "answers": (_is_str_list, "a non-empty list of strings"),
    "answer": (lambda v: isinstance(v, str | int | bool), "a string"),
    "captions": (_is_str_list, "a non-empty list of strings"),
    "caption": (lambda v: isinstance(v, str), "a string"),
    "choices": (_is_str_list, "a non-empty list of strings"),
    "boxes": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(map(_is_box, v)),
        'a non-empty list of {"label": str, "bbox": [x1, y1, x2, y2]}',
    ),
    "conversations": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(map(_is_turn, v)),
        'a non-empty list of {"from": "human"|"gpt"|"system", "value": str}',
    ),
    "label": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
}


def validate_record(
    record: Any,
    where: str,
    required_fields_by_task: dict[str, tuple[tuple[str, ...], ...]] | None = None,
    default_task: str | None = None,
) -> dict:
    """Check one parsed record; returns it (``id`` as str, ``task`` filled) or raises DataError."""
    required = REQUIRED_FIELDS if required_fields_by_task is None else required_fields_by_task
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "id" not in record or record["id"] in (None, ""):
        raise DataError(f"{where}: record lacks field 'id' (every record needs a unique id)")
    if not isinstance(record["id"], str | int) or isinstance(record["id"], bool):
        raise DataError(f"{where}: record id must be a string, got {record['id']!r}")
    record["id"] = rid = str(record["id"])
    task = record.setdefault("task", default_task)
    if task is None:
        raise DataError(f"{where}: record '{rid}' lacks field 'task' (one of {', '.join(required)})")
    if task not in required:
        raise DataError(
            f"{where}: record '{rid}' has unknown task '{task}'; use one of {', '.join(required)}"
        )
    for group in required[task]:
        if not any(f in record for f in group):
            alt = f" (or {', '.join(repr(f) for f in group[1:])})" if len(group) > 1 else ""
            raise DataError(f"{where}: record '{rid}' lacks field '{group[0]}'{alt} needed for task {task}")
    for key, (check, what) in FIELD_CHECKS.items():
        if key in record and not check(record[key]):
            raise DataError(f"{where}: record '{rid}' field '{key}' must be {what}, got {record[key]!r:.80}")
    if task == "conversation":
        check_turns(record, where)
    return record


def resolve_images(record: dict, base: Path, check: bool = False, where: str = "") -> dict:
    """Make ``image``/``images`` absolute (relative paths are taken from ``base``)."""
    for key in ("image", "images"):
        if key not in record:
            continue
        paths = [record[key]] if key == "image" else record[key]
        resolved = [str(p if (p := Path(x).expanduser()).is_absolute() else base / p) for x in paths]
        if check:  # decode once, so unreadable images are found (and counted) before training
            for path in resolved:
                if not Path(path).is_file():
                    what = "is a folder, not an image file" if Path(path).is_dir() else "not found"
                    raise DataError(
                        f"{where}: record '{record['id']}' image '{path}' {what}; check data.image_root"
                    )
                try:
                    load_image(path, record_id=record["id"])
                except DataError as e:
                    raise DataError(f"{where}: {e}") from None
        record[key] = resolved[0] if key == "image" else resolved
    return record


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"data file '{path}' not found")
    if path.is_dir():
        raise DataError(f"data file '{path}' is a folder; give a .jsonl or .json file")


# (where, parse, fallback id): where names file and line for messages, parse() returns the row,
# fallback id is the stable id a conversation without one gets
Item = tuple[str, Callable[[], Any], str]


def _collect(
    items: Iterable[Item],
    path: Path,
    on_error: str,
    errors: ErrorLog | None,
    required_fields_by_task: dict | None,
    image_root: str | Path | None,
    task: str | None,
    check_images: bool,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Validate items in order (each row through ``to_internal`` first), applying the on_error policy."""
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")
    errors = errors if errors is not None else ErrorLog()
    skipped_before, reasons_before = errors.count, len(errors.reasons)
    base = Path(image_root).expanduser() if image_root else path.parent
    records: list[dict] = []
    first_line: dict[str, str] = {}
    total = 0
    derived: list[str] = []  # ids named by file and line (conversations without one)
    for where, parse, fallback_id in items:
        total += 1
        try:
            record, derived_id = to_internal(parse(), where, fallback_id, columns)
            record = validate_record(record, where, required_fields_by_task, task)
            if record["id"] in first_line:
                raise DataError(
                    f"{where}: duplicate id '{record['id']}' (first at {first_line[record['id']]}); ids must be unique"
                )
            resolve_images(record, base, check_images, where)
        except DataError as e:
            handle(e, on_error, errors, where)
            continue
        first_line[record["id"]] = where
        records.append(record)
        derived += [record["id"]] if derived_id else []
    skipped = errors.count - skipped_before
    if total == 0:
        raise DataError(f"{path}: empty file (no records); check the path or regenerate the data")
    if not records:
        first = errors.reasons[reasons_before] if len(errors.reasons) > reasons_before else "?"
        raise DataError(f"{path}: no valid records ({skipped} skipped; first: {first})")
    if skipped:
        log.warning("%s: skipped %d bad record(s) of %d (data.on_error=skip)", path, skipped, total)
    if derived:
        log.warning(
            "%s: %d record(s) have no 'id'; named by file and line/index (e.g. '%s'), stable while the file's "
            "order stays", path, len(derived), derived[0],
        )  # fmt: skip
    return records


def _jsonl_items(path: Path) -> Iterable[Item]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"

            encoding = "utf-8-sig" if lineno == 1 else "utf-8"  # tolerate a BOM

            def parse(raw: bytes = raw, where: str = where, encoding: str = encoding) -> Any:
                try:
                    return json.loads(raw.decode(encoding))
                except UnicodeDecodeError as e:
                    raise DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None

            yield where, parse, f"{path.name}:{lineno}"


def read_jsonl(
    path: str | Path,
    on_error: str = "raise",
    errors: ErrorLog | None = None,
    required_fields_by_task: dict[str, tuple[tuple[str, ...], ...]] | None = None,
    image_root: str | Path | None = None,
    task: str | None = None,
    check_images: bool = False,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Records of a vlmtune JSONL file (blank lines ignored; vlmtune records or conversations in any
    format of :mod:`~vlmtune.data.conversation_formats`); ``task`` fills records without one."""
    path = Path(path)
    _check_file(path)
    items = _jsonl_items(path)
    return _collect(
        items, path, on_error, errors, required_fields_by_task, image_root, task, check_images, columns
    )


def read_llava_json(
    path: str | Path,
    on_error: str = "raise",
    errors: ErrorLog | None = None,
    required_fields_by_task: dict[str, tuple[tuple[str, ...], ...]] | None = None,
    image_root: str | Path | None = None,
    task: str | None = "conversation",
    check_images: bool = False,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """A JSON list: LLaVA's ``{"id", "image"?, "conversations": [...]}`` as is (task conversation), or
    ShareGPT / OpenAI ``messages`` records (:mod:`~vlmtune.data.conversation_formats`)."""
    path = Path(path)
    _check_file(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))  # tolerate a BOM, as JSONL does
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        hint = "; it holds one record a line (JSON Lines): name it .jsonl" if _is_json_lines(e) else ""
        raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]}){hint}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (LLaVA format), got {type(data).__name__}")
    items = ((f"{path}:item {i}", lambda r=r: r, f"{path.name}#{i}") for i, r in enumerate(data))
    return _collect(
        items, path, on_error, errors, required_fields_by_task, image_root, task, check_images, columns
    )


def _is_json_lines(error: json.JSONDecodeError) -> bool:
    """A ``.json`` that fails where its second value starts, after a first line that is one object."""
    first = error.doc[: error.pos].strip()
    return error.msg == "Extra data" and first.startswith("{") and "\n" not in first


def read_dataset(
    path: str | Path,
    split: str = "train",
    on_error: str = "raise",
    errors: ErrorLog | None = None,
    required_fields_by_task: dict[str, tuple[tuple[str, ...], ...]] | None = None,
    image_root: str | Path | None = None,
    task: str | None = None,
    check_images: bool = False,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Records of a ``datasets`` Parquet file or ``save_to_disk`` folder (``split`` of a DatasetDict):
    ``data.columns`` renamed, images (paths, bytes, PIL) as paths (:mod:`vlmtune.data.datasets_files`)."""
    path = Path(path)
    items = _dataset_items(path, split, check_columns(columns or {}))
    return _collect(items, path, on_error, errors, required_fields_by_task, image_root, task, check_images)


def _dataset_items(path: Path, split: str, columns: dict[str, str]) -> Iterable[Item]:
    """Rows of a dataset, renamed by ``columns``, with their images turned into paths when parsed."""
    from vlmtune.data.datasets_files import dataset_rows, with_image_paths

    for i, row in enumerate(dataset_rows(path, split, columns)):
        where = f"{path}:row {i}"

        def parse(row: dict = row, where: str = where) -> dict:
            return with_image_paths(rename_columns(row, columns), where)

        yield where, parse, f"{path.name}#{i}"


def read_records(path: str | Path, split: str = "train", columns: dict | None = None, **kwargs) -> list[dict]:
    """Dispatch on the format (:func:`vlmtune.core.data_spec.file_format`): ``.json`` ->
    :func:`read_llava_json`, ``.parquet`` / a folder -> :func:`read_dataset`, else :func:`read_jsonl`."""
    fmt = file_format(str(path))
    if fmt == "parquet" or Path(path).is_dir():
        return read_dataset(path, split, columns=columns, **kwargs)
    reader = read_llava_json if fmt == "json" else read_jsonl
    return reader(path, columns=check_columns(columns or {}), **kwargs)


def read_classification(spec: str, split: str = "train", max_samples: int = 0) -> list[dict]:
    """Records of a classification spec, or of JSONL paths with ``classify`` records."""
    records = []
    for path in spec_paths(spec, split):
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("label"), int) or "image" not in rec:
                raise DataError(
                    f"{path}:{lineno}: a classify record needs an integer 'label' and an 'image', got {rec!r:.60}"
                )
            if not Path(rec["image"]).is_absolute():
                rec["image"] = str(path.parent / rec["image"])
            records.append(rec)
    if not records:
        raise DataError(f"data '{spec}' has no records")
    return records[:max_samples] if max_samples > 0 else records


def load_records(
    spec: str,
    split: str = "train",
    on_error: str = "raise",
    errors: ErrorLog | None = None,
    image_root: str | Path | None = None,
    max_samples: int = 0,
    n_images: int | None = None,
    cache_dir: str | Path | None = None,
    image_size: int = 64,
    tasks: Iterable[str] = (),
    check_images: bool = False,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """Records of a data spec (``shapes:vqa[,caption][@split]``, or JSONL / JSON / Parquet files and saved
    ``datasets`` folders, comma-separated; ``columns``: ``data.columns`` for user files).

    Ids must be unique across files. ``tasks`` (when given) keeps only those tasks; ``max_samples``
    (> 0) keeps the first N records. ``image_root`` applies to user files, not to generated
    (``shapes:``, ``digits:``, ...) data, whose images sit next to their JSONL.
    """
    parsed = parse_spec(spec)
    root = None if parsed.generated else image_root
    records: list[dict] = []
    seen: set[str] = set()
    for path in spec_paths(parsed, split, n_images, cache_dir, image_size):
        kwargs = dict(on_error=on_error, errors=errors, image_root=root, check_images=check_images)
        user = {} if parsed.generated else {"split": parsed.split_or(split), "columns": columns}
        for record in read_records(path, **user, **kwargs):
            if record["id"] in seen:
                handle(
                    DataError(f"{path}: id '{record['id']}' also appears in another data file"),
                    on_error,
                    errors,
                )
                continue
            seen.add(record["id"])
            records.append(record)
    wanted = set(tasks)
    if wanted:
        records = [r for r in records if r["task"] in wanted]
        if not records:
            raise DataError(f"data '{spec}' has no records of task(s) {', '.join(sorted(wanted))}")
    return records[:max_samples] if max_samples > 0 else records


def load_split(
    cfg: RunConfig, spec: str, split: str, max_samples: int, errors: ErrorLog | None
) -> list[dict]:
    """The records of ``spec`` as ``vlmtune train`` reads them under ``cfg.data`` (train: ``shapes_size``
    images; ``data.on_error=skip``: unreadable images found now and counted in ``errors``)."""
    return load_records(
        spec,
        split=split,
        on_error=cfg.data.on_error,
        errors=errors,
        image_root=cfg.data.image_root or None,
        max_samples=max_samples,
        n_images=cfg.data.shapes_size if split == "train" else None,
        tasks=cfg.data.tasks,
        check_images=cfg.data.on_error == "skip",  # skip: find unreadable images now and count them
        columns=cfg.data.columns,
    )


def cap_records(records: list[dict], max_samples: int, what: str, key: str) -> tuple[list[dict], str]:
    """The first ``max_samples`` records (0: all) and the line that says so when it cuts ('' otherwise), e.g.
    ``eval: 500 of 520 records (data.max_eval_samples=500; data.max_eval_samples=0 for all)``."""
    if max_samples <= 0 or len(records) <= max_samples:
        return records, ""
    return records[:max_samples], (
        f"{what}: {max_samples:,} of {len(records):,} records ({key}={max_samples}; {key}=0 for all)"
    )


class RecordDataset(Dataset):
    """A map-style dataset over validated records; ``transform(record)`` (optional) runs per item."""

    def __init__(self, records: list[dict], transform: Callable[[dict], Any] | None = None):
        if not records:
            raise DataError("dataset is empty (no records)")
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        record = self.records[index]
        return self.transform(record) if self.transform else record


def record_images(record: dict) -> list[str]:
    """The image paths of a record, in order (``images`` for multi-image tasks, else ``image``)."""
    if "images" in record:
        return list(record["images"])
    return [record["image"]] if record.get("image") else []
