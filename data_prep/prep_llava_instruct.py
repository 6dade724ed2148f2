"""LLaVA-Instruct conversation JSON (e.g. llava_instruct_150k.json, llava_v1_5_mix665k.json) -> vlmtune JSONL.

    python data_prep/prep_llava_instruct.py llava_instruct_150k.json --images /data/coco/train2017 --out instruct.jsonl

Each entry ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}`` becomes a
``conversation`` record; turns must alternate human/gpt starting with human, and an entry with an image
must have exactly one ``<image>`` token in its first human turn. Text-only entries are kept (no image).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make `data_prep` and `vlmtune` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_prep.common import PrepError, Report, base_parser, finish, image_path, read_json, run

IMAGE_TOKEN = "<image>"


def check_conversation(conv, has_image: bool) -> str:
    """Reason the conversation is unusable, or ``""``."""
    if not isinstance(conv, list) or len(conv) < 2:
        return "conversations missing or shorter than one human/gpt exchange"
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return "turn without a string 'value'"
        if turn.get("from") != ("human" if i % 2 == 0 else "gpt"):
            return "turns do not alternate human/gpt starting with human"
        if not turn["value"].strip():
            return "empty turn"
    n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if has_image and (n_tokens != 1 or IMAGE_TOKEN not in conv[0]["value"]):
        return "image entry without exactly one <image> token in the first human turn"
    if not has_image and n_tokens:
        return "<image> token but no image"
    return ""


def convert(path, images: str, out: Path, report: Report) -> None:
    data = read_json(path, "LLaVA-Instruct")
    if not isinstance(data, list):
        raise PrepError(f"{path}: a LLaVA-Instruct file is a JSON list of conversations")
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "id" not in entry:
            report.skip("entry without id", f"[{i}]")
            continue
        has_image = bool(entry.get("image"))
        reason = check_conversation(entry.get("conversations"), has_image)
        if reason:
            report.skip(reason, entry["id"])
            continue
        base = f"llava-{entry['id']}"
        seen[base] = seen.get(base, 0) + 1  # the mix files repeat ids (several conversations per image)
        record = {
            "id": base if seen[base] == 1 else f"{base}-{seen[base]}",
            "task": "conversation",
            "conversations": [{"from": t["from"], "value": t["value"]} for t in entry["conversations"]],
            "meta": {"source_id": str(entry["id"])},
        }
        if has_image:
            record["image"] = image_path(images, str(entry["image"]), out)
        else:
            report.note("text-only conversations")
        report.keep(record)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("conversations", help="LLaVA-Instruct JSON list")
    p.add_argument("--images", default="", help="image folder the entries' 'image' paths are relative to")
    args = p.parse_args(argv)
    report = Report("llava-instruct")
    convert(args.conversations, args.images, Path(args.out), report)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(run(main))
