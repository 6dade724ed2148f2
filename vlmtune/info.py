"""``vlmtune info [RECIPE | RUN | ADAPTER] [key=value ...]``: recipes, a resolved config, or an adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from vlmtune.core.config import ConfigError, list_recipes, load_config, recipe_description, to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", nargs="?", help="recipe name, run folder or adapter folder (none: list recipes)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to a recipe")


def describe_adapter(folder: Path) -> str:
    from vlmtune.core.io import safetensors_shapes

    lines = [f"adapter folder {folder}"]
    meta = folder / "vlmtune_adapter.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        lines.append(f"  base model: {m.get('base_model_name_or_path')}")
        for tower, spec in m.get("specs", {}).items():
            if spec.get("method") != "frozen":
                lines.append(f"  {tower}: {spec.get('method')} r={spec.get('r')} alpha={spec.get('alpha')}")
    for name in ("adapter_model.safetensors", "trainable_extras.safetensors"):
        path = folder / name
        if path.is_file():
            shapes = safetensors_shapes(path)
            n = sum(_numel(shape) for shape in shapes.values())
            lines.append(f"  {name}: {len(shapes)} tensors, {n:,} values")
    return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def main(args: argparse.Namespace) -> int:
    if not args.target:
        for name, path in list_recipes().items():
            print(f"{name:<22} {recipe_description(path)}")
        return 0
    path = Path(args.target)
    if path.is_dir():
        adapter = path / "adapter" if (path / "adapter").is_dir() else path
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
        raise ConfigError(
            f"{path} is not a recipe (.yaml), a run folder or an adapter folder; "
            "`vlmtune info` with no argument lists the recipes"
        )
    cfg = load_config(args.target, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    if cfg.model.pipeline in ("llava", "blip2") and any(
        o.startswith("model.name_or_path=") for o in args.overrides
    ):
        from vlmtune.models.vlm import describe_plan
        from vlmtune.presets import model_folder

        print("\nadapters this recipe would attach (nothing is trained):")
        print(describe_plan(cfg, model_folder(cfg.model.pipeline, cfg.model.name_or_path)))
    return 0
