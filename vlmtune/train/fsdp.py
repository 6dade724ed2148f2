"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the shared trainer.

Sharding is per transformer layer: every decoder layer of the language model and every encoder layer
of the vision tower is one FSDP unit, the rest of the model (embeddings, projector, lm_head, final
norms) is the root unit. Every parameter of a unit -- frozen base weights and adapters alike -- is
split by rows over the ``W`` processes (a ``DTensor`` with ``Shard(0)``); a unit's parameters are
all-gathered just before its forward (and again in backward) and freed after it.

Adapters live inside the unit of the layer they wrap (an adapter wrapper replaces the ``nn.Linear``
it wraps, so it is a submodule of that layer), so inside ``DoraLinear.forward`` ``base_layer.weight``
is the gathered (out, in) weight and the column norm ``||W0 + s B A||_c`` (DoRA eq. 5) is computed on
whole rows, never on a local shard (:func:`check_adapter_units` asserts the placement).

Gradients: the trainer pre-weights every process's loss so that the *sum* of the per-process gradients
is the single-process gradient (see :mod:`vlmtune.train.distributed`); FSDP's reduce-scatter is set to
sum (divide factor 1) accordingly, so FSDP and DDP compute the same updates as one process.

Checkpoints: trainable tensors are gathered into one consolidated adapter folder on the main process
(every parameter for ``*-ft``); the optimizer state is written sharded with
``torch.distributed.checkpoint`` (DCP), which re-shards on load, so a run resumes under another
process count with its optimizer state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vlmtune.core.config import ConfigError, RunConfig
from vlmtune.train import distributed as ddp

OPTIMIZER_DIR = "optimizer"  # DCP folder inside a checkpoint


def requested(cfg: RunConfig, distributed_type: str) -> bool:
    """FSDP asked for by the recipe (``train.fsdp=true``) or by the launcher (accelerate FSDP config)."""
    return cfg.train.fsdp or distributed_type == "FSDP"


def check_config(cfg: RunConfig) -> None:
    """One-line :class:`ConfigError` for combinations the sharded path does not handle."""
    if cfg.model.load_in_4bit:
        raise ConfigError(
            "train.fsdp=true with model.load_in_4bit=true is not supported (4-bit weights are not sharded); "
            "use one of them"
        )
    if cfg.train.fsdp_offload and not torch.cuda.is_available():
        raise ConfigError(
            "train.fsdp_offload=true needs CUDA (it pins CPU memory for GPU copies); set it false"
        )
    if cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.fsdp=true supports train.mixed_precision=bf16 or no, not fp16")


def layer_units(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks, in module order: elements of every ``nn.ModuleList`` whose
    members share one class and hold a linear layer (LLaVA: ``LlamaDecoderLayer`` x L of the language
    model, ``CLIPEncoderLayer`` x L of the vision tower). Adapter-internal lists are skipped."""
    from vlmtune.adapters.base import WeightAdapter

    units: list[nn.Module] = []
    seen: set[int] = set()
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or id(module) in seen:
            continue
        kinds = {type(m) for m in module}
        first = module[0]
        if len(kinds) != 1 or isinstance(first, WeightAdapter):
            continue
        if not any(isinstance(m, nn.Linear | WeightAdapter) for m in first.modules()):
            continue
        for inner in module.modules():
            seen.add(id(inner))
        units.extend(module)
    return units


def shard_model(model: nn.Module, cfg: RunConfig, device: torch.device) -> list[nn.Module]:
    """Apply ``fully_shard`` to every layer unit, then to the root. Returns the layer units.

    bf16 mixed precision: parameters gathered in bf16, gradients reduced in fp32 (sharded parameters
    and the optimizer stay fp32). ``train.fsdp_offload``: sharded parameters, gradients and the
    optimizer step live in CPU memory (CUDA only)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if not dist.is_initialized():  # one process: a group of one, so the same sharded code path runs
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (ddp.world()[1],))
    bf16 = cfg.train.mixed_precision == "bf16" or (
        cfg.train.mixed_precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    offload = CPUOffloadPolicy() if cfg.train.fsdp_offload else OffloadPolicy()
    kwargs = {"mesh": mesh, "offload_policy": offload, **({"mp_policy": mp} if mp else {})}
    units = layer_units(model)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    for module in [*units, model]:
        module.set_gradient_divide_factor(1.0)  # sum: losses are pre-weighted (module docstring)
        module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    check_adapter_units(model)
    return units


def check_adapter_units(model: nn.Module) -> None:
    """Assert that every adapter wrapper and the weight it wraps are gathered by the same FSDP unit
    (so the wrapper's forward sees whole rows of ``W0``)."""
    from torch.distributed.fsdp import FSDPModule

    from vlmtune.adapters.base import WeightAdapter

    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            for p in module.parameters():
                owner[id(p)] = name  # inner units come later in named_modules and overwrite the root
    for name, module in model.named_modules():
        if isinstance(module, WeightAdapter):
            units = {owner.get(id(p)) for p in module.parameters()}
            if len(units) != 1:
                raise AssertionError(f"{name}: adapter and base weight are in different FSDP units {units}")


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_report(model: nn.Module) -> dict[str, int]:
    """Element counts of the frozen parameters: held by this process vs in the whole model."""
    local = total = 0
    for p in model.parameters():
        if not p.requires_grad:
            total += p.numel()
            local += p.to_local().numel() if is_sharded(p) else p.numel()
    return {"frozen_numel": total, "frozen_local_numel": local}


def copy_full_(param: torch.Tensor, full: torch.Tensor) -> None:
    """``param.copy_(full)`` for a plain or sharded parameter (``full`` is the whole tensor, present on
    every process: each takes its own rows, no communication)."""
    if is_sharded(param):
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(
            full.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None
        )
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(full.to(param.dtype))


@contextmanager
def consolidated(model: nn.Module) -> Iterator[None]:
    """Inside the block the main process's model holds whole trainable tensors (on the CPU) in
    place of its shards, so the usual ``save_adapter`` writes one consolidated file. Every process
    must enter it (the gathers are collectives); a no-op for an unsharded model."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    main = ddp.is_main()
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.requires_grad and is_sharded(p):
                    full = p.full_tensor().cpu()  # collective: same order on every process
                    if main:
                        swapped.append((module, name, p))
                        module._parameters[name] = nn.Parameter(full, requires_grad=True)
    try:
        yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> float:
    """Global gradient norm over sharded gradients (clipped to ``max_norm``)."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)
    return float(norm.full_tensor() if is_sharded(norm) else norm)


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Sharded optimizer state with DCP (every process writes its shards; collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load a DCP optimizer state, re-sharded to this run's process count (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def staging_dir(run_dir: Path, step: int) -> Path:
    """Where the processes write the optimizer shards of step ``step`` before the main process moves
    them into the checkpoint folder (one path, chosen by the main process)."""
    path = None
    if ddp.is_main():
        path = Path(run_dir) / "checkpoints" / f".optim-step-{step:06d}"
        shutil.rmtree(path, ignore_errors=True)  # shards of a killed save
    return ddp.broadcast_object(path)
