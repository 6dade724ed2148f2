"""Multi-turn packing, as in LLaVA-1.5's instruction data: the questions about one image become
the turns of one conversation, so a single forward pass supervises several answers.

    [Q1 -> A1], [Q2 -> A2], [Q3 -> A3] about image I  ->  <image> Q1 A1 Q2 A2 Q3 A3

Each turn is rendered exactly as the single-turn record would be (same template choice per
record id); only the first turn carries the ``<image>`` placeholder. Records with several images
or already in conversation form pass through unchanged.
"""

from __future__ import annotations

import random

from vlmtune.data.templates import IMAGE_TOKEN, record_to_turns


def _single_image(record: dict) -> str | None:
    if record.get("task") == "conversation" or "images" in record:
        return None
    return record.get("image") or None


def pack_turns(
    records: list[dict], turns_per_image: int, template_seed: int = 0, seed: int = 0
) -> list[dict]:
    """Group single-image records by image into conversations of at most ``turns_per_image`` turns.

    Turn order within an image is a seeded shuffle; groups keep the order in which their images
    first appear. ``turns_per_image <= 1`` returns ``records`` unchanged.
    """
    if turns_per_image <= 1:
        return records
    by_image: dict[str, list[dict]] = {}
    packed: list[dict | str] = []  # a record passed through, or the image key of a group
    for record in records:
        image = _single_image(record)
        if image is None:
            packed.append(record)
            continue
        if image not in by_image:
            by_image[image] = []
            packed.append(image)
        by_image[image].append(record)
    out: list[dict] = []
    for item in packed:
        if isinstance(item, dict):
            out.append(item)
            continue
        group = by_image[item]
        random.Random(f"{seed}/{item}").shuffle(group)
        for start in range(0, len(group), turns_per_image):
            out.append(_conversation(group[start : start + turns_per_image], item, template_seed))
    return out


def _conversation(records: list[dict], image: str, template_seed: int) -> dict:
    turns = []
    for k, record in enumerate(records):
        (_, prompt), (_, answer) = record_to_turns(record, template_seed)
        if k > 0:
            prompt = prompt.replace(IMAGE_TOKEN + "\n", "", 1)
        turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
    first = records[0]
    return {
        "id": first["id"] if len(records) == 1 else f"{first['id']}+{len(records) - 1}",
        "task": "conversation",
        "image": image,
        "conversations": turns,
        "turn_ids": [r["id"] for r in records],
    }
