"""The one run-folder loader: config -> base pipeline -> checks -> adapter, for eval and merge.

A run folder is what ``vlmtune train`` writes (``config.yaml``, ``adapter/``, ``base_model.json``,
``checkpoints/step-N/adapter/``). :func:`load_run` takes a run folder, a checkpoint or an adapter folder,
rebuilds the base from the run's config (or the adapter's recorded base), checks that it is the base the
adapter was trained on (:data:`BASE_FILE`: name, config hash, weights fingerprint; a different one is
refused unless ``force``) and that every file the adapter needs is there, then loads the adapter.

Data paths: ``config.yaml`` keeps ``data.train`` / ``data.eval`` / ``data.image_root`` as the user typed them
(relative to the directory ``vlmtune train`` ran in); :data:`DATA_FILE` records that directory and the absolute
paths. :func:`run_config` reads a run from any directory: each data path is the recorded absolute one, else the
typed one when it is reachable from here, else blank (merge never needs data; eval then needs ``--data``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlmtune.core.errors import AdapterError, ConfigError
from vlmtune.core.io import read_json_object

if TYPE_CHECKING:
    from torch import nn

    from vlmtune.core.config import RunConfig
    from vlmtune.models.base import Pipeline

    Build = Callable[[RunConfig], Pipeline]  # presets.build_pipeline or models.build_pipeline

BASE_FILE = "base_model.json"
MANIFEST_FILE = "adapter_files.json"
DATA_FILE = "data_paths.json"
DATA_KEYS = ("train", "eval", "image_root")  # the data.* keys that name files or folders
TRAIN_DATA_FILE = "train_data.json"  # {"records", "sha256"} of the training records, checked on --resume


# ---------------------------------------------------------------- what a run folder records
def base_identity(name_or_path: str, model: nn.Module, classes: list[str] | None = None) -> dict:
    """``{name_or_path, config_sha256, weights_fingerprint}`` of a base model (before adapters attach), and
    ``classes``: a classifier's class names in head order (ViT), which eval and merge use (:func:`run_classes`)."""
    from vlmtune.core.fingerprint import config_hash, weights_fingerprint

    identity = {"name_or_path": name_or_path, "config_sha256": config_hash(model),
                "weights_fingerprint": weights_fingerprint(model)}  # fmt: skip
    return identity | ({"classes": list(classes)} if classes else {})


def write_base_identity(
    run_dir: Path, name_or_path: str, model: nn.Module, classes: list[str] | None = None
) -> dict:
    """Write :data:`BASE_FILE` into the run folder; returns the identity, which :func:`~vlmtune.recipes.finetune`
    also passes to ``save_adapter(..., base_info=...)`` so that an adapter folder copied out of its run carries it."""
    from vlmtune.core.io import atomic_write_json

    identity = base_identity(name_or_path, model, classes)
    atomic_write_json(identity, run_dir / BASE_FILE)
    return identity


def write_manifest(run_dir: Path, adapter: Path) -> None:
    """:data:`MANIFEST_FILE`: ``{file name: bytes}`` of the final adapter folder, checked before loading."""
    from vlmtune.core.io import atomic_write_json

    files = {p.name: p.stat().st_size for p in sorted(adapter.iterdir()) if p.is_file()}
    atomic_write_json(files, run_dir / MANIFEST_FILE)


def check_same_base(recorded: dict, name_or_path: str, model: nn.Module, where: Path, force: bool) -> None:
    """A :class:`ConfigError` when ``model``'s weights fingerprint is not the recorded one (unless ``force``)."""
    from vlmtune.core.fingerprint import weights_fingerprint

    if force or not recorded.get("weights_fingerprint"):
        return
    if weights_fingerprint(model) == recorded["weights_fingerprint"]:
        return
    named = recorded.get("name_or_path")
    which = f"'{name_or_path}' (trained on '{named}')" if named != name_or_path else f"'{name_or_path}'"
    raise ConfigError(
        f"{where}: the base model {which} has other weights than the one this adapter was trained on "
        f"(weights fingerprint differs); pass the base it was trained on, or --force to use it anyway"
    )


def check_adapter_files(adapter: Path, run_dir: Path | None) -> None:
    """Every file the adapter needs is there, with the size it was written with (one line otherwise)."""
    from vlmtune.adapters.peft_io import EXTRAS_NAME, META_NAME, WEIGHTS_NAME, check_peft_features

    manifest = run_dir / MANIFEST_FILE if run_dir is not None else None
    if manifest is not None and manifest.is_file() and adapter == run_dir / "adapter":
        expected = read_json_object(manifest)
    else:
        expected = {WEIGHTS_NAME: None}
        meta = adapter / META_NAME
        info = read_json_object(meta) if meta.is_file() else {}
        if info.get("not_in_peft"):
            expected[EXTRAS_NAME] = (
                None  # trained tensors PEFT cannot hold (biases, bare parameters) live there
            )
    for name, size in expected.items():
        path = adapter / name
        if not path.is_file():
            raise AdapterError(
                f"{path} is missing: the adapter needs it (without it the base's own weights would be used "
                "silently); copy the whole adapter folder or retrain"
            )
        if size is not None and path.stat().st_size != size:
            raise AdapterError(
                f"{path} is {path.stat().st_size} bytes, it was written with {size}: truncated or replaced; "
                "copy it again or retrain"
            )
    check_peft_features(adapter)  # a peft feature vlmtune cannot load: before the base is built


def absolute_data_path(key: str, value: str, cwd: Path) -> str:
    """``value`` of ``data.<key>`` with every relative file of the spec made absolute against ``cwd``
    (``train.jsonl,more.jsonl`` -> ``/w/train.jsonl,/w/more.jsonl``); generated specs (``shapes:vqa``) as is."""
    from vlmtune.core.data_spec import parse_spec

    if not value.strip():
        return value
    spec = parse_spec(value) if key != "image_root" else None
    if spec is not None and spec.kind == "imagefolder":  # a folder of the user's: imagefolder:/w/if@train
        folder = os.path.abspath(os.path.join(cwd, os.path.expanduser(spec.items[0])))
        return f"imagefolder:{folder}" + (f"@{spec.split}" if spec.split else "")
    if spec is not None and spec.generated:
        return value
    parts = [value] if key == "image_root" else [p.strip() for p in value.split(",") if p.strip()]
    return ",".join(os.path.abspath(os.path.join(cwd, os.path.expanduser(p))) for p in parts)


def absolute_model_path(cfg: RunConfig) -> None:
    """``model.name_or_path`` typed as a relative local folder (``../qwen2_vl``) -> its absolute path, in
    place, so that ``config.yaml``, ``base_model.json`` and the adapter folder's base name the folder from any
    directory (peft and eval/merge/resume elsewhere); hub ids and preset names stay as typed."""
    typed = cfg.model.name_or_path
    if typed and not os.path.isabs(os.path.expanduser(typed)) and Path(typed).expanduser().is_dir():
        cfg.model.name_or_path = os.path.abspath(os.path.expanduser(typed))


def write_data_paths(run_dir: Path, cfg: RunConfig) -> dict:
    """Write :data:`DATA_FILE`: ``{"cwd": where train ran, "data.train": absolute spec, ...}``."""
    from vlmtune.core.io import atomic_write_json

    cwd = Path.cwd()
    paths = {f"data.{k}": absolute_data_path(k, str(getattr(cfg.data, k) or ""), cwd) for k in DATA_KEYS}
    recorded = {"cwd": str(cwd), **paths}
    atomic_write_json(recorded, run_dir / DATA_FILE)
    return recorded


def data_fingerprint(records: list[dict]) -> dict:
    """``{"records": N, "sha256": hex}`` of the training records as the trainer reads them: ids and contents,
    images by file name (a data folder moved elsewhere is the same data). One pass of ``json.dumps``."""
    import hashlib

    digest = hashlib.sha256()
    for record in records:
        named = {
            k: [Path(p).name for p in v] if k == "images" else Path(v).name if k == "image" else v
            for k, v in record.items()
        }
        digest.update(json.dumps(named, sort_keys=True, default=str).encode() + b"\n")
    return {"records": len(records), "sha256": digest.hexdigest()}


def check_same_data(run_dir: Path, fingerprint: dict, accept: bool, say: Callable[[str], None]) -> None:
    """``--resume``: the training data must be the one the run recorded (:data:`TRAIN_DATA_FILE`); other data
    is a one-line :class:`ConfigError` naming the override, or a warning with it (``accept``). Runs that
    recorded none (older vlmtune) are not checked."""
    path = run_dir / TRAIN_DATA_FILE
    if not path.is_file():
        return
    recorded = read_json_object(path)
    if recorded == fingerprint:
        return
    then, now = recorded.get("records"), fingerprint["records"]
    what = f"{then:,} records then, {now:,} now" if then != now else f"{now:,} records, other contents"
    if accept:
        say(
            f"warning: --resume: the training data changed since {run_dir} was trained ({what}); continuing on it"
        )
        return
    raise ConfigError(
        f"--resume {run_dir}: the training data changed since the run was trained ({what}); the checkpoint's "
        "data position would point into other data: pass --data-changed-ok to continue on it anyway, or start a "
        "new run"
    )


def reachable(key: str, value: str) -> bool:
    """Every file / folder a ``data.<key>`` value names exists from the current directory."""
    from vlmtune.core.data_spec import parse_spec

    if key == "image_root":
        return Path(value).expanduser().is_dir()
    spec = parse_spec(value)
    if spec.kind == "imagefolder":  # a folder of the user's, not generated data
        return Path(spec.items[0]).expanduser().is_dir()
    return spec.generated or all(Path(item).expanduser().exists() for item in spec.items if item)


def run_data_paths(run_dir: Path) -> dict[str, tuple[str, str]]:
    """``{"train": (as typed, usable here or "")}`` for the run's ``data.train`` / ``data.eval`` /
    ``data.image_root``: the :data:`DATA_FILE` absolute path when it exists, else the typed one when it
    exists from the current directory, else ``""``."""
    import yaml

    typed = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("data") or {}
    data_file = run_dir / DATA_FILE
    recorded = read_json_object(data_file) if data_file.is_file() else {}
    found = {}
    for key in DATA_KEYS:
        value = str(typed.get(key) or "")
        candidates = [recorded.get(f"data.{key}", ""), value] if value.strip() else []
        found[key] = (value, next((c for c in candidates if c and reachable(key, c)), ""))
    return found


def keep_typed_data_paths(run_dir: Path, config: dict) -> dict:
    """``config`` (a :func:`~vlmtune.core.config.to_dict`) with each data path that :func:`run_config` found for
    a resumed run (the recorded absolute one) put back as the run's ``config.yaml`` typed it, so that rewriting
    ``config.yaml`` keeps what was typed; unchanged for a new run folder."""
    if not (run_dir / "config.yaml").is_file():
        return config
    data = config.get("data") or {}
    for key, (typed, usable) in run_data_paths(run_dir).items():
        if usable and usable != typed and data.get(key) == usable:
            data[key] = typed
    return config


def unreachable_eval_data(run_dir: Path) -> str:
    """``""``, or one line saying why the run's ``data.eval`` cannot be read from here (for eval without --data)."""
    typed, usable = run_data_paths(run_dir)["eval"]
    if not typed.strip() or usable:
        return ""
    data_file = run_dir / DATA_FILE
    where = (
        f"recorded as {read_json_object(data_file).get('data.eval')}"
        if data_file.is_file()
        else "relative to the directory train ran in, which this run did not record"
    )
    return f"{run_dir}: the run's data.eval '{typed}' ({where}) does not exist from here; give --data FILE"


# ---------------------------------------------------------------- finding things
@dataclass
class RunSource:
    """Where an adapter and its run live: ``adapter`` folder, ``run_dir`` (None for a bare adapter)."""

    adapter: Path
    run_dir: Path | None

    @property
    def config_path(self) -> Path | None:
        return self.run_dir / "config.yaml" if self.run_dir is not None else None


def locate(source: str | Path) -> RunSource:
    """A run folder, a checkpoint (``checkpoints/step-N``) or an adapter folder -> :class:`RunSource`."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; give a run folder or an adapter folder")
    adapter = src / "adapter" if (src / "adapter").is_dir() else src
    for run in (adapter.parent, adapter.parent.parent.parent):
        if (run / "config.yaml").is_file():
            return RunSource(adapter, run)
    return RunSource(adapter, None)


def run_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The validated config a run was trained with (``config.yaml``), its data paths as
    :func:`run_data_paths` finds them from the current directory (an unreachable one blank), then
    ``overrides`` (``key=value``, e.g. what ``train --resume`` typed) on top."""
    from vlmtune.core.config import load_config

    paths = run_data_paths(run_dir)
    found = [f"data.{key}={json.dumps(usable)}" for key, (typed, usable) in paths.items() if typed != usable]
    return load_config(str(run_dir / "config.yaml"), [*found, *overrides], model_defaults=False)


def recorded_base(adapter: Path) -> str | None:
    """The base an adapter folder records: ``vlmtune_adapter.json``, or for a folder written by plain
    peft, ``base_model_name_or_path`` of ``adapter_config.json``."""
    from vlmtune.adapters.peft_io import META_NAME, read_peft_config

    meta = adapter / META_NAME
    if meta.is_file():
        return read_json_object(meta).get("base_model_name_or_path")
    return read_peft_config(adapter).get("base_model_name_or_path")


def run_classes(found: RunSource) -> list[str]:
    """The class names (head order) a ViT run was trained with: :data:`BASE_FILE` ``classes``, else the
    adapter folder's recorded base; ``[]`` for other runs and for runs of older vlmtune."""
    from vlmtune.adapters.peft_io import read_base_info

    identity = found.run_dir / BASE_FILE if found.run_dir is not None else None
    recorded = read_json_object(identity) if identity is not None and identity.is_file() else None
    recorded = recorded or read_base_info(found.adapter) or {}
    return [str(c) for c in recorded.get("classes") or []]


# ---------------------------------------------------------------- loading
def load_run(
    source: str | Path,
    build: Build,
    cfg: RunConfig | None = None,
    base: str | None = None,
    force: bool = False,
) -> tuple[Pipeline, RunConfig | None, Path | None]:
    """``(pipeline with the adapter loaded, the run's config or None, run folder or None)``.

    The config is the run's ``config.yaml``; without one ``cfg`` (e.g. a recipe), else the defaults.
    ``base`` replaces the base model (``model.name_or_path``); without it the run's, then the adapter's
    recorded base. Checks the adapter's files before building and the base's identity before loading."""
    from vlmtune.adapters import load_adapter
    from vlmtune.adapters.peft_io import WEIGHTS_NAME
    from vlmtune.core.config import RunConfig

    found = locate(source)
    if not (found.adapter / WEIGHTS_NAME).is_file():
        where = found.run_dir or source
        raise FileNotFoundError(
            f"{where}: no {WEIGHTS_NAME} here or in adapter/ (training unfinished?); pass a finished run or an "
            "adapter folder"
        )
    check_adapter_files(found.adapter, found.run_dir)
    run_cfg = run_config(found.run_dir) if found.run_dir is not None else None
    cfg = run_cfg or cfg or RunConfig()
    cfg.model.name_or_path = (
        base or (None if run_cfg else recorded_base(found.adapter)) or cfg.model.name_or_path
    )
    if not cfg.model.name_or_path:
        raise ConfigError(f"{found.adapter}: base model unknown; pass --base")
    cfg.model.classes = (
        run_classes(found) or cfg.model.classes
    )  # a ViT head's classes: the run's, not the data's
    try:
        pipeline = build(cfg)
    except ConfigError as e:
        if base or not str(e).startswith("model.name_or_path=") or "no such folder" not in str(e):
            raise
        raise ConfigError(
            f"{found.adapter}: {e}; if the base moved, pass --base FOLDER (the same base)"
        ) from None
    identity = found.run_dir / BASE_FILE if found.run_dir is not None else None
    if identity is not None and identity.is_file():
        recorded = read_json_object(identity)
        check_same_base(recorded, cfg.model.name_or_path, pipeline.model, found.adapter, force)
    load_adapter(pipeline.model, found.adapter, pipeline.towers)
    return pipeline, run_cfg, found.run_dir
