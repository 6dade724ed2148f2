"""``vlmtune merge RUN_OR_ADAPTER OUT_DIR``: fold a trained adapter into its base model.

The result is a plain model folder (for LLaVA: ``LlavaForConditionalGeneration.from_pretrained``
loads it, with tokenizer, image processor and processor) that answers like the adapter model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from vlmtune.core.config import ConfigError, RunConfig, from_dict, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run folder (with adapter/ and config.yaml) or adapter folder")
    parser.add_argument("out_dir", help="where to write the merged model folder")
    parser.add_argument(
        "--recipe", default=None, help="recipe to rebuild the base pipeline if no config.yaml"
    )
    parser.add_argument("--base", default=None, help="override the base model (model.name_or_path)")


def locate(source: str | Path) -> tuple[Path, Path | None]:
    """(adapter folder, run config.yaml or None) for a run folder, checkpoint or adapter folder."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; give a run folder or an adapter folder")
    adapter = src / "adapter" if (src / "adapter").is_dir() else src
    if not (adapter / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{src}: no adapter_model.safetensors here or in {src}/adapter")
    for cand in (adapter.parent / "config.yaml", adapter.parent.parent.parent / "config.yaml"):
        if cand.is_file():
            return adapter, cand
    return adapter, None


def merged_pipeline(source: str | Path, recipe: str | None = None, base: str | None = None):
    """The base pipeline of ``source`` with its adapter loaded (not yet merged)."""
    import json

    from vlmtune.adapters import load_adapter
    from vlmtune.presets import build_pipeline

    adapter, config_path = locate(source)
    if config_path is not None:
        cfg = from_dict(RunConfig, yaml.safe_load(config_path.read_text()) or {})
    elif recipe:
        cfg = load_config(recipe)
    else:
        cfg = RunConfig()
    meta_base = None
    meta = adapter / "vlmtune_adapter.json"
    if meta.is_file():
        meta_base = json.loads(meta.read_text()).get("base_model_name_or_path")
    cfg.model.name_or_path = base or meta_base or cfg.model.name_or_path
    if not cfg.model.name_or_path:
        raise ConfigError(f"{adapter}: base model unknown; pass --base")
    pipeline = build_pipeline(cfg)
    load_adapter(pipeline.model, adapter, pipeline.towers)
    pipeline.model.eval()
    return pipeline


def main(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is for the one-line error
    pipeline = merged_pipeline(args.source, args.recipe, args.base)
    out = pipeline.save_merged(args.out_dir)
    print(f"merged {args.source} into {pipeline.name_or_path} -> {out}")
    return 0
