"""LLaVA (Liu et al., 2023; LLaVA-1.5) on transformers' ``LlavaForConditionalGeneration``.

CLIP vision tower -> 2-layer MLP projector -> Llama-family LM. Each ``<image>`` in the rendered
conversation becomes ``num_image_tokens`` copies of the image token, one per vision patch kept
(``(image_size / patch_size)^2``, +1 with ``vision_feature_select_strategy="full"``); the model
scatters the projected patch features into those positions.

Towers (transformers 5 module paths): ``language`` = ``model.language_model`` + ``lm_head``,
``vision`` = ``model.vision_tower``, ``projector`` = ``model.multi_modal_projector``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from vlmtune.adapters.attach import merge as merge_adapters
from vlmtune.core.config import ConfigError, RunConfig
from vlmtune.data.collate import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    encode_segments,
    pad_batch,
    prompt_segments,
    supervised_tokens,
    truncate,
)
from vlmtune.data.packing import model_inputs, pack_batch
from vlmtune.data.records import record_images
from vlmtune.generation import generate_text
from vlmtune.models.families import FAMILIES, model_towers, resolve_default_targets
from vlmtune.models.loading import first_line, load_strict
from vlmtune.models.packed_attention import attends_per_sample, use_packed_attention

TOWERS = FAMILIES["llava"].towers


def num_image_tokens(config) -> int:
    """Image tokens per image: patches of the vision tower (+ CLS for the ``full`` strategy)."""
    v = config.vision_config
    n = (v.image_size // v.patch_size) ** 2
    return n + 1 if config.vision_feature_select_strategy == "full" else n


def resolve_dtype(choice: str) -> torch.dtype:
    """``auto``: bf16 on CUDA devices that support it, else fp32."""
    if choice == "auto":
        return (
            torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        )
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


def load_image(path: str):
    from vlmtune.data.images import load_image as _load

    return _load(path)


def record_segments(record: dict, template_seed: int = 0, epoch: int = 0) -> list[tuple[str, bool]]:
    """A record rendered with the vicuna_v1 template: ``[(text, is_assistant), ...]`` (``epoch``: which of a
    caption record's captions is the answer)."""
    from vlmtune.data.templates import record_to_turns, render_vicuna

    return render_vicuna(record_to_turns(record, template_seed, epoch=epoch))


class LlavaPipeline:
    """LLaVA model + tokenizer + image processor behind the :class:`~vlmtune.models.base.Pipeline` API."""

    name = "llava"
    epoch = 0  # the trainer's current epoch (set_epoch): which caption of a caption record trains

    def __init__(self, cfg: RunConfig, folder: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        from vlmtune.models.qlora import quantization_kwargs

        self.cfg = cfg
        self.name_or_path = cfg.model.name_or_path
        path = folder or cfg.model.name_or_path
        kwargs = {"trust_remote_code": cfg.model.trust_remote_code}
        self.model = load_strict(
            LlavaForConditionalGeneration,
            path,
            cfg.model.name_or_path,
            ["llava"],
            dtype=resolve_dtype(cfg.model.dtype),
            **quantization_kwargs(cfg),
            **kwargs,
        )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            self.image_processor = AutoImageProcessor.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.name_or_path='{cfg.model.name_or_path}' could not be loaded as a LLaVA model "
                f"(a local folder with config.json, tokenizer and image processor, or a cached hub id): {first_line(e)}"
            ) from None
        self.model.eval()
        self.towers = model_towers(self.model, FAMILIES["llava"], cfg.model.towers)
        resolve_default_targets(cfg, FAMILIES["llava"])
        self.image_token_id = int(self.model.config.image_token_id)
        self.num_image_tokens = num_image_tokens(self.model.config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.truncated_ids: set[str] = set()  # training records whose answer tokens data.max_length cut
        self._set_up_speed(cfg)

    def _set_up_speed(self, cfg: RunConfig) -> None:
        """``data.packing``: one causal SDPA call per packed sample (models/packed_attention.py);
        ``data.cache_vision_features``: the frozen-tower feature cache (models/feature_cache.py)."""
        self.feature_cache = None
        if cfg.data.packing:
            use_packed_attention(self.model.config.text_config)
        if cfg.data.cache_vision_features:
            from vlmtune.models.feature_cache import open_feature_cache

            self.feature_cache = open_feature_cache(
                self.model, self.image_processor, cfg.data.vision_cache_dir
            )

    # ------------------------------------------------------------------ data
    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch's batches: the caption each caption record trains on."""
        self.epoch = epoch

    def segments(self, record: dict, train: bool = True) -> list[tuple[str, bool]]:
        """Rendered turns; at eval time a benchmark's ``prompt`` (if given) is the user turn."""
        if not train and record.get("prompt"):
            images = "".join(f"{IMAGE_PLACEHOLDER}\n" for _ in record_images(record))
            record = {
                "id": record["id"],
                "task": "conversation",
                "conversations": [{"from": "human", "value": images + record["prompt"]}],
            }
        segs = record_segments(record, self.cfg.data.template_seed, self.epoch)
        return segs if train else prompt_segments(segs)

    def encode(self, record: dict, train: bool = True):
        """Token ids and labels of one record (prompt only when ``train=False``)."""
        segs = self.segments(record, train)
        n_placeholders = sum(text.count(IMAGE_PLACEHOLDER) for text, _ in segs)
        if n_placeholders != len(record_images(record)):
            from vlmtune.data.errors import DataError

            raise DataError(
                f"record '{record.get('id')}': {len(record_images(record))} image(s) but "
                f"{n_placeholders} '{IMAGE_PLACEHOLDER}' placeholder(s) in its text; they must match"
            )
        enc = encode_segments(segs, self.tokenizer, self.image_token_id, self.num_image_tokens)
        cut = truncate(enc, self.cfg.data.max_length)
        if train and len(cut) < len(enc):
            self._note_truncation(record, supervised_tokens(enc) - supervised_tokens(cut), len(enc))
        return cut

    @property
    def truncated_answers(self) -> int:
        """How many distinct training records lost answer tokens to ``data.max_length`` (each counted once,
        however many epochs encode it)."""
        return len(self.truncated_ids)

    def _note_truncation(self, record: dict, lost: int, length: int) -> None:
        """Note a training record whose answer tokens ``data.max_length`` cut; say so once."""
        if lost <= 0:
            return
        if not self.truncated_ids:
            print(
                f"warning: record '{record.get('id')}' is {length} tokens; data.max_length="
                f"{self.cfg.data.max_length} cuts {lost} of its answer tokens from the loss. Raise "
                "data.max_length (the number of such records is reported after training)",
                flush=True,
            )
        self.truncated_ids.add(str(record.get("id")))

    def sample_length(self, record: dict) -> int:
        """Tokens of ``record`` (truncated to ``data.max_length``), negative for a text-only record:
        the signed lengths of :func:`vlmtune.data.sampler.grouped_batches`."""
        enc = encode_segments(
            self.segments(record), self.tokenizer, self.image_token_id, self.num_image_tokens
        )
        n = len(truncate(enc, self.cfg.data.max_length))
        return n if record_images(record) else -n

    def pixel_values(self, records: list[dict]) -> torch.Tensor | None:
        images = [load_image(p) for r in records for p in record_images(r)]
        if not images:
            return None
        pixels = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.model.dtype)

    def collate(self, records: list[dict], train: bool = True) -> dict[str, Any]:
        """Train: right-padded ids/mask/labels (B, T) + pixel_values (N_img, 3, H, W).
        Eval: left-padded prompts, no labels. Both carry ``ids`` (record ids, for error messages)."""
        encoded = [self.encode(r, train) for r in records]
        if train and self.cfg.data.packing:  # samples share rows; images follow the packed order
            batch, order = pack_batch(encoded, self.pad_id, self.row_capacity())
            records = [records[i] for i in order]
        else:
            batch = pad_batch(encoded, self.pad_id, side="right" if train else "left", with_labels=train)
        if train and self.feature_cache is not None:
            batch.update(self.feature_cache.collate(records, self.pixel_values))
        else:
            pixels = self.pixel_values(records)
            if pixels is not None:
                batch["pixel_values"] = pixels
        batch["ids"] = [r["id"] for r in records]
        return batch

    def row_capacity(self) -> int | None:
        """Packed row width: ``data.max_length``, or None (the whole micro-batch in one row) when the LM
        attends per sample (vlmtune.models.packed_attention), where a wide row costs no attention."""
        return None if attends_per_sample(self.model.config.text_config) else self.cfg.data.max_length

    # ------------------------------------------------------------------ model
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Next-token cross-entropy averaged over supervised tokens (label != -100):
        ``L = sum_t CE(logits[t], labels[t+1]) / max(1, #supervised)``; 0 (with a graph) when
        truncation left no supervised token, instead of 0/0. A packed batch (``position_ids``) runs
        with a block-diagonal mask (vlmtune.data.packing); cached vision features skip the tower.
        Only the supervised positions go through ``lm_head`` (``logits_to_keep`` as a boolean (B, T) mask:
        the (B, T, vocab) logits are never formed), inside the model's own forward, so its head keeps
        whatever a family applies after it (final logit soft-capping) and FSDP's root hooks run."""
        inputs = model_inputs(batch)
        if self.feature_cache is not None:
            inputs = self.feature_cache.model_inputs(self.model, inputs, batch)
        labels = batch["labels"].to(inputs["input_ids"].device)
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
        logits = self.model(**inputs, logits_to_keep=keep).logits  # (#supervised, vocab)
        total = F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="sum")
        return total / keep.sum().clamp_min(1)

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16, num_beams: int = 1) -> list[str]:
        inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
        return generate_text(self.model, self.tokenizer, inputs, max_new_tokens, num_beams)

    def save_merged(self, out_dir: str | Path) -> Path:
        """Fold adapters into the weights and write a plain LLaVA folder (model, tokenizer, processor)."""
        from transformers import LlavaProcessor

        out = Path(out_dir)
        merge_adapters(self.model)
        self.model.requires_grad_(False)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        strategy = self.model.config.vision_feature_select_strategy
        LlavaProcessor(
            image_processor=self.image_processor,
            tokenizer=self.tokenizer,
            patch_size=self.model.config.vision_config.patch_size,
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=1,
        ).save_pretrained(out)
        return out
