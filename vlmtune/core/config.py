"""Recipes: YAML files in ``configs/`` read into typed dataclasses, with ``key=value`` overrides.

Unknown keys, wrong types and out-of-range values are rejected before any heavy work, with one line
naming the key (and the closest valid keys for a typo).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmtune.core.adapter_spec import AdapterSpec
from vlmtune.core.data_spec import check_columns, parse_spec
from vlmtune.core.errors import ConfigError, DataError
from vlmtune.core.io import read_text

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


MULTITASK_TASKS = (
    "vqa",
    "gqa",
    "nlvr",
    "caption",
)  # VL-BART's task prefixes: the keys of data.task_batch_sizes


@dataclass
class ModelConfig:
    pipeline: str = "llava"  # llava | blip2 | vlbart | vit
    name_or_path: str = "shapes-tiny"  # hub id, local folder, or an embedded preset name
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    visual_tokens: int = 36  # vlbart: pooled grid features per image
    vision_encoder: str = "RN101"  # vlbart: open_clip architecture name
    feature_cache: str = ""  # vlbart: CLIP feature cache folder ("" = off, auto = $VLMTUNE_CACHE/features)
    num_classes: int = 0  # vit: 0 = from the dataset
    classes: list[str] = field(
        default_factory=list
    )  # vit: head order; [] = data.train's (eval/merge: the run's)
    load_in_4bit: bool = False  # QLoRA (CUDA + bitsandbytes only)
    gradient_checkpointing: bool = False
    # llava pipeline: tower name -> module-path prefixes, overriding the family's (model.towers.vision=[...])
    towers: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class AdaptersConfig:
    language: AdapterSpec = field(default_factory=AdapterSpec)
    vision: AdapterSpec = field(default_factory=AdapterSpec)
    projector: AdapterSpec = field(default_factory=AdapterSpec)
    qformer: AdapterSpec = field(default_factory=AdapterSpec)  # BLIP-2 / InstructBLIP (model.pipeline: blip2)

    def specs(self) -> dict[str, AdapterSpec]:
        return {
            "language": self.language,
            "vision": self.vision,
            "projector": self.projector,
            "qformer": self.qformer,
        }


@dataclass
class DataConfig:
    train: str = "shapes:vqa"  # JSONL path, or shapes:<task>[,<task>...]
    eval: str = "shapes:vqa"
    tasks: list[str] = field(default_factory=list)
    image_root: str = ""  # images resolved relative to this (default: the data file's folder)
    columns: dict = field(
        default_factory=dict
    )  # record key -> the user's column/key, e.g. {"messages": "conv"}
    max_length: int = 512
    template_seed: int = 0
    on_error: str = "raise"  # raise | skip
    num_workers: int | None = None  # DataLoader workers; None: 0 on CPU, min(4, cores/2 per process) on a GPU
    max_train_samples: int = 0  # 0 = all
    max_eval_samples: int = 0
    shapes_size: int = 2000  # number of synthetic training images for shapes:*
    turns_per_image: int = 1  # > 1: pack questions about one image into one multi-turn conversation
    task_batch_sizes: dict = field(default_factory=dict)  # multi-task: task -> batch size (vlbart)
    packing: bool = False  # llava: pack a micro-batch's samples into rows of <= max_length tokens
    group_by_length: bool = False  # LLaVA's modality-and-length grouped batches
    cache_vision_features: bool = False  # llava, frozen vision tower: reuse its output across epochs
    vision_cache_dir: str = ""  # "" = $VLMTUNE_CACHE/vision-features


@dataclass
class TrainConfig:
    output_dir: str = "runs/{recipe}"
    seed: int = 0
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4
    projector_lr: float = 0.0  # 0 = same as lr
    vision_lr: float = 0.0  # 0 = same as lr
    qformer_lr: float = 0.0  # 0 = same as lr (BLIP-2 / InstructBLIP Q-Former tower)
    lora_plus_ratio: float = 1.0  # LoRA+: lr of B = ratio * lr of A
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd | paged_adamw | paged_adamw_8bit (bitsandbytes, CUDA)
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    log_every: int = 10
    save_every: int = 0  # steps; 0 = only at the end
    keep_last: int = 2
    nonfinite: str = "stop"  # stop | skip
    allow_dead_adapters: bool = False  # go on when adapter tensors get no gradient in step 1 (train.audit)
    eval_at_start: bool = True
    eval_at_end: bool = True
    num_processes: int = 1
    fsdp: bool = (
        False  # FSDP2: shard parameters, gradients and optimizer state per layer (vlmtune.train.fsdp)
    )
    fsdp_offload: bool = False  # FSDP2: keep the shards and the optimizer step in CPU memory (CUDA)


@dataclass
class EvalConfig:
    benchmark: str = "shapes-vqa"
    batch_size: int = 16
    max_new_tokens: int = 16
    num_beams: int = 1
    prompt: str = "Answer the question using a single word or phrase."


@dataclass
class RunConfig:
    recipe: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # model.name_or_path -> {"dotted.key": value}: the recipe's settings for one base model (the embedded
    # toy presets), applied under every key the user did not type; see load_config
    model_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key: ``> low`` (``strict``) or ``>= low``, and ``<= high`` if set;
    ``note`` says what the boundary value means (``0: no limit``)."""

    low: float
    strict: bool = False
    high: float | None = None
    note: str = ""

    def holds(self, value: float) -> bool:
        above = value > self.low if self.strict else value >= self.low
        return above and (self.high is None or value <= self.high)

    def text(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if x == int(x) else f"{x:g}"

        if self.high is not None:
            return f"in [{num(self.low)}, {num(self.high)}]"
        return f"{'>' if self.strict else '>='} {num(self.low)}" + (f" ({self.note})" if self.note else "")


POSITIVE = Range(0, strict=True)
SEED = Range(0, high=2**32 - 1)  # numpy's seed range (np.random.seed(-1) raises)


def _non_negative(note: str = "") -> Range:
    return Range(0, note=note)


# every int/float key of the model/data/train/eval sections (test_config_cli checks none is missing)
RANGES: dict[str, Range] = {
    "model.visual_tokens": POSITIVE,
    "model.num_classes": _non_negative("0: from the dataset"),
    "data.max_length": POSITIVE,
    "data.template_seed": SEED,
    "data.num_workers": _non_negative("null: 0 on CPU, a few per GPU"),
    "data.max_train_samples": _non_negative("0: no limit"),
    "data.max_eval_samples": _non_negative("0: no limit"),
    "data.shapes_size": POSITIVE,
    "data.turns_per_image": POSITIVE,
    "train.seed": SEED,
    "train.epochs": POSITIVE,
    "train.max_steps": _non_negative("0: no limit"),
    "train.batch_size": POSITIVE,
    "train.grad_accum": POSITIVE,
    "train.lr": POSITIVE,
    "train.projector_lr": _non_negative("0: same as train.lr"),
    "train.vision_lr": _non_negative("0: same as train.lr"),
    "train.qformer_lr": _non_negative("0: same as train.lr"),
    "train.lora_plus_ratio": POSITIVE,
    "train.weight_decay": _non_negative(),
    "train.warmup_ratio": Range(0, high=1),
    "train.max_grad_norm": _non_negative("0: no clipping"),
    "train.log_every": POSITIVE,
    "train.save_every": _non_negative("0: only at the end"),
    "train.keep_last": POSITIVE,
    "train.num_processes": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.max_new_tokens": POSITIVE,
    "eval.num_beams": POSITIVE,
}


# ---------------------------------------------------------------- dict <-> dataclass
def _field_map(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_of(cls, name: str):
    return typing.get_type_hints(cls)[name]


# Names users bring from PEFT / transformers / LLaVA scripts -> vlmtune's key.
KEY_SYNONYMS = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "targets",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "warmup": "warmup_ratio",
    "use_dora": "method",
}


def _unknown_key(key: str, valid: list[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=3, cutoff=0.5)
    if KEY_SYNONYMS.get(leaf) in valid:
        close = [KEY_SYNONYMS[leaf], *[c for c in close if c != KEY_SYNONYMS[leaf]]]
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, tp, key: str) -> Any:
    """Convert a YAML value (or a command-line string) to the annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        (item,) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = (
                [v.strip() for v in value.split(",") if v.strip()] if value.strip() not in ("", "[]") else []
            )
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            num = (
                float(value)
                if tp is float
                else int(float(value))
                if float(value) == int(float(value))
                else None
            )
            if num is None or not math.isfinite(num):
                raise ValueError
            return num
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys."""
    fields = _field_map(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(prefix + key, list(fields))
        kwargs[key] = _coerce(value, _type_of(cls, key), prefix + key)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------- recipes and overrides
def recipe_dirs() -> list[Path]:
    return [d for d in (CONFIG_DIR, PACKAGED_CONFIG_DIR) if d.is_dir()]


def list_recipes() -> dict[str, Path]:
    """Recipe name -> YAML path for every ``configs/*.yaml``."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def recipe_description(path: Path) -> str:
    data = yaml.safe_load(read_text(path, ConfigError)) or {}
    return str(data.get("description", ""))


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def read_recipe(name_or_path: str) -> dict:
    """Raw dict of a recipe, following ``base: other-recipe`` inheritance."""
    path = Path(name_or_path)
    if not path.suffix:
        recipes = list_recipes()
        if name_or_path not in recipes:
            close = difflib.get_close_matches(name_or_path, list(recipes), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"recipes: {', '.join(recipes)}"
            raise ConfigError(f"unknown recipe '{name_or_path}'; {hint}")
        path = recipes[name_or_path]
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    try:
        data = yaml.safe_load(read_text(path, ConfigError)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    data.setdefault("recipe", path.stem)  # before inheriting, so a child keeps its own name
    parent = data.pop("base", None)
    if parent:
        inherited = read_recipe(parent)
        own = set(_flat_dict(data))  # what this recipe sets itself wins over the parent's model_defaults
        for entry in (inherited.get("model_defaults") or {}).values():
            for key in own & set(entry or {}):
                del entry[key]
        data = _deep_update(inherited, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML); a ConfigError naming the override if not."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.lr=1e-4)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = str(getattr(e, "problem", None) or e).replace("'<stream end>'", "the end of the value")
        raise ConfigError(
            f"override '{text}': value {raw!r} is not valid YAML ({problem}); "
            "close the bracket/quote, or quote the whole value"
        ) from None
    return key.strip().split("."), value


def apply_override(data: dict, keys: list[str], value: Any) -> None:
    """Set ``data[k1][k2]... = value``, checking each key against the schema."""
    cls = RunConfig
    node = data
    for i, key in enumerate(keys):
        fields = _field_map(cls)
        if key not in fields:
            raise _unknown_key(".".join(keys[: i + 1]), list(fields))
        if i == len(keys) - 1:
            node[key] = value
            return
        tp = _type_of(cls, key)
        if (tp is dict or typing.get_origin(tp) is dict) and i == len(keys) - 2:
            node.setdefault(key, {})[keys[-1]] = value  # a dict-valued key: model.towers.vision=[...]
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"config key '{'.'.join(keys[: i + 1])}' is not a section")
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
        cls = tp


def validate(cfg: RunConfig) -> RunConfig:
    """Range checks that types alone cannot express."""
    for dotted, allowed in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is not None and not allowed.holds(value):
            raise ConfigError(f"config key '{dotted}' must be {allowed.text()}, got {value}")
    for task, size in cfg.data.task_batch_sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"config key 'data.task_batch_sizes.{task}' must be an int > 0, got {size!r}")
    _validate_task_batch_sizes(cfg)
    for tower, spec in cfg.adapters.specs().items():
        if spec.method not in ("frozen", "full") and spec.r <= 0:
            raise ConfigError(f"config key 'adapters.{tower}.r' must be > 0, got {spec.r}")
        for key in ("lr", "lora_plus_ratio"):
            if getattr(spec, key) is not None and getattr(spec, key) <= 0:
                raise ConfigError(
                    f"config key 'adapters.{tower}.{key}' must be > 0 (or null for the train.* value), "
                    f"got {getattr(spec, key)}"
                )
        if not 0.0 <= spec.dropout < 1.0:
            raise ConfigError(f"config key 'adapters.{tower}.dropout' must be in [0, 1), got {spec.dropout}")
    choices = {
        "data.on_error": ("raise", "skip"),
        "train.schedule": ("cosine", "linear", "constant"),
        "train.nonfinite": ("stop", "skip"),
        "train.optimizer": ("adamw", "sgd", "paged_adamw", "paged_adamw_8bit"),
        "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
        "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    }
    for key in ("train", "eval"):
        text = str(getattr(cfg.data, key))
        try:
            spec = parse_spec(text) if text.strip() else None
        except DataError as e:
            raise ConfigError(f"config key 'data.{key}': {e}") from None
        for part in spec.items if spec and not spec.generated else ():
            if part.endswith((".json", ".jsonl", ".parquet")) and not Path(part).is_file():
                raise ConfigError(f"config key 'data.{key}': file {part} does not exist")
    check_columns(cfg.data.columns)
    if cfg.data.image_root and not Path(cfg.data.image_root).is_dir():
        raise ConfigError(f"config key 'data.image_root': folder {cfg.data.image_root} does not exist")
    for dotted, allowed in choices.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"config key '{dotted}' must be one of {', '.join(allowed)}, got '{value}'")
    _validate_speed(cfg)
    return cfg


def _validate_task_batch_sizes(cfg: RunConfig) -> None:
    """``data.task_batch_sizes`` sizes VL-BART's per-task batches: a key that is none of its tasks (a typo
    such as ``vqq``) or the key on another pipeline would be ignored silently, so both are refused."""
    sizes = cfg.data.task_batch_sizes
    if sizes and cfg.model.pipeline != "vlbart":
        raise ConfigError(
            f"config key 'data.task_batch_sizes' is used by model.pipeline=vlbart only, got "
            f"'{cfg.model.pipeline}'; drop it (train.batch_size sizes the batches)"
        )
    unknown = [str(task) for task in sizes if task not in MULTITASK_TASKS]
    if unknown:
        raise ConfigError(
            f"config key 'data.task_batch_sizes.{unknown[0]}': no such task; the tasks are "
            f"{', '.join(MULTITASK_TASKS)}"
        )


def _validate_speed(cfg: RunConfig) -> None:
    """``data.packing`` / ``data.cache_vision_features`` / ``data.num_workers`` (README "Speed")."""
    if cfg.data.group_by_length and cfg.model.pipeline in ("vit", "vlbart"):  # no token lengths to group by
        why = (
            "VL-BART batches by task: data.task_batch_sizes" if cfg.model.pipeline == "vlbart" else "no text"
        )
        raise ConfigError(
            f"config key 'data.group_by_length' is not supported by model.pipeline={cfg.model.pipeline} "
            f"({why}); set data.group_by_length=false"
        )
    for key in ("packing", "cache_vision_features"):
        if getattr(cfg.data, key) and cfg.model.pipeline != "llava":
            raise ConfigError(
                f"config key 'data.{key}' is supported for model.pipeline=llava only, got "
                f"'{cfg.model.pipeline}'; set data.{key}=false"
            )
    if cfg.data.packing and cfg.adapters.language.method == "prompt":
        raise ConfigError(
            "config key 'data.packing' cannot be combined with adapters.language.method=prompt (the soft "
            "prompt would precede only the first sample of a row); set data.packing=false"
        )
    if cfg.data.cache_vision_features and cfg.adapters.vision.method != "frozen":
        raise ConfigError(
            "config key 'data.cache_vision_features' needs a frozen vision tower, but "
            f"adapters.vision.method='{cfg.adapters.vision.method}'; set one of them back"
        )


def load_config(
    recipe: str, overrides: list[str] | tuple[str, ...] = (), model_defaults: bool = True
) -> RunConfig:
    """Recipe name or YAML path, plus ``key=value`` overrides -> validated :class:`RunConfig`.
    ``model_defaults=False`` for a run's saved ``config.yaml``: its values are already resolved (the
    table it keeps must not overwrite what the user typed for that run)."""
    data = read_recipe(recipe)
    typed = set()
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
        typed.add(".".join(keys))
    for dotted, value in model_defaults_for(data).items() if model_defaults else ():
        if dotted not in typed:  # what the user typed wins over the recipe's per-model setting
            apply_override(data, dotted.split("."), value)
    if "train.epochs" in typed and "train.max_steps" not in typed:
        # what the user typed wins over the recipe: train.max_steps > 0 would override train.epochs
        data.setdefault("train", {})["max_steps"] = 0
    return validate(from_dict(RunConfig, data))


def model_defaults_for(data: dict) -> dict[str, Any]:
    """The recipe's ``model_defaults`` entry for the chosen ``model.name_or_path`` (``{}`` if none).

    The LLaVA recipes keep LLaVA-1.5's r=128 for real checkpoints and give the embedded 128-wide
    ``shapes-tiny`` its own rank and learning rate (r=128 would train 109% of its language model)."""
    table = data.get("model_defaults") or {}
    if not isinstance(table, dict):
        raise ConfigError(
            f"recipe {data.get('recipe')}: model_defaults must map a model to key: value settings"
        )
    entry = table.get(str((data.get("model") or {}).get("name_or_path", "")), {}) or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"recipe {data.get('recipe')}: model_defaults entries must be key: value mappings")
    return entry


def applied_model_defaults(cfg: RunConfig) -> str:
    """``"adapters.language.r=8, train.lr=0.001"``: the per-model settings in force in ``cfg`` ('' if none)."""
    entry = cfg.model_defaults.get(cfg.model.name_or_path, {})
    now = _flat_dict(to_dict(cfg))
    return ", ".join(f"{k}={v}" for k, v in entry.items() if now.get(k) == v)


def _flat_dict(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_defaults":
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
