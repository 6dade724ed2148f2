"""Synthetic "shapes" dataset: the embedded default every pipeline can use offline.

Each image (default 64x64 PNG, light plain background) holds 1-3 non-overlapping shapes with
distinct types (circle, square, triangle) and distinct colours (red, green, blue, yellow), so every
question below has exactly one answer. Per image we write, one JSONL per task (schema in
docs/ARCHITECTURE.md, image paths relative to the JSONL):

- ``vqa``: 5 questions, each with ``answer`` (the canonical gold) and 10 human-style ``answers`` (mostly identical; sometimes a variant such
  as "2"/"two", "red"/"Red."/"a circle" that VQA normalisation maps back, rarely one wrong answer):
  ``How many shapes are there?`` (number), ``What color is the circle?``, ``What shape is red?``,
  ``Is there a green triangle?`` (yes/no, balanced), ``What shape is on the left?`` /
  ``What color is the shape on the right?`` (only when one shape lies wholly left/right of the others).
- ``caption``: 5 reference captions; ``captions[0]`` is canonical, left to right:
  "a red circle and a blue square".
- ``vqg``: question generation from the non-yes/no VQA pairs (``answer`` -> ``question``).
- ``chat``: one LLaVA-style ``conversation`` record per image: the image's ``vqa`` questions in
  random order, with VQA's "Answer the question using a single word or phrase." instruction,
  answered by a talkative assistant: answer first, then why ("red. The circle is red.",
  :func:`explained_answer`). The base model's instruction data: it teaches the answers, never the
  short-answer format.
- ``grounding``: one record per shape; ``boxes[0]`` is the referred shape {label "red circle",
  bbox [x1, y1, x2, y2]} in pixels with x2/y2 exclusive (the shape covers x1..x2-1), and
  ``meta.width/height``.
- ``locate``: a separate single-shape image per index, shapes 6-23 px at 64 px (smaller than in the
  scenes, so about a third are COCO-"medium"), with a ``grounding`` record (same schema): the
  one-object localisation data PIN is trained and scored on (``vlmtune eval pin-loc``).
- ``classify``: a separate single-shape image per index; ``label`` = colour*3 + shape index into
  :data:`CLASSES` (12 classes, name in ``meta.label_name``), ``meta.shape_label`` = index into
  :data:`SHAPES` (3 classes).

Everything is a pure function of (split, seed, index, image_size): identical arguments give
identical bytes. Splits use different seeds, so val/test images are held out from train.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from vlmtune.core.io import cache_dir
from vlmtune.data.errors import DataError
from vlmtune.data.templates import VQA_PROMPT

SHAPES_VERSION = "v5"  # cache folder; bump when the set of generated files or their bytes change
RNG_TAG = "v2"  # part of every random stream's seed: changing it changes every scene
SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 200, 30),
}
BACKGROUND = (245, 245, 245)
CLASSES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)  # classify labels: "red circle", ...
TASKS = ("vqa", "caption", "vqg", "chat", "grounding", "locate", "classify")
SPLITS = ("train", "val", "test")
DEFAULT_IMAGES = {"train": 2000, "val": 200, "test": 500}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


# ---------------------------------------------------------------- scene sampling
def _rng(split: str, seed: int, index: int, kind: str = "scene") -> random.Random:
    # str seeds go through sha512: stable across processes and Python runs (unlike hash()).
    return random.Random(f"shapes-{RNG_TAG}/{split}/{seed}/{kind}/{index}")


def _disjoint(a: list[int], b: list[int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def sample_scene(
    rng: random.Random,
    image_size: int,
    n_shapes: int | None = None,
    sizes: tuple[float, float] = (0.22, 0.36),
) -> list[dict]:
    """1-3 shapes ``{"shape", "color", "bbox": [x1, y1, x2, y2]}`` with distinct types and colours;
    square boxes whose side is ``sizes`` (fractions of the image side) at most."""
    n = n_shapes or rng.randint(1, 3)
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    lo, hi = max(4, round(sizes[0] * image_size)), max(5, round(sizes[1] * image_size))
    gap = max(1, image_size // 32)
    for _ in range(200):
        placed: list[dict] = []
        for shape, color in zip(shapes, colors):
            size = rng.randint(lo, hi - 3 * (n - 1) * image_size // 64)
            for _ in range(50):
                x1 = rng.randint(gap, image_size - gap - size)
                y1 = rng.randint(gap, image_size - gap - size)
                bbox = [x1, y1, x1 + size, y1 + size]
                if all(_disjoint(bbox, p["bbox"], gap) for p in placed):
                    placed.append({"shape": shape, "color": color, "bbox": bbox})
                    break
            else:
                break
        if len(placed) == n:
            return placed
    raise RuntimeError(f"could not place {n} shapes in {image_size}px")  # pragma: no cover


def _draw_shape(draw: ImageDraw.ImageDraw, obj: dict, fill) -> None:
    x1, y1, x2, y2 = obj["bbox"]
    if obj["shape"] == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    else:  # triangle pointing up
        draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)


def draw_scene(scene: list[dict], image_size: int) -> Image.Image:
    """Render shapes without anti-aliasing: every shape pixel has exactly its palette colour."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_shape(draw, obj, COLORS[obj["color"]])
    return image


def patch_labels(scene: list[dict], image_size: int, grid: int) -> list[int]:
    """Dense labels for a ``grid x grid`` raster of cells (a ViT's patches, a CNN's pooled grid),
    row-major: ``1 + CLASSES.index("red circle")`` for a cell whose pixels are at least 1/8 that
    shape's (the most covered shape wins), else 0 (background)."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    for obj in scene:
        _draw_shape(draw, obj, 1 + CLASSES.index(_name(obj)))
    pixels = mask.load()
    edges = [round(k * image_size / grid) for k in range(grid + 1)]
    labels = []
    for gy in range(grid):
        for gx in range(grid):
            counts: dict[int, int] = {}
            for y in range(edges[gy], edges[gy + 1]):
                for x in range(edges[gx], edges[gx + 1]):
                    if pixels[x, y]:
                        counts[pixels[x, y]] = counts.get(pixels[x, y], 0) + 1
            area = (edges[gy + 1] - edges[gy]) * (edges[gx + 1] - edges[gx])
            best = max(counts, key=counts.get, default=0)
            labels.append(best if counts.get(best, 0) * 8 >= area else 0)
    return labels


def _left_to_right(scene: list[dict]) -> list[dict]:
    return sorted(scene, key=lambda o: o["bbox"][0] + o["bbox"][2])


def _name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


# ---------------------------------------------------------------- annotations
def _variants(answer: str) -> list[str]:
    """Spellings that the official VQA normalisation maps back to ``answer``."""
    out = [answer.capitalize(), answer + "."]
    if answer.isdigit():
        out.append(NUMBER_WORDS[int(answer)])
    elif answer in SHAPES:
        out.append("a " + answer)
    return out


def _wrong(answer: str, answer_type: str, rng: random.Random) -> str:
    pool = {"yes/no": ["yes", "no"], "number": ["1", "2", "3", "4"]}.get(answer_type)
    if pool is None:
        pool = list(SHAPES) if answer in SHAPES else list(COLORS)
    return rng.choice([a for a in pool if a != answer])


def human_answers(answer: str, answer_type: str, rng: random.Random) -> list[str]:
    """10 answers: each a variant with p=0.15 (at most 2); with p=0.1 one is wrong (>= 7 identical)."""
    answers = [answer] * 10
    variant_slots = [i for i in range(10) if rng.random() < 0.15][:2]
    for i in variant_slots:
        answers[i] = rng.choice(_variants(answer))
    if rng.random() < 0.1:
        answers[rng.randrange(10)] = _wrong(answer, answer_type, rng)
    return answers


def _extremes(scene: list[dict]) -> dict[str, dict]:
    """``{"left": obj, "right": obj}`` for a shape lying wholly left/right of all the others."""
    if len(scene) < 2:
        return {}
    order = _left_to_right(scene)
    out = {}
    if all(order[0]["bbox"][2] <= o["bbox"][0] for o in order[1:]):
        out["left"] = order[0]
    if all(order[-1]["bbox"][0] >= o["bbox"][2] for o in order[:-1]):
        out["right"] = order[-1]
    return out


def _position_question(scene: list[dict], rng: random.Random) -> tuple[str, str] | None:
    candidates = list(_extremes(scene).items())
    if not candidates:
        return None
    side, obj = rng.choice(candidates)
    if rng.random() < 0.5:
        return f"What shape is on the {side}?", obj["shape"]
    return f"What color is the shape on the {side}?", obj["color"]


def scene_targets(scene: list[dict]) -> list[int]:
    """Scene-level class targets for vision pretraining, one int per slot of :data:`SCENE_SLOTS`:
    the number of shapes - 1; each shape's colour and each colour's shape (last class = absent);
    the colour and shape of the shape wholly on the left / right (last class = none)."""
    color_of = {o["shape"]: list(COLORS).index(o["color"]) for o in scene}
    shape_of = {o["color"]: SHAPES.index(o["shape"]) for o in scene}
    ext = _extremes(scene)
    out = [len(scene) - 1]
    out += [color_of.get(shape, len(COLORS)) for shape in SHAPES]
    out += [shape_of.get(color, len(SHAPES)) for color in COLORS]
    for side in ("left", "right"):
        obj = ext.get(side)
        out += [list(COLORS).index(obj["color"]) if obj else len(COLORS)]
        out += [SHAPES.index(obj["shape"]) if obj else len(SHAPES)]
    return out


# (name, number of classes) of each scene_targets slot
SCENE_SLOTS: tuple[tuple[str, int], ...] = (
    ("count", 3),
    *((f"color_of_{s}", len(COLORS) + 1) for s in SHAPES),
    *((f"shape_of_{c}", len(SHAPES) + 1) for c in COLORS),
    *(
        (f"{side}_{attr}", n + 1)
        for side in ("left", "right")
        for attr, n in (("color", len(COLORS)), ("shape", len(SHAPES)))
    ),
)


def _exists_question(scene: list[dict], rng: random.Random, positive: bool) -> tuple[str, str]:
    present = {(o["color"], o["shape"]) for o in scene}
    if positive:
        color, shape = sorted(present)[rng.randrange(len(present))]
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = absent[rng.randrange(len(absent))]
    return f"Is there a {color} {shape}?", "yes" if positive else "no"


def vqa_pairs(scene: list[dict], rng: random.Random) -> list[tuple[str, str, str]]:
    """5 (question, answer, answer_type) triples for one scene."""
    a, b = rng.choice(scene), rng.choice(scene)
    positive = rng.random() < 0.5
    pairs = [
        ("How many shapes are there?", str(len(scene)), "number"),
        (f"What color is the {a['shape']}?", a["color"], "other"),
        (f"What shape is {b['color']}?", b["shape"], "other"),
        (*_exists_question(scene, rng, positive), "yes/no"),
    ]
    position = _position_question(scene, rng)
    if position:
        pairs.append((*position, "other"))
    else:
        pairs.append((*_exists_question(scene, rng, not positive), "yes/no"))
    return pairs


def explained_answer(question: str, answer: str, answer_type: str) -> str:
    """A :func:`vqa_pairs` answer as a talkative assistant gives it: the answer word first, as VQA
    writes it, then a sentence saying why. "red. The circle is red.", "2. I can see 2 shapes.",
    "no. There is no red circle.", "circle. The shape on the left is a circle."."""
    head = answer + "."
    if answer_type == "number":
        return f"{head} I can see {answer} shape{'s' if answer != '1' else ''}."
    if answer_type == "yes/no":
        thing = question.removeprefix("Is there a ").rstrip("?")
        return f"{head} There is {'a' if answer == 'yes' else 'no'} {thing}."
    subject = question.rstrip("?").split()[-1]  # the circle / blue / left
    article = "a " if answer in SHAPES else ""
    if question.startswith(("What shape is on the ", "What color is the shape on the ")):
        return f"{head} The shape on the {subject} is {article}{answer}."
    if question.startswith("What shape is "):
        return f"{head} The {subject} shape is {article}{answer}."
    return f"{head} The {subject} is {article}{answer}."


def chat_turns(pairs: list[tuple[str, str, str]], rng: random.Random) -> list[dict]:
    """LLaVA ``conversations`` (image marker on the first turn) asking an image's :func:`vqa_pairs`
    in random order, with VQA's own instruction, answered by :func:`explained_answer`: the base
    model's instruction data knows the answers but not the short-answer format."""
    pairs = rng.sample(pairs, len(pairs))  # any question may come first (a fixed order is learned)
    turns = []
    for i, (question, answer, answer_type) in enumerate(pairs):
        image = "<image>\n" if i == 0 else ""
        turns.append({"from": "human", "value": f"{image}{question}\n{VQA_PROMPT}"})
        turns.append({"from": "gpt", "value": explained_answer(question, answer, answer_type)})
    return turns


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def captions(scene: list[dict]) -> list[str]:
    """5 reference captions; the first (left to right) is canonical."""
    order = _left_to_right(scene)
    names = [f"a {_name(o)}" for o in order]
    n = len(scene)
    count = f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}"
    return [
        _join(names),
        f"{count}: {_join(names)}",
        _join(names[::-1]),
        _join([f"a {o['shape']} in {o['color']}" for o in order]),
        f"{count} on a white background",
    ]


# ---------------------------------------------------------------- records
def image_records(split: str, seed: int, index: int, image_size: int) -> tuple[Image.Image, dict]:
    """One scene image and its records for vqa/caption/vqg/chat/grounding (image path filled later)."""
    scene = sample_scene(_rng(split, seed, index), image_size)
    rng = _rng(split, seed, index, "text")
    base = f"shapes-{split}-{index:06d}"
    meta = {"width": image_size, "height": image_size, "objects": [_name(o) for o in scene]}
    vqa, vqg = [], []
    pairs = vqa_pairs(scene, rng)
    for k, (question, answer, answer_type) in enumerate(pairs):
        vqa.append(
            {
                "id": f"{base}-q{k}",
                "task": "vqa",
                "question": question,
                "answers": human_answers(answer, answer_type, rng),
                "answer": answer,
                "answer_type": answer_type,
            }
        )
        if answer_type != "yes/no":
            vqg.append(
                {
                    "id": f"{base}-vqg{k}",
                    "task": "vqg",
                    "question": question,
                    "answer": answer,
                    "answer_type": answer_type,
                }
            )
    boxes = [{"label": _name(o), "bbox": list(o["bbox"])} for o in _left_to_right(scene)]
    grounding = [
        {"id": f"{base}-g{k}", "task": "grounding", "boxes": [box], "meta": meta}
        for k, box in enumerate(boxes)
    ]
    records = {
        "vqa": vqa,
        "caption": [
            {"id": base, "task": "caption", "captions": captions(scene), "boxes": boxes, "meta": meta}
        ],
        "vqg": vqg,
        "chat": [
            {
                "id": f"{base}-chat",
                "task": "conversation",
                "conversations": chat_turns(pairs, _rng(split, seed, index, "chat")),
            }
        ],
        "grounding": grounding,
    }
    return draw_scene(scene, image_size), records


def classify_record(split: str, seed: int, index: int, image_size: int) -> tuple[Image.Image, dict]:
    """A single-shape image; label indexes :data:`CLASSES` (colour+shape)."""
    (obj,) = sample_scene(_rng(split, seed, index, "classify"), image_size, n_shapes=1)
    record = {
        "id": f"shapes-{split}-cls-{index:06d}",
        "task": "classify",
        "label": CLASSES.index(_name(obj)),
        "boxes": [{"label": _name(obj), "bbox": list(obj["bbox"])}],
        "meta": {
            "label_name": _name(obj),
            "shape_label": SHAPES.index(obj["shape"]),
            "shape": obj["shape"],
            "color": obj["color"],
        },
    }
    return draw_scene([obj], image_size), record


LOCATE_SIZES = (0.1, 0.36)  # 6-23 px at 64 px: about a third are COCO-"medium" (area < 3% of the image)


def locate_record(split: str, seed: int, index: int, image_size: int) -> tuple[Image.Image, dict]:
    """A single-shape image of any size in :data:`LOCATE_SIZES` and its ``grounding`` record."""
    (obj,) = sample_scene(_rng(split, seed, index, "locate"), image_size, n_shapes=1, sizes=LOCATE_SIZES)
    box = {"label": _name(obj), "bbox": list(obj["bbox"])}
    meta = {"width": image_size, "height": image_size, "objects": [box["label"]]}
    record = {"id": f"shapes-{split}-loc-{index:06d}", "task": "grounding", "boxes": [box], "meta": meta}
    return draw_scene([obj], image_size), record


# tasks with their own single-shape image per index: (task, record maker, image file tag)
SINGLE_SHAPE_TASKS = (("classify", classify_record, "cls"), ("locate", locate_record, "loc"))


def _check_args(split: str, n_images: int, image_size: int, tasks) -> tuple[str, ...]:
    if split not in SPLITS:
        raise DataError(f"unknown shapes split '{split}'; use one of {', '.join(SPLITS)}")
    if n_images <= 0:
        raise DataError(f"shapes n_images must be > 0, got {n_images}")
    if image_size < 16:
        raise DataError(f"shapes image_size must be >= 16, got {image_size}")
    tasks = tuple(TASKS if tasks is None else tasks)
    for task in tasks:
        if task not in TASKS:
            raise DataError(f"unknown shapes task '{task}'; use one of {', '.join(TASKS)}")
    return tasks


def generate_shapes(
    out_dir: str | Path,
    n_images: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    tasks: tuple[str, ...] | list[str] | None = None,
) -> dict[str, Path]:
    """Write ``images/`` and ``<task>.jsonl`` for each task into ``out_dir``; returns task -> path.

    ``n_images`` scene images (plus ``n_images`` single-shape images each for ``classify`` and ``locate``).
    """
    tasks = _check_args(split, n_images, image_size, tasks)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {t: [] for t in tasks}
    scene_tasks = [t for t in tasks if t not in {task for task, _, _ in SINGLE_SHAPE_TASKS}]
    for i in range(n_images):
        if scene_tasks:
            image, records = image_records(split, seed, i, image_size)
            rel = f"images/{split}-{i:06d}.png"
            image.save(out / rel, format="PNG", compress_level=1)
            for task in scene_tasks:
                for rec in records[task]:
                    lines[task].append(json.dumps({"id": rec["id"], "task": task, "image": rel, **rec}))
        for task, make_record, tag in SINGLE_SHAPE_TASKS:
            if task in tasks:
                image, rec = make_record(split, seed, i, image_size)
                rel = f"images/{split}-{tag}-{i:06d}.png"
                image.save(out / rel, format="PNG", compress_level=1)
                lines[task].append(json.dumps({"id": rec["id"], "task": rec["task"], "image": rel, **rec}))
    paths = {}
    for task in tasks:
        paths[task] = out / f"{task}.jsonl"
        paths[task].write_text("\n".join(lines[task]) + "\n")
    return paths


# ---------------------------------------------------------------- cache and data specs
def cache_root() -> Path:
    """``$VLMTUNE_CACHE/shapes`` (default ``~/.cache/vlmtune/shapes``)."""
    return cache_dir("shapes")


def shapes_dataset(
    task: str = "vqa",
    split: str = "train",
    n_images: int | None = None,
    cache_dir: str | Path | None = None,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """JSONL path of a shapes task, generated once into the cache (all tasks together).

    Folder: ``<cache>/<version>/<split>-<n>[-<size>px][-seed<s>]``. Safe under concurrent callers:
    each generates into its own temporary folder and renames it into place; the loser discards its copy.
    """
    n = n_images or DEFAULT_IMAGES.get(split, 0)
    _check_args(split, n, image_size, [task])
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    name = (
        f"{split}-{n}" + (f"-{image_size}px" if image_size != 64 else "") + (f"-seed{seed}" if seed else "")
    )
    final = root / SHAPES_VERSION / name
    if not (final / f"{task}.jsonl").is_file():
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
        except OSError as e:
            raise DataError(
                f"cannot write the shapes cache in {final.parent} ({e.strerror}); "
                "set VLMTUNE_CACHE to a writable folder"
            ) from None
        try:
            generate_shapes(tmp, n, split=split, seed=seed, image_size=image_size)
            os.rename(tmp, final)
        except OSError:
            if not (final / f"{task}.jsonl").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / f"{task}.jsonl"
