"""(ΔD, ΔM) points of every q/v weight at every checkpoint of run folders, and their fits.

A run folder is what ``vlmtune train`` writes: ``config.yaml`` and
``checkpoints/step-N/adapter/`` (PEFT-format adapter; full fine-tuning stores the trained weights
in ``trainable_extras.safetensors``). ``W_0`` comes from the run's base model, built from its
``config.yaml``. Set ``train.save_every`` and ``train.keep_last`` so that several checkpoints
survive (the paper uses three intermediate steps and the final one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from vlmtune.analysis.decompose import Fit, decomposition_change, fit_line
from vlmtune.analysis.stats import bootstrap_correlation
from vlmtune.analysis.weights import finetuned_weights
from vlmtune.core.adapter_spec import TARGET_ALIASES
from vlmtune.core.config import ConfigError

# Correlation of (ΔD, ΔM) for the query weights of VL-BART (DoRA paper §4.1, Figure 2).
PAPER_CORRELATION = {"FT": -0.62, "LoRA": 0.83, "DoRA": -0.31}
# A correlation over fewer checkpoints is not reported: with 2 it is +-1 whatever the weights do.
MIN_CHECKPOINTS = 5
BOOTSTRAP_RESAMPLES = 2000
METHOD_LABELS = {
    "full": "FT",
    "lora": "LoRA",
    "dora": "DoRA",
    "dylora": "DyLoRA",
    "vera": "VeRA",
    "dvora": "DVoRA",
}


@dataclass
class Point:
    run: str
    method: str
    module: str  # "q" or "v"
    path: str
    layer: int
    step: int
    dM: float
    dD: float


def module_kind(path: str, modules: tuple[str, ...]) -> str | None:
    """``q``/``v``... if the path's leaf is one of those aliases' module names."""
    leaf = path.rsplit(".", 1)[-1]
    for kind in modules:
        if leaf in TARGET_ALIASES.get(kind, (kind,)):
            return kind
    return None


def layer_index(path: str) -> int:
    found = re.findall(r"\.(\d+)\.", f".{path}.")
    return int(found[-1]) if found else -1


def base_weights(model: nn.Module, modules: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{path: W_0} for the linear layers of ``model`` named by ``modules``."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and module_kind(name, modules):
            out[name] = m.weight.detach()
    return out


def checkpoint_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, adapter folder) of the complete checkpoints, oldest first."""
    found = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*")):
        if (ckpt / "done").is_file() and (ckpt / "adapter").is_dir():
            found.append((int(ckpt.name.split("-", 1)[1]), ckpt / "adapter"))
    return found


def run_method(config: Mapping) -> str:
    """FT / LoRA / DoRA... from a run's resolved config. A fully trained side tower (e.g. LLaVA's
    projector next to a DoRA language model) does not change the label: ``full`` counts only
    when no tower uses an adapter method."""
    methods = {
        spec.get("method", "frozen")
        for spec in (config.get("adapters") or {}).values()
        if isinstance(spec, dict) and spec.get("method", "frozen") != "frozen"
    }
    if len(methods) > 1:
        methods.discard("full")
    return "+".join(METHOD_LABELS.get(m, m) for m in sorted(methods)) or "frozen"


def run_points(
    run_dir: str | Path,
    w0: Mapping[str, torch.Tensor],
    method: str,
    modules: tuple[str, ...] = ("q", "v"),
) -> list[Point]:
    """Points for every checkpoint of one run, given the base weights ``w0``."""
    run_dir = Path(run_dir)
    points = []
    for step, adapter in checkpoint_steps(run_dir):
        for path, wt in sorted(finetuned_weights(adapter, w0).items()):
            d_m, d_d = decomposition_change(w0[path], wt)
            kind = module_kind(path, modules) or "?"
            points.append(Point(run_dir.name, method, kind, path, layer_index(path), step, d_m, d_d))
    return points


def summarize(points: list[Point]) -> list[dict]:
    """One row per (run, module): slope, intercept and correlation of (ΔD, ΔM) over layers x steps,
    with a 95% percentile bootstrap interval of the correlation that resamples checkpoints (all
    layers of a drawn checkpoint together: points of one checkpoint are not independent)."""
    rows = []
    keys = sorted({(p.run, p.method, p.module) for p in points})
    for run, method, module in keys:
        sel = [p for p in points if (p.run, p.method, p.module) == (run, method, module)]
        fit: Fit = fit_line([p.dD for p in sel], [p.dM for p in sel])
        steps = sorted({p.step for p in sel})
        groups = [[(p.dD, p.dM) for p in sel if p.step == step] for step in steps]
        _, low, high = bootstrap_correlation(groups, BOOTSTRAP_RESAMPLES)
        rows.append(
            {
                "run": run,
                "method": method,
                "module": module,
                "checkpoints": steps,
                "layers": len({p.path for p in sel}),
                **{k: _finite(v) for k, v in asdict(fit).items()},
                "correlation_ci95": [_finite(low), _finite(high)],
                "paper_correlation": PAPER_CORRELATION.get(method) if module == "q" else None,
            }
        )
    return rows


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def analyze_runs(
    run_dirs: list[str | Path],
    modules: tuple[str, ...] = ("q", "v"),
    load_base: Callable[[Path, dict], nn.Module] | None = None,
    build: Callable | None = None,
) -> tuple[list[Point], list[dict]]:
    """Points and fits for several runs; base models are built once per distinct model config, by
    ``load_base(run_dir, config)`` (default :func:`build_base_model` with ``build``)."""
    import yaml

    load_base = load_base or partial(build_base_model, build=build)
    cache: dict[str, dict[str, torch.Tensor]] = {}
    points: list[Point] = []
    for run in map(Path, run_dirs):  # check every run before loading any model
        check_run(run)
    for run in map(Path, run_dirs):
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        key = yaml.safe_dump(config.get("model") or {}, sort_keys=True)
        if key not in cache:
            cache[key] = {
                k: v.float().clone() for k, v in base_weights(load_base(run, config), modules).items()
            }
        points.extend(run_points(run, cache[key], run_method(config), modules))
    return points, summarize(points)


def check_run(run: Path) -> None:
    """A user error (one line) unless ``run`` has a config and >= MIN_CHECKPOINTS checkpoints."""
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run}: no config.yaml; is this a vlmtune run folder?")
    n = len(checkpoint_steps(run))
    hint = (
        f"train with train.save_every>0 and train.keep_last>={MIN_CHECKPOINTS} to keep the "
        "intermediate steps the analysis needs"
    )
    if n == 0:
        raise FileNotFoundError(f"{run}: no complete checkpoints under checkpoints/; {hint}")
    if n < MIN_CHECKPOINTS:
        raise ConfigError(
            f"{run}: {n} complete checkpoint(s), a correlation needs at least {MIN_CHECKPOINTS} "
            f"(with 2 it is +-1 whatever the weights do); {hint}"
        )


def build_base_model(run_dir: Path, config: dict, build: Callable | None = None) -> nn.Module:
    """The run's pretrained model (no adapters), from its ``config.yaml``; ``build(cfg) -> Pipeline``
    (default :func:`vlmtune.models.build_pipeline`, folders only; the CLI passes the preset-aware one)."""
    from vlmtune.core.config import load_config
    from vlmtune.models.base import build_pipeline

    no_data = [
        'data.train=""',
        'data.eval=""',
    ]  # only the model is built: the run's data need not be reachable
    cfg = load_config(str(run_dir / "config.yaml"), no_data, model_defaults=False)
    return (build or build_pipeline)(cfg).model
