"""Any LLaVA-style VLM family, loaded by its own class and driven by its own processor.

``model.pipeline: llava`` dispatches here (:func:`build_llava_style`): a checkpoint is loaded with
``AutoModelForImageTextToText`` (the class of its ``model_type``) and ``AutoProcessor``; weights that do
not load cleanly into that class (unexpected, missing or mis-sized tensors) and unsupported
``model_type`` s stop with one line. A LLaVA-1.5 checkpoint without a chat template (the embedded shapes
presets, original LLaVA-1.5 conversions) keeps the vicuna_v1 path of :class:`LlavaPipeline`; every other
checkpoint takes :class:`FamilyPipeline`:

- prompts come from the checkpoint's chat template, rendered turn by turn, so that labels cover the
  assistant turns only (``[(text, is_assistant), ...]`` segments, see :func:`chat_segments`);
- the processor expands the image placeholders (anyres, Qwen's grid, Gemma 3's fixed count, Mllama's
  single token...) and returns every extra input the model needs (``image_sizes``, ``image_grid_thw``
  + ``mm_token_type_ids``, ``pixel_attention_mask``, ``aspect_ratio_ids``/``cross_attention_mask``,
  ``token_type_ids``); :func:`stack_inputs` pads and stacks them per key;
- towers and default targets come from :mod:`vlmtune.models.families` (``model.towers`` overrides);
- ``save_merged`` writes the source class and ``model_type`` with its processor and chat template.

PaliGemma has no chat template: its processor's prefix/suffix format is used (prefix = the question,
suffix = the answer, which the processor labels); records with several turns, several images or none are
refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from vlmtune.core.config import ConfigError, RunConfig
from vlmtune.core.errors import DataError
from vlmtune.data.collate import IGNORE_INDEX, IMAGE_PLACEHOLDER
from vlmtune.data.packing import PackLayout, model_inputs, mrope_position_ids
from vlmtune.data.records import record_images
from vlmtune.models.base import PIPELINES, register_pipeline
from vlmtune.models.families import (
    LLAVA_STYLE,
    QFORMER_TYPES,
    UnsupportedFamily,
    family_for,
    model_towers,
    qformer_family,
    resolve_default_targets,
)
from vlmtune.models.llava import LlavaPipeline, load_image, resolve_dtype
from vlmtune.models.loading import first_line, load_strict, read_model_type

# Processor outputs aligned with the token sequence (dim 1 = tokens): padded along dim 1.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "cross_attention_mask")
# ``data.packing`` (see :meth:`FamilyPipeline.pack`): families whose packed rows get per-sample M-RoPE
# positions, and causal LMs with 1-D RoPE whose positions simply restart per sample. Not packed: Gemma 3 and
# PaliGemma (bidirectional attention over image / prefix tokens), Mllama (cross-attention to the images).
MROPE_PACKING = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PACKING = (*MROPE_PACKING, "llava", "llava_next", "llava_onevision", "idefics3", "smolvlm", "internvl")
# ``data.cache_vision_features``: families whose projector input is one fixed-size (P, D_v) tensor per image.
CACHE_FEATURES = ("llava",)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


# ---------------------------------------------------------------- loading
def checked_family(name: str, model_type: str):
    """The :class:`~vlmtune.models.families.Family` of ``model_type``, or a one-line ConfigError naming the
    checkpoint and the supported families."""
    try:
        return family_for(model_type)
    except UnsupportedFamily as e:
        raise ConfigError(f"model.name_or_path='{name}': {e}") from None


def load_processor(path: str, name: str, trust_remote_code: bool = False):
    """The checkpoint's ``AutoProcessor`` (tokenizer, image processor, chat template); one line if missing."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.name_or_path='{name}': its processor could not be loaded: {first_line(e)}"
        ) from None


def load_vlm(path: str, name: str, dtype: torch.dtype, processor=None, **kwargs):
    """``(model, processor, family)`` of a checkpoint, loaded strictly by the class of its ``model_type``."""
    from transformers import AutoModelForImageTextToText

    trust = kwargs.get("trust_remote_code", False)
    family = checked_family(name, read_model_type(path, name, trust))
    model = load_strict(AutoModelForImageTextToText, path, name, LLAVA_STYLE, dtype=dtype, **kwargs)
    return model, processor or load_processor(path, name, trust), family


# ---------------------------------------------------------------- prompts
def turns_to_messages(turns: list[tuple[str, str]]) -> list[dict]:
    """``[("human", "<image>\\nQ"), ("gpt", "A")]`` -> chat messages with ``{"type": "image"}`` parts where
    the text had ``<image>`` (a newline right after a placeholder belongs to the template, not the text)."""
    messages = []
    for role, text in turns:
        parts: list[dict] = []
        for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k > 0:
                parts.append({"type": "image"})
                piece = piece.removeprefix("\n")
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": ROLES[role], "content": parts})
    return messages


def chat_segments(processor, messages: list[dict], train: bool = True) -> list[tuple[str, bool]]:
    """The chat template rendered as ``[(text, is_assistant), ...]``, turn by turn.

    Assistant segment k = ``render(messages[:k+1]) - render(messages[:k], add_generation_prompt=True)``
    (its content and end-of-turn marker); everything else is prompt. Eval: the prompt up to the last
    answer, with the generation prompt.
    """

    def render(msgs: list[dict], gen: bool) -> str:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    if not train:
        return [(render(messages[:last], True), False)]
    segments: list[tuple[str, bool]] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head, full = render(messages[:k], True), render(messages[: k + 1], False)
        if not (head.startswith(done) and full.startswith(head)):
            raise ConfigError(
                "the checkpoint's chat template does not render a conversation turn by turn (a prefix of the "
                "messages does not render as a prefix of the text), so answer tokens cannot be labelled"
            )
        segments += [(head[len(done) :], False), (full[len(head) :], True)]
        done = full
    tail = render(messages, False)[len(done) :]
    return segments + ([(tail, False)] if tail else [])


def message_text(message: dict) -> str:
    """The text parts of a chat message, joined."""
    return "".join(part.get("text", "") for part in message["content"] if part.get("type") == "text")


def close_answers(segments: list[tuple[str, bool]], answers: list[str], eos: str) -> list[tuple[str, bool]]:
    """End every assistant segment whose template emits no end-of-turn marker with ``eos``.

    A segment ``" green "`` (llava-1.5-hf's ``chat_vicuna``: answer + separator, no ``</s>``) becomes
    ``(" green" + eos, True)`` and ``(" ", False)``: the model learns to stop, as LLaVA's own ``"A1</s>"``
    teaches, and the separator that precedes the next role stays prompt. ``answers[k]`` is the text of the
    k-th assistant message; a segment with anything but whitespace after it already has its marker.
    """
    out: list[tuple[str, bool]] = []
    answer_texts = iter(answers)
    for text, is_assistant in segments:
        answer = next(answer_texts).strip() if is_assistant else ""
        body = text.rstrip()
        if not (is_assistant and eos and answer and body.endswith(answer)):
            out.append((text, is_assistant))
            continue
        out.append((body + eos, True))
        if len(body) < len(text):
            out.append((text[len(body) :], False))
    return out


# ---------------------------------------------------------------- batches
@dataclass
class Example:
    """One processed record: processor outputs with batch dim 1 and its labels (None at eval)."""

    tensors: dict[str, torch.Tensor]
    labels: list[int] | None

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[1]


def _pad_to(t: torch.Tensor, sizes: list[int], value: float, left_dim: int | None = None) -> torch.Tensor:
    """Pad every dim of ``t`` up to ``sizes`` at the end (dim ``left_dim``: at the start)."""
    pad: list[int] = []
    for d in reversed(range(t.dim())):
        extra = sizes[d] - t.shape[d]
        pad += [extra, 0] if d == left_dim else [0, extra]
    return F.pad(t, pad, value=value) if any(pad) else t


def stack_inputs(examples: list[Example], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """Per key: token-aligned tensors padded along dim 1 (``side``) and stacked; the rest (pixels,
    grids, image sizes) concatenated along dim 0, every other dim zero-padded to the batch maximum
    (the models drop padded patches/tiles by ``image_sizes``/``pixel_attention_mask``/all-zero tiles)."""
    batch: dict[str, torch.Tensor] = {}
    keys = dict.fromkeys(k for e in examples for k in e.tensors)
    for key in keys:
        ts = [e.tensors[key] for e in examples if key in e.tensors]
        sizes = [max(t.shape[d] for t in ts) for d in range(ts[0].dim())]
        if key in TOKEN_KEYS:
            value = pad_id if key == "input_ids" else 0
            left = 1 if side == "left" else None
            batch[key] = torch.cat([_pad_to(t, [1, *sizes[1:]], value, left) for t in ts])
        else:
            batch[key] = torch.cat([_pad_to(t, [t.shape[0], *sizes[1:]], 0) for t in ts])
    return batch


class FamilyPipeline(LlavaPipeline):
    """A VLM of any supported family (see :mod:`vlmtune.models.families`), loaded by its own class.

    Shares the loss, generation and truncation report of :class:`LlavaPipeline`; differs in loading,
    prompts (chat template), collation (the processor) and export (the source class + processor).
    """

    def __init__(self, cfg: RunConfig, folder: str | None = None, processor=None) -> None:  # noqa: D107
        self.cfg = cfg
        self.name_or_path = cfg.model.name_or_path
        from vlmtune.models.qlora import quantization_kwargs

        kwargs = {"trust_remote_code": cfg.model.trust_remote_code, **quantization_kwargs(cfg)}
        self.model, self.processor, self.family = load_vlm(
            folder or cfg.model.name_or_path,
            cfg.model.name_or_path,
            resolve_dtype(cfg.model.dtype),
            processor,
            **kwargs,
        )
        self.model.eval()
        self.tokenizer = self.processor.tokenizer
        self.image_processor = getattr(self.processor, "image_processor", None)
        self.towers = model_towers(self.model, self.family, cfg.model.towers)
        resolve_default_targets(cfg, self.family)
        self.image_token_id = int(getattr(self.model.config, "image_token_id", None) or -1)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.truncated_ids: set[str] = set()
        self._set_up_speed(cfg)  # build_llava_style refused what this family cannot pack or cache
        if self.family.model_type != "paligemma" and not self.processor.chat_template:
            raise ConfigError(
                f"model.name_or_path='{cfg.model.name_or_path}' ({self.family.model_type}) has no chat template; "
                "add the family's chat_template.jinja to the folder"
            )

    # ------------------------------------------------------------------ data
    def _turns(self, record: dict, train: bool) -> list[tuple[str, str]]:
        from vlmtune.data.templates import record_to_turns

        if not train and record.get("prompt"):
            images = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in record_images(record))
            return [("human", images + record["prompt"])]
        return record_to_turns(record, self.cfg.data.template_seed, epoch=self.epoch)

    def segments(self, record: dict, train: bool = True) -> list[tuple[str, bool]]:
        messages = turns_to_messages(self._turns(record, train))
        if not train and messages[-1]["role"] != "assistant":
            messages = [*messages, {"role": "assistant", "content": []}]
        segments = chat_segments(self.processor, messages, train)
        answers = [message_text(m) for m in messages if m["role"] == "assistant"]
        return close_answers(segments, answers, self.tokenizer.eos_token) if train else segments

    def _add_special(self, text: str) -> bool:
        """Let the tokenizer add its special tokens unless the chat template already starts with BOS."""
        bos = self.tokenizer.bos_token
        return not (bos and text.startswith(bos))

    def _process(self, text: str, images: list, **kw) -> dict[str, torch.Tensor]:
        kw.setdefault("add_special_tokens", self._add_special(text))
        out = self.processor(text=[text], images=images or None, return_tensors="pt", **kw)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def encode(self, record: dict, train: bool = True) -> Example:
        return self._truncate(record, self._example(record, train), train)

    def _example(self, record: dict, train: bool) -> Example:
        """``record`` processed (images expanded, labels), before truncation."""
        images = [load_image(p) for p in record_images(record)]
        if self.family.model_type == "paligemma":
            return self._encode_prefix_suffix(record, images, train)
        segments = self.segments(record, train)
        text = "".join(t for t, _ in segments)
        tensors = self._process(text, images)
        labels = self._labels(segments, tensors["input_ids"][0].tolist(), images) if train else None
        return Example(tensors, labels)

    def sample_length(self, record: dict) -> int:
        """Tokens of the training sample (the processor's image expansion, truncated), negative when text-only:
        the signed lengths of ``data.group_by_length`` (truncation is counted when the batch is collated)."""
        n = len(self._truncate(record, self._example(record, True), train=False))
        return n if record_images(record) else -n

    def check_record(self, record: dict, train: bool = True) -> None:
        """A one-line :class:`DataError` for a record this family cannot take, without processing it
        (the preflight asks before training; ``train=False``: a benchmark-prepared eval record).
        PaliGemma: one image and one question per prompt: a multi-image, text-only or multi-turn record (one
        prefix and one suffix cannot hold several answers) is refused, naming it."""
        if self.family.model_type != "paligemma":
            return
        n = len(record_images(record))
        if n != 1:
            raise DataError(
                f"record '{record['id']}' has {f'{n} images' if n else 'no image'}, but PaliGemma takes one "
                "image per prompt; give it single-image records"
            )
        users = sum(ROLES[role] == "user" for role, _ in self._turns(record, train))
        if users > 1:
            raise DataError(
                f"record '{record['id']}' has {users} turns, but PaliGemma's prefix/suffix format holds one "
                "question and one answer; split it into single-turn records"
            )

    def _encode_prefix_suffix(self, record: dict, images: list, train: bool) -> Example:
        """PaliGemma: prefix = the question (placeholders dropped: the processor puts the image tokens and
        BOS first), suffix = the answer; the processor labels the suffix (``token_type_ids == 1``).
        Records it cannot take are refused by :meth:`check_record`."""
        self.check_record(record, train)
        turns = self._turns(record, train)
        answers = [t for role, t in turns if ROLES[role] == "assistant"]
        (prefix,) = [t.replace(IMAGE_PLACEHOLDER, "").strip() for role, t in turns if ROLES[role] == "user"]
        if not train:
            return Example(self._process(prefix, images), None)
        out = self.processor(text=[prefix], images=images, suffix=[answers[-1]], return_tensors="pt")
        labels = out.pop("labels")[0].tolist()
        return Example({k: v for k, v in out.items() if isinstance(v, torch.Tensor)}, labels)

    def _labels(self, segments: list[tuple[str, bool]], ids: list[int], images: list) -> list[int]:
        """Labels of the processed ids: the tokens of assistant segments, ``IGNORE_INDEX`` elsewhere.

        The processor only expands image placeholders, so when no placeholder follows the first answer the
        answers keep their distance from the end: they are located on the unexpanded tokenisation (char
        offsets) and read from the end of ``ids``, after checking that both tails agree token for token.
        Otherwise each answer's start and end are measured by processing the text before them.
        """
        text = "".join(t for t, _ in segments)
        spans, pos = [], 0
        for t, is_assistant in segments:
            if is_assistant:
                spans.append((pos, pos + len(t)))
            pos += len(t)
        plain = self.tokenizer(text, add_special_tokens=self._add_special(text), return_offsets_mapping=True)
        # a token is supervised when it lies inside an answer: the token that starts with the space before the
        # next role ("▁USER") is not part of the answer
        supervised = [any(a <= s < e <= b for a, b in spans) for s, e in plain["offset_mapping"]]
        first = supervised.index(True) if any(supervised) else len(supervised)
        tail = len(supervised) - first
        placeholder = getattr(self.processor, "image_token", IMAGE_PLACEHOLDER)
        if (
            placeholder not in text[spans[0][0] :]
            and tail <= len(ids)
            and ids[len(ids) - tail :] == plain["input_ids"][first:]
        ):
            head = [IGNORE_INDEX] * (len(ids) - tail)
            return head + [
                i if s else IGNORE_INDEX for i, s in zip(plain["input_ids"][first:], supervised[first:])
            ]
        labels = [IGNORE_INDEX] * len(ids)
        for a, b in spans:
            start, end = (len(self._prefix_ids(text[:c], images, placeholder)) for c in (a, b))
            labels[start:end] = ids[start:end]
        return labels

    def _prefix_ids(self, prefix: str, images: list, placeholder: str) -> list[int]:
        return self._process(prefix, images[: prefix.count(placeholder)])["input_ids"][0].tolist()

    def _truncate(self, record: dict, example: Example, train: bool) -> Example:
        """Keep the first ``data.max_length`` tokens, never cutting before the last image token."""
        n, limit = len(example), self.cfg.data.max_length
        if n <= limit:
            return example
        ids = example.tensors["input_ids"][0]
        image_positions = (ids == self.image_token_id).nonzero()
        cut = max(limit, int(image_positions.max()) + 1 if len(image_positions) else 0)
        if cut >= n:
            return example
        tensors = {k: (v[:, :cut] if k in TOKEN_KEYS else v) for k, v in example.tensors.items()}
        labels = example.labels[:cut] if example.labels is not None else None
        if train and labels is not None:
            lost = sum(x != IGNORE_INDEX for x in example.labels) - sum(x != IGNORE_INDEX for x in labels)
            self._note_truncation(record, lost, n)
        return Example(tensors, labels)

    def collate(self, records: list[dict], train: bool = True) -> dict[str, Any]:
        """Train: right-padded model inputs + ``labels`` (B, T). Eval: left-padded prompts. Both carry
        ``ids`` (record ids) and every extra input the family's forward/generate needs."""
        examples = [self.encode(r, train) for r in records]
        if train and self.cfg.data.packing:
            batch, order = self.pack(examples)
            records = [records[i] for i in order]
        else:
            batch = stack_inputs(examples, self.pad_id, "right" if train else "left")
        if train and not self.cfg.data.packing:
            width = batch["input_ids"].shape[1]
            batch["labels"] = torch.tensor(
                [e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples], dtype=torch.long
            )
        if (
            train and self.feature_cache is not None
        ):  # cached features replace the pixels (the tower is skipped)
            pixels = batch.pop("pixel_values", None)
            batch.update(self.feature_cache.collate(records, lambda _: pixels))
        batch["ids"] = [r["id"] for r in records]
        return batch

    def pack(self, examples: list[Example]) -> tuple[dict[str, Any], list[int]]:
        """``data.packing``: samples share rows (:class:`~vlmtune.data.packing.PackLayout`), ``position_ids``
        restart per sample: (R, T) for 1-D RoPE, (4, R, T) = text positions + each sample's own M-RoPE
        positions for the Qwen-VL families (:func:`~vlmtune.data.packing.mrope_position_ids`); images (and
        grids, sizes, tiles) in the packed order. Returns the batch and the packed order of the samples."""
        layout = PackLayout.plan([len(e) for e in examples], self.row_capacity())
        images = [
            Example({k: v for k, v in examples[i].tensors.items() if k not in TOKEN_KEYS}, None)
            for i in layout.order
        ]
        batch: dict[str, Any] = stack_inputs(images, self.pad_id, "right")
        for key in dict.fromkeys(
            k for e in examples for k in e.tensors if k in TOKEN_KEYS and k != "attention_mask"
        ):
            fill = self.pad_id if key == "input_ids" else 0
            batch[key] = layout.place(
                [e.tensors.get(key, torch.zeros(1, len(e), dtype=torch.long))[0] for e in examples], fill
            )
        batch["attention_mask"] = layout.real().long()
        batch["labels"] = layout.labels([torch.tensor(e.labels, dtype=torch.long) for e in examples])
        if self.family.model_type in MROPE_PACKING:
            batch["position_ids"] = mrope_position_ids(layout, [self.rope_index(e) for e in examples])
        else:
            batch["position_ids"] = layout.positions()
        return batch, layout.order

    def rope_index(self, example: Example) -> torch.Tensor:
        """(3, n) M-RoPE positions of one sample alone, by the model's own ``get_rope_index``."""
        t = example.tensors
        types = t.get("mm_token_type_ids", torch.zeros_like(t["input_ids"]))
        grids = {k: t[k] for k in ("image_grid_thw", "video_grid_thw") if k in t}
        positions, _ = self.model.model.get_rope_index(t["input_ids"], types, **grids)
        return positions[:, 0]

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16, num_beams: int = 1) -> list[str]:
        """Batched greedy/beam generation on left-padded prompts with every extra input; stops at the
        checkpoint's own end-of-turn tokens (``generation_config.eos_token_id``) and the tokenizer's eos."""
        from vlmtune.generation import generate_text

        inputs = model_inputs(batch)
        stop = self.model.generation_config.eos_token_id
        stop = [*(stop if isinstance(stop, list) else [stop] if stop is not None else [])]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in stop:
            stop.append(self.tokenizer.eos_token_id)  # the end of answers that close_answers ended with eos
        return generate_text(self.model, self.tokenizer, inputs, max_new_tokens, num_beams, eos_token_id=stop)

    # ------------------------------------------------------------------ export
    def save_merged(self, out_dir: str | Path) -> Path:
        """Fold adapters into the weights; write the source class (same ``model_type``) with its
        processor (tokenizer, image processor, chat template) and generation config."""
        from vlmtune.adapters.attach import merge as merge_adapters

        out = Path(out_dir)
        merge_adapters(self.model)
        self.model.requires_grad_(False)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out


QFORMER_RECIPES = {"blip-2": "blip2-dora, blip2-lora, blip2-pin", "instructblip": "instructblip-dora"}


def check_qformer_adapters(cfg: RunConfig, model_type: str) -> None:
    """A llava recipe on a BLIP-2 / InstructBLIP folder: the pipeline dispatches to the Q-Former one, but a
    ``projector`` tower (the llava recipes train it) does not exist there: one line naming the recipes to use,
    before any weight is read."""
    if cfg.adapters.projector.method != "frozen":
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path} is a {model_type} (Q-Former) model, which has no "
            f"'projector' tower for adapters.projector.method={cfg.adapters.projector.method}; use the "
            f"{QFORMER_RECIPES[model_type]} recipes (towers: vision, qformer, language)"
        )


def build_llava_style(cfg: RunConfig, folder: str | None = None):
    """``model.pipeline: llava``: the vicuna_v1 :class:`LlavaPipeline` for LLaVA-1.5 checkpoints without a
    chat template (the shapes presets), :class:`FamilyPipeline` for everything else. The family, and what it
    cannot do, are checked from config.json before any weight is read; the processor is loaded once."""
    path, name = folder or cfg.model.name_or_path, cfg.model.name_or_path
    model_type = read_model_type(path, name, cfg.model.trust_remote_code)
    checked_family(name, model_type)
    if model_type in QFORMER_TYPES:  # BLIP-2 / InstructBLIP: the Q-Former pipeline (models/qformer.py)
        check_qformer_adapters(cfg, model_type)
        return PIPELINES["blip2"](cfg, path)
    try:
        processor = load_processor(path, name, cfg.model.trust_remote_code)
    except ConfigError:
        if model_type != "llava":
            raise
        processor = None  # LlavaPipeline loads tokenizer and image processor itself and says what is missing
    if model_type == "llava" and not (processor and processor.chat_template):
        return LlavaPipeline(cfg, path)
    for key, model_types in (("packing", PACKING), ("cache_vision_features", CACHE_FEATURES)):
        if getattr(cfg.data, key) and model_type not in model_types:
            others = ", ".join(t for t in model_types if t != "llava")
            where = "LLaVA-1.5 checkpoints (model type llava, with or without a chat template)"
            where += f" and the model types {others}" if others else ""
            raise ConfigError(
                f"config key 'data.{key}' is implemented for {where}, not for this '{model_type}' checkpoint; "
                f"set data.{key}=false"
            )
    return FamilyPipeline(cfg, path, processor)


register_pipeline("llava", build_llava_style)


def describe_plan(cfg: RunConfig, folder: str | None = None) -> str:
    """Per tower: which modules the recipe would adapt (counts by leaf name) and the trainable share,
    from the checkpoint's config alone (the model is built on the meta device: no weights are read)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmtune.adapters.attach import attach
    from vlmtune.adapters.report import format_report, param_report, placement_lines

    path = folder or cfg.model.name_or_path
    model_type = read_model_type(path, cfg.model.name_or_path, cfg.model.trust_remote_code)
    family = checked_family(cfg.model.name_or_path, model_type)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    if model_type in QFORMER_TYPES:  # language targets of its language model
        check_qformer_adapters(cfg, model_type)
        family = qformer_family(model_type, config.text_config.model_type)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    towers = model_towers(model, family, cfg.model.towers)
    resolve_default_targets(cfg, family)
    attached = attach(model, towers, cfg.adapters.specs())
    lines = [f"{cfg.model.name_or_path}: {type(model).__name__} (model_type '{model_type}')"]
    lines += placement_lines(towers, cfg.adapters.specs(), list(attached))
    return "\n".join([*lines, format_report(param_report(model, towers))])
