"""Conversation records in the formats people keep their data in -> the one internal conversation record.

Internal (LLaVA's format, what the pipelines read)::

    {"id": "r1", "task": "conversation", "image": "a.png" | "images": ["a.png", "b.png"],
     "conversations": [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}]}

Accepted as well (the same record after :func:`to_internal`):

- OpenAI / LLaMA-Factory ``messages``: ``{"messages": [{"role": "user", "content": "<image>Q"},
  {"role": "assistant", "content": "A"}], "images": ["a.png"]}``; ``content`` may also be a list of parts
  ``{"type": "text", "text": ...}`` / ``{"type": "image"[, "image": path]}`` (an image part is written
  ``<image>\\n``, LLaVA's placeholder line); a top-level ``system`` string becomes a system turn.
- ShareGPT ``conversations`` with ``from``/``value`` (roles ``human``/``gpt``, also ``user``/``assistant``)
  or ``role``/``content`` keys.
- ``data.columns`` renames the user's keys first: ``{"messages": "conv", "images": "img"}`` reads ``conv``
  as ``messages`` and ``img`` as ``images``.

A conversation without an ``id`` gets the stable ``fallback_id`` its reader derives from the file name and
line (``own.jsonl:3``) or list index (``own.json#2``); the reader says how many. A one-image ``images`` list
becomes ``image`` (same tokens either way). :func:`check_turns` rejects, with one line, what would otherwise
fail part-way through training: turns that do not alternate user/assistant, no assistant turn, and
``<image>`` placeholders that do not match the number of images.
"""

from __future__ import annotations

from typing import Any

from vlmtune.data.errors import DataError
from vlmtune.data.templates import IMAGE_TOKEN

# role names of the accepted formats -> the internal ``from`` values
ROLES = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt", "system": "system"}


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


def _content_text(content: Any, where: str, images: list[str]) -> str:
    """A message's content as text with ``<image>`` placeholders; image parts' paths go to ``images``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DataError(f"{where}: message content must be a string or a list of parts, got {content!r:.60}")
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str) or kind == "text":
            pieces.append(part if isinstance(part, str) else str(part.get("text", "")))
        elif kind in ("image", "image_url"):
            pieces.append(IMAGE_TOKEN + "\n")
            source = part.get("image") or part.get("path") or (part.get("image_url") or {}).get("url")
            if isinstance(source, str) and source:
                images.append(source)
        else:
            raise DataError(f"{where}: message part {part!r:.60} is neither text nor an image")
    return "".join(pieces)


def _turns(messages: Any, where: str, field: str, images: list[str]) -> list[dict]:
    """``messages`` / ShareGPT ``conversations`` -> internal ``{"from", "value"}`` turns."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: '{field}' must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(messages, 1):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {field} turn {i} must be an object, got {turn!r:.60}")
        role = turn.get("role", turn.get("from"))
        if field == "conversations" and (role not in ROLES or not isinstance(turn.get("value", ""), str)):
            turns.append(turn)  # not ShareGPT either: validate_record names what a LLaVA turn must be
            continue
        if role not in ROLES:
            raise DataError(
                f"{where}: {field} turn {i} has role {role!r}; use user/assistant/system (or human/gpt)"
            )
        content = turn["content"] if "content" in turn else turn.get("value")
        turns.append(
            {"from": ROLES[role], "value": _content_text(content, f"{where}: {field} turn {i}", images)}
        )
    return turns


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
    row = rename_columns(row, columns or {})
    if not is_conversation(row) or row.get("task", "conversation") != "conversation":
        return row, False
    record = {k: v for k, v in row.items() if k not in ("messages", "system")}
    found: list[str] = []
    field = "messages" if "messages" in row else "conversations"
    turns = _turns(row[field], where, field, found)
    if isinstance(row.get("system"), str) and row["system"]:
        turns.insert(0, {"from": "system", "value": row["system"]})
    record["conversations"] = turns
    record["task"] = "conversation"
    if found and "image" not in record and "images" not in record:
        record["images"] = found
    if isinstance(record.get("images"), list) and len(record["images"]) == 1 and "image" not in record:
        record["image"] = record.pop("images")[0]
    derived = record.get("id") in (None, "")
    if derived:
        record["id"] = fallback_id
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
