"""``vlmtune merge RUN_OR_ADAPTER OUT_DIR``: fold a trained adapter into its base model.

The result is a plain model folder (for LLaVA: ``LlavaForConditionalGeneration.from_pretrained``
loads it, with tokenizer, image processor and processor) that answers like the adapter model.

The merge proves itself: one probe record (a generated image + a prompt, collated by the pipeline's
own ``collate([record], train=False)``) runs through the adapter model before merging and through
the merged model as written (after ``save_merged``, which leaves no adapter layer: any left is an
error too); ``merge_check.json`` in the output folder records

    max_rel_logit_diff = max |z_merged - z_adapter| / max |z_adapter|

(the largest logit change relative to the largest logit). Above :data:`MERGE_BOUNDS` for the model's
dtype the command fails (exit 2): 1e-3 in fp32 (what remains is summation order), 2e-2 in bf16/fp16
(a merged weight is rounded once to 8 mantissa bits, ~4e-3 relative per weight, and the differences
accumulate over the layers).

The merged folder is written into a hidden sibling (``.OUT_DIR.merging.*``) and moved into place only
when the check passes; a failed check leaves just ``merge_check.json`` (``"ok": false``) in
``OUT_DIR``, no model a ``from_pretrained`` could pick up by mistake. An ``lm_head`` tied to the input
embeddings (PaliGemma, Gemma 3) is untied before folding (:func:`vlmtune.adapters.attach.merge`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmtune.core.config import ConfigError, load_config
from vlmtune.core.errors import AdapterError
from vlmtune.core.io import atomic_write_json

MERGE_BOUNDS = {torch.float32: 1e-3, torch.bfloat16: 2e-2, torch.float16: 2e-2}
CHECK_NAME = "merge_check.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run folder (with adapter/ and config.yaml) or adapter folder")
    parser.add_argument("out_dir", help="where to write the merged model folder")
    parser.add_argument(
        "--recipe", default=None, help="recipe to rebuild the base pipeline if no config.yaml"
    )
    parser.add_argument("--base", default=None, help="override the base model (model.name_or_path)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="merge even into a base other than the one the adapter was trained on",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def merged_pipeline(
    source: str | Path, recipe: str | None = None, base: str | None = None, force: bool = False
):
    """The base pipeline of ``source`` with its adapter loaded (not yet merged): the run folder loader
    (:func:`vlmtune.recipes.run_folder.load_run`) with ``--recipe`` for folders without a ``config.yaml``."""
    from vlmtune.presets import build_pipeline
    from vlmtune.recipes.run_folder import load_run

    cfg = load_config(recipe) if recipe else None
    pipeline, _, _ = load_run(source, build_pipeline, cfg, base, force)
    pipeline.model.eval()
    return pipeline


def check_output(out_dir: Path, overwrite: bool) -> None:
    """A non-empty output folder (the run folder itself included) is refused unless ``--overwrite``."""
    if out_dir.is_file():
        raise ConfigError(f"{out_dir} is a file; give a folder for the merged model")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out_dir} is not empty ({len(list(out_dir.iterdir()))} entries); give a new folder, or --overwrite "
            "to replace what the merged model writes there"
        )


def check_not_base(out_dir: Path, base: str) -> None:
    """The merged model never goes into the base folder it was built from (``--overwrite`` there would
    replace the base weights every run on it needs)."""
    folder = Path(base).expanduser()
    if folder.is_dir() and out_dir.resolve() == folder.resolve():
        raise ConfigError(
            f"{out_dir} is the base model folder this merge reads; give another folder for the merged model"
        )


def probe_batch(pipeline, folder: Path) -> dict[str, Any]:
    """One record (a seeded 32x32 noise image written to ``folder`` + a question) collated for eval."""
    rng = np.random.default_rng(0)
    image = folder / "probe.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    record = {"id": "merge-probe", "task": "vqa", "image": str(image), "question": "What shape is this?",
              "answer": "circle", "answers": ["circle"], "label": 0}  # fmt: skip
    return pipeline.collate([record], train=False)


@torch.no_grad()
def probe_logits(pipeline, batch: dict[str, Any]) -> torch.Tensor:
    """The model's logits on ``batch``, fp32 on CPU."""
    from vlmtune.data.packing import model_inputs
    from vlmtune.models import move_batch

    if hasattr(pipeline, "logits"):
        out = pipeline.logits(batch)
    else:
        device = next(pipeline.model.parameters()).device
        inputs = model_inputs(move_batch(batch, device))
        if getattr(getattr(pipeline.model, "bart", None), "config", None) is not None:
            inputs["labels"] = inputs["input_ids"]  # an encoder-decoder needs decoder inputs: the prompt
        out = pipeline.model(**inputs).logits
    return out.float().cpu()


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` over all logits."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def verify(pipeline, merged_folder: Path, batch: dict[str, Any], want: torch.Tensor) -> dict[str, Any]:
    """Compare the merged model's probe logits with ``want`` (the adapter model's), write
    ``merge_check.json`` into ``merged_folder`` and raise :class:`AdapterError` when an adapter layer is
    left or the difference is above the dtype's bound (the message names ``merged_folder``; the model files
    are not there: :func:`write_checked` removes them)."""
    from vlmtune.adapters.attach import adapter_layers

    left = [path for path, _ in adapter_layers(pipeline.model)]
    dtype = next(pipeline.model.parameters()).dtype
    bound = MERGE_BOUNDS.get(dtype, MERGE_BOUNDS[torch.bfloat16])
    diff = relative_difference(probe_logits(pipeline, batch), want)
    check = {"max_rel_logit_diff": diff, "bound": bound, "dtype": str(dtype).removeprefix("torch."),
             "unmerged_layers": len(left), "ok": diff <= bound and not left,
             "probe": "one generated 32x32 image + 'What shape is this?'"}  # fmt: skip
    atomic_write_json(check, merged_folder / CHECK_NAME)
    if left:
        raise AdapterError(
            f"{merged_folder}: {len(left)} adapter layer(s) were not folded into the weights "
            f"({', '.join(left[:3])}); the merge is wrong"
        )
    if diff > bound:
        raise AdapterError(
            f"{merged_folder}: the merged model differs from the adapter model by {diff:.3g} (max relative "
            f"logit difference on a probe, bound {bound:g} for {check['dtype']}); the merge is wrong"
        )
    return check


def write_checked(pipeline, out: Path, batch: dict[str, Any], want: torch.Tensor) -> dict[str, Any]:
    """``pipeline.save_merged`` into a hidden sibling of ``out``, :func:`verify`, then move its entries into
    ``out`` (replacing entries of the same name, and an earlier model's weight files it does not write, e.g.
    the shards of a differently sharded merge; the user's other files stay). On a failed check no model file moves: a new or empty
    ``out`` gets only ``merge_check.json``; one that already holds files (``--overwrite``) is left as it was,
    so neither an earlier model nor its check is replaced by a failed merge."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging.", dir=out.parent))
    try:
        pipeline.save_merged(staging)
        try:
            check = verify(pipeline, staging, batch, want)
        except AdapterError as e:
            if out.is_dir() and any(out.iterdir()):
                outcome = f"{out} was left as it was (its files are not this merge's)"
            else:
                _move_into(out, [staging / CHECK_NAME])
                outcome = f"no model was written ({CHECK_NAME} records the check)"
            raise AdapterError(f"{str(e).replace(str(staging), str(out))}, {outcome}") from None
        _drop_stale_weights(out, {p.name for p in staging.iterdir()})
        _move_into(out, sorted(staging.iterdir()))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return check


# weight files of a model folder: an earlier merge's shards that the new one does not write would be read
# beside (or instead of) its weights by from_pretrained
WEIGHT_FILES = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")


def _drop_stale_weights(out: Path, written: set[str]) -> None:
    """Remove the weight files in ``out`` (``--overwrite``) that the new merge does not write."""
    if not out.is_dir():
        return
    for pattern in WEIGHT_FILES:
        for stale in out.glob(pattern):
            if stale.name not in written and stale.is_file():
                stale.unlink()


def _move_into(out: Path, entries: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is for the one-line error
    check_output(Path(args.out_dir), args.overwrite)  # before any model is loaded
    pipeline = merged_pipeline(args.source, args.recipe, args.base, args.force)
    check_not_base(Path(args.out_dir), pipeline.name_or_path)
    with tempfile.TemporaryDirectory() as tmp:
        batch = probe_batch(pipeline, Path(tmp))
        want = probe_logits(pipeline, batch)
        out = Path(args.out_dir)
        check = write_checked(pipeline, out, batch, want)
    print(f"merged {args.source} into {pipeline.name_or_path} -> {out}")
    print(f"merge check: max relative logit difference {check['max_rel_logit_diff']:.3g} "
          f"(bound {check['bound']:g}, {check['dtype']}) -> {out / CHECK_NAME}")  # fmt: skip
    return 0
