"""BLIP-2 and InstructBLIP: a frozen image encoder, a Q-Former, and a language model.

BLIP-2 (Li et al., 2023): ``Q`` learned query tokens cross-attend to the vision encoder's output inside
the Q-Former; ``language_projection`` maps the Q query outputs into the LM's embedding space, where they
take the place of the Q ``<image>`` tokens that the processor puts before the prompt. InstructBLIP (Dai
et al., 2023) also feeds the instruction to the Q-Former (``qformer_input_ids``, which the processor
tokenizes with the Q-Former's own BERT tokenizer), so the queries extract instruction-aware features.

The Q-Former is its own tower, not a "projector": it is a 12-layer transformer (~100M parameters in
the released checkpoints) with its own attention and feed-forward layers, so it takes adapters like the
other towers. Towers (transformers 5 module paths, :data:`~vlmtune.models.families.QFORMER_TOWERS`):
``vision`` = ``vision_model``, ``qformer`` = ``qformer`` + ``query_tokens`` + ``language_projection``,
``language`` = ``language_model`` (decoder-only OPT / Llama-Vicuna, or encoder-decoder Flan-T5).

One record -> one example (LAVIS' ``blip2_opt`` / ``blip2_t5`` / ``blip2_vicuna_instruct`` layout):

- decoder-only: ``input_ids = [<image>] * Q + tok(prompt) + tok(answer) + [eos]``; labels are the
  answer and eos only (image tokens and prompt -> -100);
- encoder-decoder (T5): ``input_ids = [<image>] * Q + tok(prompt)`` for the encoder,
  ``labels = tok(answer) + [eos]`` for the decoder (shifted right by T5 itself);
- the processor sees the prompt only, so InstructBLIP's Q-Former reads the instruction, never the answer.

Prompts: a benchmark's ``prompt`` at evaluation; in training the InstructBLIP instruction templates
(:mod:`vlmtune.data.templates`, ``vqa_style="instructblip"``), one template per record and epoch: the
template of record ``r`` in epoch ``e > 0`` is drawn from ``sha256(f"{seed}:{r}#epoch{e}")`` (epoch 0: the
record id alone), so a run samples templates as the paper does and a resumed run draws the same ones.

PIN (Dorkenwald et al., 2024) on these models goes where the paper puts it, on the vision encoder's
output right before the Q-Former: ``adapters.qformer.method=pin`` attaches it to :class:`QFormerInput`,
an identity the pipeline inserts at that seam (``model.qformer_input``); the rest stays frozen.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vlmtune.core.config import ConfigError, RunConfig
from vlmtune.core.errors import DataError
from vlmtune.data.collate import IGNORE_INDEX, IMAGE_PLACEHOLDER
from vlmtune.data.packing import model_inputs
from vlmtune.data.records import record_images
from vlmtune.models.base import register_pipeline
from vlmtune.models.families import (
    QFORMER_TYPES,
    UnsupportedFamily,
    model_towers,
    qformer_family,
    resolve_default_targets,
)
from vlmtune.models.llava import load_image, resolve_dtype
from vlmtune.models.loading import load_strict, read_model_type
from vlmtune.models.vlm import Example, FamilyPipeline, load_processor, stack_inputs

SITE = "qformer_input"  # the module path of the seam between the vision encoder and the Q-Former
SITE_METHODS = ("pin",)  # qformer-tower methods that attach at the seam instead of inside the Q-Former


class QFormerInput(nn.Linear):
    """Identity on the vision encoder's output (B, N, D) where the Q-Former reads it (its
    ``encoder_hidden_states``): the seam where tower methods that insert before a module (PIN) attach.

    It computes nothing. Its only tensor is a frozen empty ``weight`` (0, D): it declares the width
    ``in_features = D`` and the device the way ``adapters.pin.add_pin`` reads them (the first
    ``nn.Linear``'s ``in_features``, the first parameter's device); it is never saved with a merge, since
    PIN cannot be merged.
    """

    def __init__(self, width: int, device: torch.device | None = None) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = width, 0
        self.weight = nn.Parameter(torch.empty(0, width, device=device), requires_grad=False)
        self.register_parameter("bias", None)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return image_embeds


def install_qformer_input(model: nn.Module) -> QFormerInput:
    """Add :class:`QFormerInput` as ``model.qformer_input`` and route the Q-Former's
    ``encoder_hidden_states`` through it (a forward pre-hook on ``model.qformer``)."""
    device = model.query_tokens.device
    site = QFormerInput(model.config.vision_config.hidden_size, device)
    model.add_module(SITE, site)

    def through_site(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "encoder_hidden_states": site(kwargs["encoder_hidden_states"])}

    model.qformer.register_forward_pre_hook(through_site, with_kwargs=True)
    return site


class QFormerPipeline(FamilyPipeline):
    """A BLIP-2 / InstructBLIP checkpoint behind the :class:`~vlmtune.models.base.Pipeline` API.

    Shares loading helpers, batch stacking (:func:`~vlmtune.models.vlm.stack_inputs`), the decoder-only
    loss (``LlavaPipeline.loss``) and the export (:meth:`FamilyPipeline.save_merged`: the source class
    with its processor); differs in prompts, labels, the encoder-decoder loss and generation.
    """

    name = "blip2"

    def __init__(self, cfg: RunConfig, folder: str | None = None, processor=None) -> None:  # noqa: D107
        from transformers import AutoConfig, AutoModelForImageTextToText

        from vlmtune.models.qlora import quantization_kwargs

        self.cfg = cfg
        self.name_or_path = name = cfg.model.name_or_path
        path, trust = folder or name, cfg.model.trust_remote_code
        model_type = read_model_type(path, name, trust)
        if model_type not in QFORMER_TYPES:
            raise ConfigError(
                f"model.name_or_path='{name}' has model_type '{model_type}'; model.pipeline=blip2 takes "
                f"{', '.join(QFORMER_TYPES)} (LLaVA-style families: model.pipeline=llava)"
            )
        text_type = AutoConfig.from_pretrained(path, trust_remote_code=trust).text_config.model_type
        try:  # before any weight is read
            self.family = qformer_family(model_type, text_type)
        except UnsupportedFamily as e:
            raise ConfigError(f"model.name_or_path='{name}': {e}") from None
        kwargs = {"trust_remote_code": trust, **quantization_kwargs(cfg)}
        dtype = resolve_dtype(cfg.model.dtype)
        self.model = load_strict(
            AutoModelForImageTextToText, path, name, list(QFORMER_TYPES), dtype=dtype, **kwargs
        )
        self.model.eval()
        self.processor = processor or load_processor(path, name, trust)
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        self.decoder_only = bool(self.model.config.use_decoder_only_language_model)
        self.towers = self._towers()
        resolve_default_targets(cfg, self.family)
        self.image_token_id = int(self.model.config.image_token_id)
        self.num_query_tokens = int(self.model.config.num_query_tokens)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.truncated_ids: set[str] = set()
        self.feature_cache = None
        self.epoch = 0  # the training epoch whose instruction templates collate() draws (set_epoch)

    def _towers(self) -> dict[str, list[str]]:
        """The family's towers without unused modules (InstructBLIP's last text feed-forward); with a seam
        method (PIN) on the qformer tower, that tower is the seam :class:`QFormerInput` (installed here)."""
        towers = model_towers(self.model, self.family, self.cfg.model.towers)
        if self.cfg.adapters.qformer.method in SITE_METHODS:
            install_qformer_input(self.model)
            towers["qformer"] = [SITE]
        return towers

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch's batches: the instruction templates to draw."""
        self.epoch = epoch

    # ------------------------------------------------------------------ data
    def prompt_and_answer(self, record: dict, train: bool) -> tuple[str, str | None]:
        """The prompt (instruction, no image marker) and the answer (None at evaluation). Multi-turn
        records: the turns before the last answer, joined by newlines, are the prompt."""
        from vlmtune.data.templates import record_to_turns

        if not train and record.get("prompt"):
            return record["prompt"], None
        turns = record_to_turns(
            record,
            self.cfg.data.template_seed,
            vqa_style="instructblip",
            epoch=self.epoch,
            template_per_epoch=True,
        )
        last = max((i for i, (role, _) in enumerate(turns) if role == "gpt"), default=len(turns))
        texts = [text.replace(IMAGE_PLACEHOLDER, "").strip() for _, text in turns[:last]]
        prompt = "\n".join(t for t in texts if t)
        return prompt, (turns[last][1] if train else None)

    def encode(self, record: dict, train: bool = True) -> Example:
        """Processor outputs (image tokens + prompt; InstructBLIP: + ``qformer_input_ids``) and labels."""
        paths = record_images(record)
        if len(paths) != 1:
            raise DataError(
                f"record '{record.get('id')}' has {len(paths)} images; BLIP-2 and InstructBLIP take exactly one"
            )
        prompt, answer = self.prompt_and_answer(record, train)
        out = self.processor(images=[load_image(paths[0])], text=[prompt], return_tensors="pt")
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        tensors["pixel_values"] = tensors["pixel_values"].to(self.model.dtype)
        if not train:
            return self._truncate_prompt(tensors, None, record)
        target = [*self.tokenizer(answer, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]
        if not self.decoder_only:  # T5: the answer is the decoder's
            return self._truncate_prompt(tensors, target, record)
        n = tensors["input_ids"].shape[1]
        tensors["input_ids"] = torch.cat([tensors["input_ids"], torch.tensor([target])], dim=1)
        tensors["attention_mask"] = torch.cat(
            [tensors["attention_mask"], torch.ones(1, len(target), dtype=torch.long)], 1
        )
        return self._truncate_prompt(tensors, [IGNORE_INDEX] * n + target, record)

    def _truncate_prompt(self, tensors: dict, labels: list[int] | None, record: dict) -> Example:
        """Keep the first ``data.max_length`` tokens (never the Q image tokens, which come first); the
        decoder labels of T5 are cut to the same length. Lost answer tokens are counted."""
        limit = max(self.cfg.data.max_length, self.num_query_tokens)
        n = tensors["input_ids"].shape[1]
        if n > limit:
            tensors = {
                k: v[:, :limit] if k in ("input_ids", "attention_mask") else v for k, v in tensors.items()
            }
        if labels is not None:
            kept = labels[:limit]
            self._note_truncation(
                record, sum(x != IGNORE_INDEX for x in labels[len(kept) :]), max(n, len(labels))
            )
            labels = kept
        return Example(tensors, labels)

    def sample_length(self, record: dict) -> int:
        """Tokens of ``record`` (every record has an image): :func:`vlmtune.data.sampler.grouped_batches`."""
        example = self.encode(record)
        return len(example) + (0 if self.decoder_only else len(example.labels))

    def collate(self, records: list[dict], train: bool = True) -> dict[str, Any]:
        """Train: right-padded ``input_ids``/``attention_mask`` (B, T), ``labels`` (B, T) decoder-only or
        (B, T_answer) for T5, ``pixel_values`` (B, 3, H, W), InstructBLIP's ``qformer_input_ids`` /
        ``qformer_attention_mask`` (B, T_q). Eval: left-padded prompts. Both carry ``ids``."""
        examples = [self.encode(r, train) for r in records]
        batch: dict[str, Any] = stack_inputs(examples, self.pad_id, "right" if train else "left")
        if train:
            width = max(len(e.labels) for e in examples)
            rows = [e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples]
            batch["labels"] = torch.tensor(rows, dtype=torch.long)
        batch["ids"] = [r["id"] for r in records]
        return batch

    # ------------------------------------------------------------------ model
    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the supervised answer tokens. Decoder-only: next-token prediction
        (:meth:`vlmtune.models.llava.LlavaPipeline.loss`); T5: ``CE(decoder logits[t], labels[t])`` with
        the decoder fed the labels shifted right (``decoder_start_token_id`` first),
        ``sum / max(1, #supervised)``."""
        if self.decoder_only:
            return super().loss(batch)
        labels = batch["labels"].to(batch["input_ids"].device)
        decoder_input_ids = self.model.language_model._shift_right(labels)
        logits = self.model(**model_inputs(batch), decoder_input_ids=decoder_input_ids).logits
        keep = labels != IGNORE_INDEX
        total = F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
        return total / keep.sum().clamp_min(1)

    @torch.no_grad()
    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of an eval batch (the merge check): the LM's over the prompt, T5's for the first
        decoder step."""
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        if not self.decoder_only:
            start = self.model.config.text_config.decoder_start_token_id
            inputs["decoder_input_ids"] = torch.full((inputs["input_ids"].shape[0], 1), start, device=device)
        return self.model(**inputs).logits.float().cpu()

    def generate(self, batch: dict[str, Any], max_new_tokens: int = 16, num_beams: int = 1) -> list[str]:
        """Batched greedy/beam generation on left-padded prompts; T5 returns decoder tokens only."""
        from vlmtune.generation import generate_text

        stop = self.model.generation_config.eos_token_id
        return generate_text(
            self.model,
            self.tokenizer,
            model_inputs(batch),
            max_new_tokens,
            num_beams,
            self.decoder_only,
            stop,
        )


def build_qformer(cfg: RunConfig, folder: str | None = None) -> QFormerPipeline:
    """``model.pipeline: blip2`` (``model.pipeline: llava`` dispatches BLIP-2 / InstructBLIP here too)."""
    return QFormerPipeline(cfg, folder)


register_pipeline("blip2", build_qformer)
