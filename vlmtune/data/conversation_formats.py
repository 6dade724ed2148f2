"""Conversation records in the formats people keep their data in -> the one internal conversation record.

Internal (LLaVA's format, what the pipelines read)::

    {"id": "r1", "task": "conversation", "image": "a.png" | "images": ["a.png", "b.png"],
     "conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}]}

Accepted as well (the same record after :func:`to_internal`):

- OpenAI / LLaMA-Factory ``messages``: ``{"messages": [{"role": "user", "content": "<image>Q"},
  {"role": "assistant", "content": "A"}], "images": ["a.png"]}``; ``content`` may also be a list of parts
  ``{"type": "text", "text": ...}`` / ``{"type": "image"}`` (an image part is written ``<image>\\n``,
  LLaVA's placeholder line); a top-level ``system`` string becomes a system turn. Each image path is given
  once: in ``images`` with bare image parts marking where each goes (LLaMA-Factory, TRL), or in every image
  part (``{"type": "image", "image": path}``, ``{"type": "image_url", "image_url": {"url": path}}``) with
  no ``images``; a part's path next to ``image``/``images``, or only some parts with a path, is refused.
- ShareGPT ``conversations`` with ``from``/``value`` (roles ``human``/``gpt``, also ``user``/``assistant``)
  or ``role``/``content`` keys.
- ``data.columns`` renames the user's keys first: ``{"messages": "conv", "images": "img"}`` reads ``conv``
  as ``messages`` and ``img`` as ``images``.

A conversation without an ``id`` gets the stable ``fallback_id`` its reader derives from the file name and
line (``own.jsonl:3``) or list index (``own.json#2``); the reader says how many. A one-image ``images`` list
becomes ``image`` (same tokens either way). :func:`check_turns` rejects, with one line, what would otherwise
fail part-way through training: turns that do not alternate user/assistant, no assistant turn, and
``<image>`` placeholders that do not match the number of images. Errors name ``file:line`` (or ``item``),
the record, the turn (and part) and the bad key.
"""

from __future__ import annotations

from typing import Any

from vlmtune.data.datasets_files import url_image
from vlmtune.data.errors import DataError
from vlmtune.data.templates import IMAGE_TOKEN

# role names of the accepted formats -> the internal ``from`` values
ROLES = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt", "system": "system"}
# what each turn format names its role, and the role names listed first in its errors
ROLE_HINTS = {"role": "user/assistant/system (or human/gpt)", "from": "human/gpt/system (or user/assistant)"}

# an image part: where it is (``file:line: record 'r' messages turn 1 part 1``) and its own path, if any
ImagePart = tuple[str, str | None]


def rename_columns(row: dict, columns: dict[str, str]) -> dict:
    """A copy of ``row`` with each mapped column under its record key (``{"messages": "conv"}``: conv ->
    messages); a column the row does not have is left out (a text-only row has no image)."""
    if not columns:
        return row
    sources = set(columns.values())
    out = {k: v for k, v in row.items() if k not in sources}
    for key, source in columns.items():
        if source in row:
            out[key] = row[source]
    return out


def _part_path(part: dict, where: str) -> str | None:
    """The path an image part carries (``image`` / ``path``, or ``image_url.url``; a ``data:`` URL decoded
    into the cache, :func:`~vlmtune.data.datasets_files.url_image`), None for a bare one."""
    url = part.get("image_url")
    source = part.get("image") or part.get("path") or (url.get("url") if isinstance(url, dict) else url)
    if source in (None, ""):
        return None
    if not isinstance(source, str):
        raise DataError(f"{where} has image {source!r:.60}; give a path string (or a bare image part)")
    return url_image(source, where)


def _content_text(content: Any, where: str, key: str, image_parts: list[ImagePart]) -> str:
    """A turn's ``content`` (named ``key``) as text with ``<image>`` placeholders; its image parts are
    appended to ``image_parts``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DataError(f"{where} has {key} {content!r:.60}; give a string or a list of text/image parts")
    pieces = []
    for j, part in enumerate(content, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str) or kind == "text":
            pieces.append(part if isinstance(part, str) else str(part.get("text", "")))
        elif kind in ("image", "image_url"):
            pieces.append(IMAGE_TOKEN + "\n")
            image_parts.append((f"{where} part {j}", _part_path(part, f"{where} part {j}")))
        else:
            raise DataError(f"{where} part {j} ({part!r:.60}) is neither text nor an image")
    return "".join(pieces)


def _turn(turn: Any, where: str, field: str, image_parts: list[ImagePart]) -> dict:
    """One ``messages`` / ``conversations`` turn (``role``/``content`` or ``from``/``value`` keys) ->
    ``{"from": "human"|"gpt"|"system", "value": text}``; ``where`` names file, record, field and turn."""
    if not isinstance(turn, dict):
        raise DataError(f"{where} must be an object, got {turn!r:.60}")
    role_key = next((k for k in ROLE_HINTS if k in turn), "role" if field == "messages" else "from")
    role = turn.get(role_key)
    if role not in ROLES:
        said = f"has {role_key} {role!r:.40}" if role_key in turn else "has no 'role' (or 'from')"
        raise DataError(f"{where} {said}; use {ROLE_HINTS[role_key]}")
    content_key = "content" if "content" in turn else "value"
    if content_key not in turn:
        raise DataError(f"{where} has no 'content' (or 'value'); give the turn's text")
    return {"from": ROLES[role], "value": _content_text(turn[content_key], where, content_key, image_parts)}


def _turns(messages: Any, where: str, field: str, image_parts: list[ImagePart]) -> list[dict]:
    """``messages`` / ``conversations`` (LLaVA, ShareGPT) -> internal ``{"from", "value"}`` turns."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where} field '{field}' must be a non-empty list of turns")
    return [
        _turn(turn, f"{where} {field} turn {i}", field, image_parts) for i, turn in enumerate(messages, 1)
    ]


def _part_images(record: dict, image_parts: list[ImagePart], where: str) -> list[str]:
    """The paths the image parts give, checked against the record's own ``image`` / ``images``.

    Each path is given once (LLaMA-Factory / TRL): in the ``images`` list, the parts bare
    (``{"type": "image"}``) marking where each goes, or in every image part with no ``images``. A part
    path next to ``image``/``images``, or parts of which only some have a path, are refused (one line)."""
    with_path = [(at, path) for at, path in image_parts if path is not None]
    if not with_path:
        return []
    at, path = with_path[0]
    given = next((key for key in ("images", "image") if record.get(key) is not None), None)
    if given is not None:
        raise DataError(
            f"{at} gives image {path!r} while the record also has '{given}' {record[given]!r:.60}; give each "
            f"path once: in '{given}' with bare {{\"type\": \"image\"}} parts, or in the parts without '{given}'"
        )
    if len(with_path) < len(image_parts):
        bare = next(at for at, path in image_parts if path is None).removeprefix(f"{where} ")  # turn, part
        raise DataError(
            f"{where} has {len(image_parts)} image parts but {len(with_path)} with a path ({bare} has none); "
            "give every image part its path, or list the paths in 'images' and leave the parts bare"
        )
    return [path for _, path in with_path]


def drop_empty_images(row: dict, where: str = "") -> dict:
    """``row`` without an ``images: []`` / ``images: None`` / ``image: None``: a text-only record (the
    LLaMA-Factory / TRL convention), in JSONL, JSON and datasets alike; ``data:`` URLs among its image
    strings decoded into the cache (:func:`~vlmtune.data.datasets_files.url_image`)."""
    for key in ("image", "images"):
        if key in row and (row[key] is None or (key == "images" and row[key] == [])):
            del row[key]
        elif isinstance(row.get(key), str):
            row[key] = url_image(row[key], f"{where}: {key}")
        elif key == "images" and isinstance(row.get(key), list):
            row[key] = [url_image(v, f"{where}: images[{i}]") if isinstance(v, str) else v
                        for i, v in enumerate(row[key])]  # fmt: skip
    return row


def is_conversation(row: Any) -> bool:
    """A row in one of the conversation formats (after :func:`rename_columns`)."""
    return isinstance(row, dict) and ("messages" in row or "conversations" in row)


def to_internal(
    row: Any, where: str, fallback_id: str, columns: dict[str, str] | None = None
) -> tuple[Any, bool]:
    """One parsed row -> ``(internal record, whether its id is fallback_id)`` (see the module docstring).
    Rows that are not conversations (vlmtune task records) pass through after the column renaming;
    non-objects pass through unchanged for :func:`vlmtune.data.records.validate_record` to reject."""
    if not isinstance(row, dict):
        return row, False
    row = drop_empty_images(rename_columns(row, columns or {}), where)
    if not is_conversation(row) or row.get("task", "conversation") != "conversation":
        return row, False
    record = {k: v for k, v in row.items() if k not in ("messages", "system")}
    derived = record.get("id") in (None, "")
    if derived:
        record["id"] = fallback_id
    named = f"{where}: record '{record['id']}'"
    image_parts: list[ImagePart] = []
    field = "messages" if "messages" in row else "conversations"
    turns = _turns(row[field], named, field, image_parts)
    if isinstance(row.get("system"), str) and row["system"]:
        turns.insert(0, {"from": "system", "value": row["system"]})
    record["conversations"] = turns
    record["task"] = "conversation"
    if found := _part_images(record, image_parts, named):
        record["images"] = found
    if isinstance(record.get("images"), list) and len(record["images"]) == 1 and "image" not in record:
        record["image"] = record.pop("images")[0]
    return record, derived


def check_turns(record: dict, where: str) -> None:
    """Turns alternate human/gpt from a human turn (system turns aside), at least one answer, and
    ``<image>`` placeholders either absent (one is put before the first question per image) or one per
    image."""
    rid = record["id"]
    turns = [t for t in record["conversations"] if t["from"] != "system"]
    for i, turn in enumerate(turns):
        expected = ("human", "gpt")[i % 2]
        if turn["from"] != expected:
            role = {"human": "user", "gpt": "assistant"}[expected]
            raise DataError(
                f"{where}: record '{rid}' turn {i + 1} is from '{turn['from']}', expected '{expected}' "
                f"({role}); turns must alternate user/assistant, starting with the user"
            )
    if len(turns) < 2:
        raise DataError(f"{where}: record '{rid}' has no assistant turn (nothing to learn or score)")
    images = record.get("images") or ([record["image"]] if record.get("image") else [])
    placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if placeholders and placeholders != len(images):
        raise DataError(
            f"{where}: record '{rid}' has {len(images)} image(s) but {placeholders} '{IMAGE_TOKEN}' "
            "placeholder(s) in its turns; give one per image (or none: they go before the first question)"
        )
