"""VL-BART (Cho et al., 2021; VL-Adapter, Sung et al., CVPR 2022; DoRA §5.2): CLIP grid features as
extra encoder tokens of ``BartForConditionalGeneration``; every task is text generation.

    v_k = LN(W_f f_k) + LN(W_p [box_k, area_k]) + E_img[i] + E_tok[V - 1 - k]     (VL-T5 eq.)
    encoder input = [v_1 .. v_{I*N} ; E_tok(prefix + text)]  ->  decoder generates the answer

``f_k`` (k < N = 36) are pooled CLIP ResNet grid features of image ``i`` (I = 2 for NLVR2), boxes are
grid cells, ``E_tok[V - 1 - k]`` is the (shared) embedding of the ``<vis_extra_id_k>`` token as in
VL-T5. Visual tokens go first so their encoder positions do not depend on the text length.

The frozen CLIP encoder lives in the pipeline's :class:`FeatureExtractor` (with an optional disk
cache), not in ``model``: as in the papers the features are precomputed, so ``model`` holds exactly
the parameters that VL-Adapter/DoRA count in "# Params (%)" (see :func:`paper_param_percent`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

from vlmtune.core.config import MULTITASK_TASKS
from vlmtune.core.io import atomic_write_json, atomic_write_safetensors
from vlmtune.models.base import register_pipeline
from vlmtune.models.visual_features import FeatureExtractor, VisionEncoderError, build_grid_encoder

VIS_EXTRA_IDS = 100  # <vis_extra_id_k> tokens at the end of the vocabulary (object-order embedding)
TASK_PREFIXES = {task: f"{task}:" for task in MULTITASK_TASKS}
TRAINED_TASKS = ("vqa", "nlvr", "caption")  # record tasks with a VL-BART prompt and target (gqa: vqa records)
TOWERS = {"language": ["bart.model", "bart.lm_head"], "projector": ["visual_embedding"]}
META_FILE = "vlbart.json"


class VisualEmbedding(nn.Module):
    """Grid features + boxes + image order -> d_model tokens (VL-T5 ``VisualEmbedding``).

    forward: feats (B, I, N, C), boxes (N, 4) in [0, 1], order (N, d) -> (B, I*N, d).
    """

    def __init__(self, feat_dim: int, d_model: int, n_images: int = 2, eps: float = 1e-5) -> None:
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d_model), nn.LayerNorm(d_model, eps=eps))
        self.pos_embedding = nn.Sequential(nn.Linear(5, d_model), nn.LayerNorm(d_model, eps=eps))
        self.img_order_embedding = nn.Embedding(n_images, d_model)
        self.feat_dim, self.n_images = feat_dim, n_images

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        b, i, n, _ = feats.shape
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
        pos = self.pos_embedding(torch.cat([boxes, area], dim=1).to(feats.dtype))  # (N, d)
        img = self.img_order_embedding(torch.arange(i, device=feats.device))  # (I, d)
        x = self.feat_embedding(feats) + pos + img[:, None] + order  # (B, I, N, d)
        return x.reshape(b, i * n, -1)


class VLBart(nn.Module):
    """``bart`` (BartForConditionalGeneration) + ``visual_embedding``; boxes are a buffer."""

    def __init__(
        self, bart: BartForConditionalGeneration, visual_embedding: VisualEmbedding, boxes: torch.Tensor
    ):
        super().__init__()
        self.bart = bart
        self.visual_embedding = visual_embedding
        self.register_buffer("boxes", boxes.float(), persistent=False)

    @property
    def config(self) -> BartConfig:
        return self.bart.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """``model.gradient_checkpointing=true``: BART's own activation checkpointing of its encoder and
        decoder layers (:func:`vlmtune.train.trainer.enable_checkpointing` passes ``use_reentrant=False``);
        transformers' newer name for the switch when it has it."""
        switch = getattr(self.bart, "activation_checkpointing_enable", None)
        if switch is not None:
            switch(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)
        else:
            self.bart.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
            )

    def encoder_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        feats: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, L), feats (B, I, N, C), image_mask (B, I) -> embeds (B, I*N+L, d), mask."""
        embed = self.bart.get_input_embeddings()
        n = feats.shape[2]
        order_ids = self.config.vocab_size - 1 - torch.arange(n, device=input_ids.device)
        vis = self.visual_embedding(feats.to(embed.weight.dtype), self.boxes, embed(order_ids))
        vis_mask = image_mask.to(attention_mask.dtype).repeat_interleave(n, dim=1)  # (B, I*N)
        embeds = torch.cat([vis, embed(input_ids)], dim=1)
        return embeds, torch.cat([vis_mask, attention_mask], dim=1)

    def forward(self, input_ids, attention_mask, feats, image_mask, labels=None, **_: Any):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, feats, image_mask)
        return self.bart(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    def encode(self, input_ids, attention_mask, feats, image_mask) -> torch.Tensor:
        """Encoder hidden states (B, I*N+L, d)."""
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, feats, image_mask)
        return self.bart.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, feats, image_mask, **gen_kwargs: Any) -> torch.Tensor:
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, feats, image_mask)
        return self.bart.generate(inputs_embeds=embeds, attention_mask=mask, **gen_kwargs)


# ---------------------------------------------------------------- targets and prompts
def task_prefix(record: dict) -> str:
    """``vqa:`` / ``gqa:`` / ``nlvr:`` / ``caption:``; GQA is a ``vqa`` record from the gqa dataset."""
    task = record.get("task", "vqa")
    dataset = str((record.get("meta") or {}).get("dataset", "")).lower()
    if task == "vqa" and (dataset == "gqa" or str(record.get("id", "")).startswith("gqa")):
        task = "gqa"
    return TASK_PREFIXES.get(task, f"{task}:")


def prompt_text(record: dict) -> str:
    text = record.get("question") or record.get("sentence") or ""
    return f"{task_prefix(record)} {text}".strip()


def vqa_answer_scores(answers: list[str]) -> dict[str, float]:
    """VQAv2 soft score of each distinct human answer: min(1, count / 3)."""
    return {a: min(1.0, c / 3.0) for a, c in Counter(answers).items()}


def train_target(record: dict, seed: int = 0, epoch: int = 0) -> str:
    """The answer text to train on: VQA samples an answer with probability ∝ its score, drawn per
    (seed, epoch, record) (:func:`~vlmtune.data.templates.record_random`: the same in every process and on
    resume), captions one reference per record per epoch (:func:`~vlmtune.data.templates.pick_caption`),
    NLVR2 ``true``/``false``, otherwise ``answer``."""
    from vlmtune.data.templates import pick_caption, record_random

    task = record.get("task")
    if task == "caption" and (record.get("captions") or record.get("caption")):  # one caption or several
        return pick_caption(record, seed, epoch)
    if record.get("answers"):
        scores = vqa_answer_scores([str(a) for a in record["answers"]])
        rng = record_random("answer", seed, epoch, record)
        return rng.choices(list(scores), weights=list(scores.values()))[0]
    answer = record.get("answer", record.get("label"))
    if isinstance(answer, bool):
        return "true" if answer else "false"
    if answer is None:
        raise ValueError(f"record {record.get('id')}: no answer, answers or captions to train on")
    return str(answer)


def check_task(record: dict) -> None:
    """A one-line :class:`DataError` for a record whose task VL-BART has no prompt/target for (``mcq``,
    ``conversation``, ``grounding``, ...): the preflight refuses it before the base is evaluated."""
    from vlmtune.data.errors import DataError

    task = record.get("task", "vqa")
    if task not in TRAINED_TASKS:
        raise DataError(
            f"record '{record.get('id')}' is a {task} record, but VL-BART trains and answers only "
            f"{', '.join(TRAINED_TASKS)} records; use a llava or blip2 recipe for {task} records, or leave them out"
        )


def record_images(record: dict) -> list:
    """Image references of a record: ``images`` (NLVR2: two) or ``[image]``."""
    images = record.get("images") or ([record["image"]] if record.get("image") is not None else [])
    if not images:
        raise ValueError(f"record {record.get('id')}: VL-BART needs 'image' or 'images'")
    return list(images)


# ---------------------------------------------------------------- the pipeline
@dataclass
class VLBartPipeline:
    """Pipeline protocol (models/base.py): ``collate`` / ``loss`` / ``generate`` / ``towers``."""

    model: VLBart
    tokenizer: Any
    extractor: FeatureExtractor
    max_length: int = 64
    seed: int = 0
    name_or_path: str = ""
    task_batch_sizes: dict | None = None  # multi-task: prefix task (vqa/gqa/nlvr/caption) -> size
    default_batch_size: int = 16

    name = "vlbart"

    def __post_init__(self) -> None:
        self.towers = TOWERS
        self.truncated_ids: set[str] = set()  # training records whose answer data.max_length cut
        self.truncated_question_ids: set[str] = set()  # ... whose question it cut
        self.epoch = 0

    def check_record(self, record: dict, train: bool = True) -> None:
        """Refuse (one line) a record of a task VL-BART has no prompt for (:func:`check_task`)."""
        check_task(record)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch's batches: the caption / VQA answer each record trains on."""
        self.epoch = epoch

    def epoch_batches(self, records: list[dict], epoch: int) -> list[list[int]]:
        """One epoch of single-task batches, round-robin over tasks (VL-Adapter multi-task)."""
        from vlmtune.data.multitask import round_robin_batches

        tasks = [task_prefix(r).rstrip(":") for r in records]
        sizes = self.task_batch_sizes or {}
        return round_robin_batches(tasks, sizes, self.seed, epoch, self.default_batch_size)

    def batch_sizes_text(self, records: list[dict]) -> str:
        """What one batch is, for the trainer's plan line: ``one task each: vqa <= 32, caption <= 4
        (data.task_batch_sizes; train.batch_size=4 for caption)``. ``train.batch_size`` sizes only the tasks
        ``data.task_batch_sizes`` leaves out; the text says it does not apply when it sizes none."""
        from vlmtune.data.multitask import task_indices

        sizes = self.task_batch_sizes or {}
        tasks = list(task_indices([task_prefix(r).rstrip(":") for r in records]))
        unlisted = [task for task in tasks if task not in sizes]
        parts = ", ".join(f"{task} <= {sizes.get(task, self.default_batch_size)}" for task in tasks)
        b = f"train.batch_size={self.default_batch_size}"
        rule = f"{b} for {', '.join(unlisted)}" if unlisted else f"{b} does not apply to these tasks"
        return f"one task each: {parts} (data.task_batch_sizes; {rule})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def collate(self, records: list[dict], train: bool = True) -> dict:
        """records -> {input_ids (B, L), attention_mask, feats (B, I, N, C), image_mask (B, I),
        labels (B, T) with -100 on padding (train only), ids, tasks}."""
        enc = self._tokenize([prompt_text(r) for r in records], records, "question" if train else "")
        per_record = [record_images(r) for r in records]
        flat = self.extractor([im for ims in per_record for im in ims])  # (sum I_b, N, C)
        n_img = max(len(ims) for ims in per_record)
        feats = flat.new_zeros(len(records), n_img, *flat.shape[1:])
        image_mask = torch.zeros(len(records), n_img, dtype=torch.long)
        start = 0
        for b, ims in enumerate(per_record):
            feats[b, : len(ims)] = flat[start : start + len(ims)]
            image_mask[b, : len(ims)] = 1
            start += len(ims)
        batch = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "feats": feats,
            "image_mask": image_mask,
            "ids": [r.get("id") for r in records],
            "tasks": [r.get("task") for r in records],
        }
        if train:
            lab = self._tokenize([train_target(r, self.seed, self.epoch) for r in records], records, "answer")
            batch["labels"] = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        return batch

    def _tokenize(self, texts: list[str], records: list[dict], part: str) -> dict[str, torch.Tensor]:
        """``texts`` as padded ``input_ids`` / ``attention_mask`` (B, <= data.max_length) keeping the first
        ``data.max_length`` tokens; a training record cut there is noted (``part``: question / answer)."""
        if part:
            for record, ids in zip(records, self.tokenizer(texts)["input_ids"], strict=True):
                if len(ids) > self.max_length:
                    self._note_cut(record, part, len(ids))
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def _note_cut(self, record: dict, part: str, length: int) -> None:
        """Note a training record whose question or answer (with its ``</s>``) ``data.max_length`` cuts; say
        so at the first of each. The trainer reports how many after training (:attr:`truncated_ids`: lost
        answer tokens, as the LLaVA-style pipelines count them; :attr:`truncated_question_ids`)."""
        noted = self.truncated_ids if part == "answer" else self.truncated_question_ids
        if not noted:
            lost = (
                "of its answer tokens (and its </s>) from the loss"
                if part == "answer"
                else "of its question tokens"
            )
            print(
                f"warning: record '{record.get('id')}': its {part} is {length} tokens; data.max_length="
                f"{self.max_length} cuts {length - self.max_length} {lost}. Raise data.max_length (the number "
                "of such records is reported after training)",
                flush=True,
            )
        noted.add(str(record.get("id")))

    @property
    def truncated_answers(self) -> int:
        """Distinct training records whose answer ``data.max_length`` cut (each counted once)."""
        return len(self.truncated_ids)

    @property
    def truncated_questions(self) -> int:
        """Distinct training records whose question ``data.max_length`` cut (each counted once)."""
        return len(self.truncated_question_ids)

    def _tensors(self, batch: dict) -> dict:
        keys = ("input_ids", "attention_mask", "feats", "image_mask", "labels")
        return {k: batch[k].to(self.device) for k in keys if k in batch}

    def loss(self, batch: dict) -> torch.Tensor:
        return self.model(**self._tensors(batch)).loss

    def generate(self, batch: dict, max_new_tokens: int = 20, num_beams: int = 1) -> list[str]:
        t = self._tensors(batch)
        t.pop("labels", None)
        out = self.model.generate(**t, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def save_merged(self, out_dir: str | Path) -> Path:
        from vlmtune.adapters.attach import merge

        merge(self.model)
        return save_vlbart(self.model, self.tokenizer, self.extractor, out_dir)


def build_vlbart_pipeline(cfg, folder: str | None = None) -> VLBartPipeline:
    """``folder`` (default ``model.name_or_path``): a saved VL-BART folder, or a BART checkpoint
    (``facebook/bart-base``) combined with ``model.vision_encoder`` (``RN101``)."""
    from vlmtune.core.config import ConfigError
    from vlmtune.core.io import cache_dir

    name = cfg.model.name_or_path
    path = folder or name
    cache = cfg.model.feature_cache
    if cache == "auto":
        cache = str(cache_dir("features"))
    try:
        model, tokenizer, extractor = load_vlbart(
            path, cfg.model.vision_encoder, cfg.model.visual_tokens, cache_dir=cache or None
        )
    except VisionEncoderError as e:
        raise ConfigError(str(e)) from None
    except OSError as e:
        raise ConfigError(
            f"model.name_or_path='{name}': cannot load a BART model there ({str(e).splitlines()[0]})"
        ) from None
    sizes = {str(k): int(v) for k, v in (cfg.data.task_batch_sizes or {}).items()}
    return VLBartPipeline(
        model,
        tokenizer,
        extractor,
        max_length=cfg.data.max_length,
        seed=cfg.train.seed,
        name_or_path=str(name),
        task_batch_sizes=sizes,
        default_batch_size=cfg.train.batch_size,
    )


# ---------------------------------------------------------------- folders
def save_vlbart(model: VLBart, tokenizer, extractor: FeatureExtractor, folder: str | Path) -> Path:
    """``folder``: BART + tokenizer (``from_pretrained``-loadable), ``visual_embedding.safetensors``,
    ``vlbart.json`` and, for encoders without public weights (``tiny``), ``vision_encoder.safetensors``."""
    folder = Path(folder)
    _quiet_hf()
    model.bart.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_safetensors(model.visual_embedding.state_dict(), folder / "visual_embedding.safetensors")
    enc = extractor.encoder
    if not enc.has_public_weights:
        atomic_write_safetensors(enc.trunk.state_dict(), folder / "vision_encoder.safetensors")
    meta = {
        "format": 1,
        "vision_encoder": enc.name,
        "visual_tokens": enc.grid**2,
        "feat_dim": model.visual_embedding.feat_dim,
        "n_images": model.visual_embedding.n_images,
    }
    atomic_write_json(meta, folder / META_FILE)
    return folder


def load_vlbart(
    name_or_path: str | Path,
    vision_encoder: str = "RN101",
    visual_tokens: int = 36,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[VLBart, Any, FeatureExtractor]:
    """A saved VL-BART folder, or any BART checkpoint (hub id / folder) plus a fresh visual embedding."""
    path = Path(name_or_path)
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta:
        vision_encoder, visual_tokens = meta["vision_encoder"], meta["visual_tokens"]
    weights = path / "vision_encoder.safetensors"
    encoder = build_grid_encoder(vision_encoder, visual_tokens, weights if weights.is_file() else None)
    extractor = FeatureExtractor(encoder, cache_dir)
    _quiet_hf()
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    bart = BartForConditionalGeneration.from_pretrained(str(name_or_path), dtype=dtype)
    if not meta:
        add_vis_extra_ids(tokenizer, bart)
    ve = VisualEmbedding(extractor.feat_dim, bart.config.d_model, n_images=2).to(dtype)
    if meta:
        ve.load_state_dict(load_file(str(path / "visual_embedding.safetensors")))
    return VLBart(bart, ve, extractor.boxes), tokenizer, extractor


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def add_vis_extra_ids(tokenizer, bart: BartForConditionalGeneration) -> int:
    """VL-BART's tokenizer: 100 ``<extra_id_k>`` + 100 ``<vis_extra_id_k>`` special tokens at the end
    of the vocabulary (bart-base: 50265 -> 50465); resizes the embeddings. Returns tokens added."""
    extra = [f"<extra_id_{i}>" for i in range(VIS_EXTRA_IDS - 1, -1, -1)]
    vis = [f"<vis_extra_id_{i}>" for i in range(VIS_EXTRA_IDS - 1, -1, -1)]
    added = tokenizer.add_special_tokens({"additional_special_tokens": extra + vis})
    bart.resize_token_embeddings(len(tokenizer))
    return added


# ---------------------------------------------------------------- "# Params (%)" as in the papers
def paper_param_percent(model: nn.Module) -> tuple[int, int, float]:
    """(trainable, total, percent) the way VL-Adapter and DoRA count VL-BART's "# Params (%)".

    Both repos print ``sum(trainable) / sum(all parameters of the model)`` after the adapters are
    attached: the denominator is BART (with the 200 added special tokens) + the visual embedding +
    the adapter tensors themselves; the CLIP encoder is not in it (features are precomputed). This
    differs from :func:`vlmtune.adapters.report.param_report`, which leaves adapter tensors out of
    the denominator; for r=128 that is 0.3 points (5.93% here vs 6.23% there).
    """
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, total, 100.0 * trainable / max(total, 1)


register_pipeline("vlbart", build_vlbart_pipeline)
