"""``vlmtune info [RECIPE | RUN | ADAPTER | MODEL] [key=value ...]``: recipes, a resolved config, a run or
adapter folder, or a model folder (``config.json``: class, ``model_type``, its family's towers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from vlmtune.core.config import ConfigError, list_recipes, load_config, recipe_description, to_dict
from vlmtune.recipes.preflight import check_methods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", nargs="?", help="recipe name, run, adapter or model folder (none: list recipes)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to a recipe")


def describe_adapter(folder: Path) -> str:
    from vlmtune.adapters.peft_io import not_in_peft_line
    from vlmtune.adapters.registry import size_summary
    from vlmtune.core.io import safetensors_shapes

    lines = [f"adapter folder {folder}"]
    meta = folder / "vlmtune_adapter.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        lines.append(f"  base model: {m.get('base_model_name_or_path')}")
        for tower, spec in m.get("specs", {}).items():
            if spec.get("method") != "frozen":
                sizes = size_summary(spec)
                lines.append(f"  {tower}: {spec.get('method')}" + (f" {sizes}" if sizes else ""))
    for name in ("adapter_model.safetensors", "trainable_extras.safetensors"):
        path = folder / name
        if path.is_file():
            shapes = safetensors_shapes(path)
            n = sum(_numel(shape) for shape in shapes.values())
            lines.append(f"  {name}: {len(shapes)} tensors, {n:,} values")
    note = not_in_peft_line(folder)
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)


def describe_model_folder(folder: Path) -> str:
    """A model folder's class and ``model_type`` from ``config.json``, its family's towers (module prefixes)
    and default adapter targets, and the command that shows what a recipe would attach."""
    from vlmtune.models.families import UnsupportedFamily, family_for

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{folder / 'config.json'}: not readable JSON ({e}); is it a model folder?"
        ) from None
    model_type = config.get("model_type", "?")
    classes = ", ".join(config.get("architectures") or ["?"])
    own = own_pipeline_folder(folder)
    if own is not None:  # a VL-BART or merged ViT folder: not a transformers VLM family
        return own
    lines = [f"model folder {folder}: {classes} (model_type '{model_type}')"]
    try:
        family = family_for(model_type)
    except UnsupportedFamily as e:
        lines.append(f"  {e}")
    else:
        for tower, prefixes in family.towers.items():
            targets = ", ".join(family.targets.get(tower, [])) or "-"
            lines.append(f"  {tower:<10} prefixes {', '.join(prefixes)}; default targets {targets}")
    recipe = {"blip-2": "blip2-dora", "instructblip": "instructblip-dora"}.get(model_type, "llava-dora")
    lines.append(f"adapters a recipe would attach: vlmtune info {recipe} model.name_or_path={folder}")
    return "\n".join(lines)


def own_pipeline_folder(folder: Path) -> str | None:
    """What a VL-BART folder (``vlbart.json``) or a merged ViT classifier (``config.json`` with ``classes``) is,
    with the recipes that train it; None for other folders."""
    from vlmtune.models.vit import saved_classes
    from vlmtune.models.vlbart import META_FILE

    if (folder / META_FILE).is_file():
        return (
            f"model folder {folder}: a VL-BART model (BART + visual embedding, model.pipeline=vlbart)\n"
            f"recipes that train it: vlbart-dora, vlbart-lora, vlbart-ft (vlmtune info vlbart-dora "
            f"model.name_or_path={folder})"
        )
    classes = saved_classes(folder)
    if classes is not None:
        shown = ", ".join(classes[:10]) + (f" (+{len(classes) - 10} more)" if len(classes) > 10 else "")
        return (
            f"model folder {folder}: a ViT classifier (timm ViT + head, model.pipeline=vit), {len(classes)} "
            f"classes: {shown}\nrecipes that train it: vit-lora, vit-dora, vit-head, vit-full, ... (vlmtune info "
            f"vit-lora model.name_or_path={folder})"
        )
    return None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def not_a_target(path: Path) -> str:
    """The one line for a file or folder ``vlmtune info`` cannot describe (a model folder has config.json)."""
    return (
        f"{path} is not a recipe (.yaml), a run folder or an adapter folder; "
        "`vlmtune info` with no argument lists the recipes"
    )


def main(args: argparse.Namespace) -> int:
    if not args.target:
        for name, path in list_recipes().items():
            print(f"{name:<22} {recipe_description(path)}")
        return 0
    path = Path(args.target)
    if path.is_dir():
        adapter = path / "adapter" if (path / "adapter").is_dir() else path
        if not (path / "config.yaml").is_file() and not (adapter / "adapter_model.safetensors").is_file():
            if (path / "config.json").is_file():
                print(describe_model_folder(path))
                return 0
            raise ConfigError(not_a_target(path))
        if (path / "config.yaml").is_file():
            print(f"run folder {path}")
            if (path / "eval.json").is_file():
                ev = json.loads((path / "eval.json").read_text())
                for key in ("base", "tuned"):
                    if key in ev:
                        print(
                            f"  {key}: {json.dumps({k: v for k, v in ev[key].items() if not isinstance(v, dict)})}"
                        )
        if (adapter / "adapter_model.safetensors").is_file():
            print(describe_adapter(adapter))
        return 0
    if path.is_file() and path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(not_a_target(path))
    cfg = load_config(args.target, args.overrides)
    check_methods(cfg)  # what train refuses before the model loads, info refuses too
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    if cfg.model.pipeline in ("llava", "blip2") and any(
        o.startswith("model.name_or_path=") for o in args.overrides
    ):
        from vlmtune.models.vlm import describe_plan
        from vlmtune.presets import model_folder

        print("\nadapters this recipe would attach (nothing is trained):")
        print(describe_plan(cfg, model_folder(cfg.model.pipeline, cfg.model.name_or_path)))
    return 0
