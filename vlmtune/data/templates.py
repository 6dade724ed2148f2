"""Instruction templates (InstructBLIP) and LLaVA's ``vicuna_v1`` conversation format.

Templates: the InstructBLIP lists for captioning (13), VQA (10) and VQG (6), verbatim from the
InstructBLIP paper's table, with the ``<Image>`` marker removed (the image comes first) and the
``{ Question }`` / ``{ Answer }`` placeholders written ``{question}`` / ``{answer}``. The template of an
example is chosen from ``sha256(f"{seed}:{record_id}")``, stable across runs, processes and machines.

``record_to_turns(record, seed)`` -> ``[("human", text), ("gpt", text), ...]``; the first human turn
starts with ``"<image>\\n"`` (one per image) when the record has an image:

- vqa (``vqa_style="llava"``, default): ``"{question}\\nAnswer the question using a single word or phrase."``
  (LLaVA-1.5); ``vqa_style="instructblip"``: a VQA template. Target: ``answer``, else the most common
  of ``answers``.
- caption: a caption template -> one of ``captions`` per record per epoch (:func:`pick_caption`), or ``caption``.
- vqg: a VQG template filled with ``answer`` -> ``question``.
- grounding: ``"Please provide the bounding box coordinate of the region this sentence describes: {label}."``
  (LLaVA-1.5 RefCOCO prompt) -> ``"[x1,y1,x2,y2]"`` of ``boxes[0]``, normalised by the image size
  (``meta.width/height``) and rounded to 2 decimals, e.g. ``"[0.05,0.08,0.33,0.36]"``.
- conversation: passed through (``from`` human/gpt).
- mcq: ``"{question}\\nA. {c0}\\nB. {c1}\\nAnswer with the option's letter from the given choices directly."`` -> letter.
- nlvr: ``"{question}\\nAnswer with true or false."`` -> ``"true"``/``"false"``.
- classify: ``"What is shown in the image? Answer with the class name."`` -> ``meta.label_name`` (else the label).

``render_vicuna(turns)`` -> segments ``[(text, is_assistant)]`` whose concatenation is exactly LLaVA's
``conv_vicuna_v1.get_prompt()`` (SeparatorStyle.TWO, sep " ", sep2 "</s>")::

    "{SYSTEM} USER: <image>\\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"

The prompt segment ends with ``"ASSISTANT:"``; the assistant segment is ``" A1</s>"`` (leading space
and the ``</s>`` end marker are part of the supervised text, so a generation prompt ending in
``"ASSISTANT:"`` matches training). Only assistant segments are trained on.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

from vlmtune.data.errors import DataError

CAPTION_TEMPLATES = (
    "A short image caption:",
    "A short image description:",
    "A photo of",
    "An image that shows",
    "Write a short description for the image.",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
)
VQA_TEMPLATES = (
    "{question}",
    "Question: {question}",
    "{question} A short answer to the question is",
    "Q: {question} A:",
    "Question: {question} Short answer:",
    "Given the image, answer the following question with no more than three words. {question}",
    "Based on the image, respond to this question with a short answer: {question}. Answer:",
    "Use the provided image to answer the question: {question} Provide your answer as short as possible:",
    'What is the answer to the following question? "{question}"',
    'The question "{question}" can be answered using the image. A short answer is',
)
VQG_TEMPLATES = (
    "Given the image, generate a question whose answer is: {answer}. Question:",
    "Based on the image, provide a question with the answer: {answer}. Question:",
    'Given the visual representation, create a question for which the answer is "{answer}".',
    "From the image provided, craft a question that leads to the reply: {answer}. Question:",
    "Considering the picture, come up with a question where the answer is: {answer}.",
    "Taking the image into account, generate an question that has the answer: {answer}. Question:",
)
TEMPLATES = {"caption": CAPTION_TEMPLATES, "vqa": VQA_TEMPLATES, "vqg": VQG_TEMPLATES}

IMAGE_TOKEN = "<image>"
VQA_PROMPT = "Answer the question using a single word or phrase."
GROUNDING_PROMPT = (
    "Please provide the bounding box coordinate of the region this sentence describes: {label}."
)
MCQ_PROMPT = "Answer with the option's letter from the given choices directly."
NLVR_PROMPT = "Answer with true or false."
CLASSIFY_PROMPT = "What is shown in the image? Answer with the class name."

# LLaVA conv_vicuna_v1 (llava/conversation.py)
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = {"human": "USER", "gpt": "ASSISTANT"}
SEP, SEP2 = " ", "</s>"

Turn = tuple[str, str]


# ---------------------------------------------------------------- template choice
def template_index(record_id: str, seed: int, n: int) -> int:
    """Deterministic index in ``[0, n)`` from ``sha256(f"{seed}:{record_id}")`` (not Python's hash())."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def record_random(purpose: str, seed: int, rounds: int, record: dict) -> random.Random:
    """``Random(f"{purpose}/{seed}/{rounds}/{record id}")``: a draw for one record in one epoch (or round of
    epochs) that depends on nothing else, so every process and a resumed run draw the same."""
    return random.Random(f"{purpose}/{seed}/{rounds}/{record.get('id', '')}")


def pick_caption(record: dict, seed: int = 0, epoch: int = 0) -> str:
    """The caption to train on in ``epoch``: ``captions`` (COCO: 5 per image) in a seeded order per record
    and round of ``len(captions)`` epochs, so each caption trains once per round, and the same ones in a
    resumed run: the order is ``Random(f"caption/{seed}/{round}/{record id}")``, stable across processes
    (``caption`` when the record has a single one)."""
    captions = record.get("captions") or [record["caption"]]
    rounds, k = divmod(epoch, len(captions))
    order = record_random("caption", seed, rounds, record).sample(range(len(captions)), len(captions))
    return captions[order[k]]


def vqa_target(record: dict) -> str:
    """``answer`` if given, else the most common of ``answers`` (ties: first seen)."""
    if "answer" in record:
        return str(record["answer"])
    return Counter(record["answers"]).most_common(1)[0][0]


def render_instruction(record: dict, seed: int = 0, index: int | None = None) -> str:
    """The instruction text for a caption/vqa/vqg record (no image marker).

    ``index`` forces a template; otherwise :func:`template_index` picks one from (seed, record id).
    """
    task = record.get("task")
    if task not in TEMPLATES:
        raise DataError(f"record '{record.get('id')}': no instruction templates for task '{task}'")
    templates = TEMPLATES[task]
    i = template_index(str(record["id"]), seed, len(templates)) if index is None else index % len(templates)
    if task == "vqa":
        return templates[i].format(question=record["question"])
    if task == "vqg":
        answer = record["answer"] if "answer" in record else vqa_target(record)
        return templates[i].format(answer=answer)
    return templates[i]


# ---------------------------------------------------------------- boxes
def format_box(bbox: list[float], width: float, height: float) -> str:
    """Pixel ``[x1, y1, x2, y2]`` -> ``"[0.05,0.08,0.33,0.36]"`` (normalised, 2 decimals)."""
    scaled = [bbox[0] / width, bbox[1] / height, bbox[2] / width, bbox[3] / height]
    return "[" + ",".join(f"{min(max(v, 0.0), 1.0):.2f}" for v in scaled) + "]"


_BOX_RE = re.compile(r"\[\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*,\s*([-+\d.eE]+)\s*\]")


def parse_box(text: str) -> list[float] | None:
    """First ``[a,b,c,d]`` in generated text -> 4 floats (normalised), or None."""
    match = _BOX_RE.search(text)
    if not match:
        return None
    try:
        return [float(v) for v in match.groups()]
    except ValueError:
        return None


# ---------------------------------------------------------------- records -> turns
def _image_prefix(record: dict) -> str:
    if "images" in record:
        return (IMAGE_TOKEN + "\n") * len(record["images"])
    return IMAGE_TOKEN + "\n" if record.get("image") else ""


def _conversation_turns(record: dict) -> list[Turn]:
    turns = [(t["from"], t["value"]) for t in record["conversations"] if t["from"] != "system"]
    for i, (role, _) in enumerate(turns):
        if role != ("human", "gpt")[i % 2]:
            raise DataError(
                f"record '{record['id']}': conversations must alternate human/gpt starting with human "
                f"(turn {i} is '{role}')"
            )
    if record.get("image") or record.get("images"):
        if not any(IMAGE_TOKEN in text for _, text in turns):
            turns[0] = ("human", _image_prefix(record) + turns[0][1])
    return turns


def _answer_letter(record: dict) -> str:
    answer, choices = record["answer"], record["choices"]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return chr(ord("A") + answer)
    if isinstance(answer, str) and len(answer) == 1 and answer.isalpha():
        return answer.upper()
    if answer in choices:
        return chr(ord("A") + choices.index(answer))
    raise DataError(
        f"record '{record['id']}': mcq answer {answer!r} is not an index, a letter or one of the choices"
    )


def _grounding_turn(record: dict) -> tuple[str, str]:
    box = record["boxes"][0]
    meta = record.get("meta") or {}
    if not (meta.get("width") and meta.get("height")):
        raise DataError(
            f"record '{record['id']}': grounding needs meta.width and meta.height (image size in pixels) "
            "to normalise its boxes"
        )
    return GROUNDING_PROMPT.format(label=box["label"]), format_box(box["bbox"], meta["width"], meta["height"])


def record_to_turns(
    record: dict, seed: int = 0, vqa_style: str = "llava", epoch: int = 0, template_per_epoch: bool = False
) -> list[Turn]:
    """A record as alternating ``("human", text)`` / ``("gpt", text)`` turns (see module docstring).
    ``epoch`` picks a caption record's caption (:func:`pick_caption`); with ``template_per_epoch`` (BLIP-2 /
    InstructBLIP) it also picks the instruction template: by the id ``f"{id}#epoch{epoch}"`` when epoch > 0."""
    task = record.get("task")
    keyed = {**record, "id": f"{record['id']}#epoch{epoch}"} if template_per_epoch and epoch else record
    if task == "conversation":
        return _conversation_turns(record)
    if task == "vqa":
        if vqa_style == "llava":
            prompt = f"{record['question']}\n{VQA_PROMPT}"
        elif vqa_style == "instructblip":
            prompt = render_instruction(keyed, seed)
        else:
            raise DataError(f"unknown vqa_style '{vqa_style}'; use llava or instructblip")
        answer = vqa_target(record)
    elif task == "caption":
        prompt = render_instruction(keyed, seed)
        answer = pick_caption(record, seed, epoch)
    elif task == "vqg":
        prompt, answer = render_instruction(keyed, seed), record["question"]
    elif task == "grounding":
        prompt, answer = _grounding_turn(record)
    elif task == "mcq":
        options = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(record["choices"]))
        prompt, answer = f"{record['question']}\n{options}\n{MCQ_PROMPT}", _answer_letter(record)
    elif task == "nlvr":
        prompt, answer = f"{record['question']}\n{NLVR_PROMPT}", str(record["answer"]).lower()
    elif task == "classify":
        name = (record.get("meta") or {}).get("label_name", record.get("label_name", record["label"]))
        prompt, answer = CLASSIFY_PROMPT, str(name)
    else:
        raise DataError(f"record '{record.get('id')}': no conversation format for task '{task}'")
    return [("human", _image_prefix(record) + prompt), ("gpt", answer)]


# ---------------------------------------------------------------- vicuna_v1
def image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal`` (llava/train/train.py): a turn with ``<image>`` has it moved to its
    start, ``"<image>\\n" + text.replace("<image>", "").strip()``; with several images (LLaVA has one), one
    ``"<image>\\n"`` each, in order. Text without a placeholder is unchanged."""
    n = text.count(IMAGE_TOKEN)
    return (IMAGE_TOKEN + "\n") * n + text.replace(IMAGE_TOKEN, "").strip() if n else text


def render_vicuna(turns: list[Turn], system: str = SYSTEM_PROMPT, eos: str = SEP2) -> list[tuple[str, bool]]:
    """Turns -> ``[(text, is_assistant)]`` segments; ``"".join`` equals LLaVA's ``get_prompt()``.

    A trailing human turn yields a generation prompt ending in ``"ASSISTANT:"``. Image placeholders go
    first in their turn, as LLaVA's training does (:func:`image_first`).
    """
    segments: list[tuple[str, bool]] = []
    prefix = system + SEP
    for i, (role, text) in enumerate(turns):
        expected = ("human", "gpt")[i % 2]
        if role != expected:
            raise DataError(f"turn {i} is '{role}', expected '{expected}' (turns alternate human/gpt)")
        if role == "human":
            segments.append((f"{prefix}{ROLES['human']}: {image_first(text)}{SEP}{ROLES['gpt']}:", False))
            prefix = ""
        else:
            segments.append((f" {text}{eos}", True))
    return segments


def vicuna_prompt(turns: list[Turn], system: str = SYSTEM_PROMPT, eos: str = SEP2) -> str:
    """The full prompt string (all segments joined)."""
    return "".join(text for text, _ in render_vicuna(turns, system, eos))


def generation_prompt(
    record: dict, seed: int = 0, vqa_style: str = "llava", system: str = SYSTEM_PROMPT
) -> str:
    """Prompt for generating the record's last answer: everything up to the final ``"ASSISTANT:"``."""
    turns = record_to_turns(record, seed, vqa_style)
    if turns[-1][0] == "gpt":
        turns = turns[:-1]
    return vicuna_prompt(turns, system)
