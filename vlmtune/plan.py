"""``vlmtune plan RECIPE [key=value ...] [--gpus N] [--gpu-mem 80GB]``: what fits, before any weights.

The model is built from its ``config.json`` alone: on the ``meta`` device to count parameters (frozen,
trainable after the recipe's adapters are attached, the largest FSDP unit), and once more under
``FakeTensorMode`` to run one training forward of a micro-batch (one process's slice of
``train.batch_size`` sequences of ``data.max_length`` tokens, image tokens included) and add up the bytes of every tensor autograd saves
for the backward (:func:`activation_bytes`). No weights are read and nothing is allocated.

Per GPU, with ``P`` parameter bytes (frozen + trainable), ``G`` gradient bytes (trainable), ``O``
optimizer bytes (AdamW: 2 states per trainable value, in the parameter dtype), ``U`` the largest
layer unit, ``A`` the saved activations and ``T`` the first transient of the backward (the gradients
of the nll and of the log-softmax, both fp32 ``(b, s, V)``: ``2 b s V 4``), all in the steady state (optimizer states live during forward/backward):

    DDP              P + G (+ G flat all-reduce buffer with N > 1) + O + A + T
    FSDP2            P/N + 2U (gathered unit + prefetch) + G/N + U_grad + O/N + A + T
    FSDP2 + offload  2U + U_grad + A + T on the GPU;  (P + G + O)/N in CPU memory per process
    QLoRA            DDP with the language model's frozen linear weights in NF4 (4.127 bits each:
                     4-bit codes, fp8 block scales per 64 values, fp32 scales per 256 blocks)

Gradient checkpointing keeps each layer's input instead of its saved tensors, plus the largest
layer's saved tensors while it is recomputed. A recipe fits when the total is within 92% of the GPU
memory (the rest: CUDA context, allocator fragmentation). Validated against the measured peak of a
CPU training step by ``benchmarks/plan_memory.py`` (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import re
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from vlmtune.core.config import ConfigError, RunConfig, load_config

GiB = 1024**3
HEADROOM = 0.92  # fraction of the GPU memory a plan may use
NF4_BYTES = 4.127 / 8  # QLoRA bytes per quantised weight (Dettmers et al. 2023, double quantisation)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe name from configs/ (or a YAML path)")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides; model.name_or_path=FOLDER (config.json is enough), an embedded preset, "
        "or a cached hub id",
    )
    parser.add_argument("--gpus", type=int, default=8, help="GPUs (processes) to plan for (default 8)")
    parser.add_argument("--gpu-mem", default="80GB", help="memory per GPU, e.g. 80GB, 24GB (GB = 2^30 bytes)")


def parse_memory(text: str) -> int:
    """``'80GB'`` / ``'80G'`` / ``'80GiB'`` / ``'80'`` -> bytes (GB read as GiB, as nvidia-smi shows)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(g|gb|gib)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--gpu-mem: expected a size like 80GB, got '{text}'")
    return int(float(m.group(1)) * GiB)


# ---------------------------------------------------------------- the model, without weights
def load_model_config(name_or_path: str):
    """The transformers config of a folder (only ``config.json`` needed), embedded preset or hub id."""
    from transformers import AutoConfig

    from vlmtune.models.loading import first_line
    from vlmtune.presets import model_folder

    path = model_folder("llava", name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.name_or_path='{name_or_path}': no readable config.json (a folder with config.json, "
            f"or a cached hub id): {first_line(e)}"
        ) from None


def plan_dtype(cfg: RunConfig) -> torch.dtype:
    """``model.dtype`` (``auto``: bf16, what the trainer loads on a bf16 GPU)."""
    return DTYPES.get(cfg.model.dtype, torch.bfloat16)


PLAN_ATTENTION = "vlmtune_plan_sdpa"


def register_plan_attention() -> None:
    """SDPA without an explicit mask (causal or not as the module says): the memory-efficient and
    flash kernels, which save no (s, s) matrix. Under ``FakeTensorMode`` transformers would otherwise
    build a dense mask (it cannot inspect the values) and SDPA would take the math path."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)

    AttentionInterface.register(PLAN_ATTENTION, attention)
    AttentionMaskInterface.register(PLAN_ATTENTION, lambda *args, **kwargs: None)


def build_empty(config, dtype: torch.dtype, attention: str = "sdpa") -> nn.Module:
    """The image-text-to-text model of ``config`` with uninitialised storage (call under ``meta`` or
    ``FakeTensorMode``)."""
    from transformers import AutoModelForImageTextToText

    config = copy.deepcopy(config)
    config._attn_implementation = attention
    for sub in ("text_config", "vision_config"):
        if getattr(config, sub, None) is not None:
            getattr(config, sub)._attn_implementation = attention
    from transformers.initialization import no_init_weights

    try:
        with no_init_weights():  # no values to initialise: meta or fake storage
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    except ValueError as e:
        raise ConfigError(f"not an image-text-to-text model ({config.model_type}): {e}") from None
    model.tie_weights()  # as loading does (InternVL: lm_head is the input embedding), not a second matrix
    return model


def with_adapters(config, cfg: RunConfig, dtype: torch.dtype, attention: str = "sdpa") -> nn.Module:
    """The recipe's model on the meta device with its adapters attached where training attaches them
    (the family's towers and default targets, :mod:`vlmtune.models.families`)."""
    from vlmtune.adapters import attach
    from vlmtune.models.families import FAMILIES, model_towers, resolve_default_targets

    model = build_empty(config, dtype, attention)
    family = FAMILIES.get(config.model_type, FAMILIES["llava"])
    resolve_default_targets(cfg, family)
    attach(model, model_towers(model, family, cfg.model.towers), cfg.adapters.specs())
    return model


def tower_module(model: nn.Module, tower: str) -> nn.Module:
    """The module of ``tower`` where the pipelines find it, from the family's module paths
    (:mod:`vlmtune.models.families`; ``model.text_model`` for Idefics3 / SmolVLM, ``model.vision_model`` for
    Mllama): the module holding all of them (Qwen-VL's ``model.visual`` for ``model.visual.patch_embed`` and
    ``model.visual.blocks``), else the first (the language model, not the root that also holds ``lm_head``)."""
    from vlmtune.adapters.attach import common_module_path
    from vlmtune.models.families import FAMILIES

    family = FAMILIES.get(model.config.model_type, FAMILIES["llava"])
    paths = family.towers[tower]
    return model.get_submodule(common_module_path(paths) or paths[0])


def language_model(model: nn.Module) -> nn.Module:
    return tower_module(model, "language")


def vision_model(model: nn.Module) -> nn.Module:
    return tower_module(model, "vision")


# ---------------------------------------------------------------- counts
@dataclass
class Counts:
    """Parameter bytes of the model with the recipe's adapters (from the meta model)."""

    frozen: int = 0
    trainable: int = 0
    trainable_numel: int = 0
    total_numel: int = 0
    largest_unit: int = 0  # bytes of the largest FSDP layer unit
    largest_unit_trainable: int = 0
    quantizable_numel: int = 0  # QLoRA: frozen linear weights of the language model
    quantizable_bytes: int = 0
    element_size: int = 2


def count(model: nn.Module) -> Counts:
    from vlmtune.train.fsdp import layer_units

    c = Counts()
    for p in model.parameters():
        nbytes = p.numel() * p.element_size()
        c.total_numel += p.numel()
        c.element_size = max(c.element_size if c.trainable or c.frozen else 0, p.element_size())
        if p.requires_grad:
            c.trainable += nbytes
            c.trainable_numel += p.numel()
        else:
            c.frozen += nbytes
    for unit in layer_units(model):
        c.largest_unit = max(c.largest_unit, sum(p.numel() * p.element_size() for p in unit.parameters()))
        grads = sum(p.numel() * p.element_size() for p in unit.parameters() if p.requires_grad)
        c.largest_unit_trainable = max(c.largest_unit_trainable, grads)
    for linear in language_model(model).modules():  # adapters' frozen base layers included
        if isinstance(linear, nn.Linear) and not linear.weight.requires_grad:
            c.quantizable_numel += linear.weight.numel()
            c.quantizable_bytes += linear.weight.numel() * linear.weight.element_size()
    return c


# ---------------------------------------------------------------- activations
@dataclass
class Activations:
    saved: int = 0  # bytes autograd keeps for the backward (no checkpointing)
    unit_saved: list[int] = field(default_factory=list)  # per layer unit
    unit_inputs: list[int] = field(
        default_factory=list
    )  # per layer unit: its input (kept under checkpointing)
    logits_grad: int = 0  # 2 fp32 (b, s, vocab): the nll and log-softmax gradients, alive together
    notes: list[str] = field(default_factory=list)

    def total(self, checkpointing: bool) -> int:
        if not checkpointing or not self.unit_saved:
            return self.saved + self.logits_grad
        outside = self.saved - sum(self.unit_saved)
        return outside + sum(self.unit_inputs) + max(self.unit_saved) + self.logits_grad


class SavedTensorCounter:
    """Bytes of the distinct storages autograd saves for backward (parameters excluded), in total and
    per layer unit (forward pre/post hooks read the running total)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = {p.untyped_storage()._cdata for p in params}
        self.seen: dict[int, int] = {}
        self.total = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.params and key not in self.seen:
            self.seen[key] = storage.nbytes()
            self.total += storage.nbytes()
        return t

    def watch(self, units: list[nn.Module], acts: Activations) -> list:
        handles = []
        for unit in units:
            start: list[int] = []

            def pre(_m, args, kwargs, start=start):
                hidden = args[0] if args else next(iter(kwargs.values()))
                start.append(self.total)
                acts.unit_inputs.append(hidden.numel() * hidden.element_size())

            def post(_m, _args, _out, start=start):
                acts.unit_saved.append(self.total - start.pop())

            handles.append(unit.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(unit.register_forward_hook(post))
        return handles


def activation_bytes(config, cfg: RunConfig, dtype: torch.dtype, batch: int, seq: int) -> Activations:
    """Saved activations of one training forward of ``batch`` x ``seq`` tokens (module docstring),
    measured under ``FakeTensorMode``: the language model on its input embeddings, the lm_head and
    the token loss (logits upcast to fp32, as transformers' loss does); the vision tower too when it
    has trainable parameters (otherwise autograd saves nothing there)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vlmtune.train.fsdp import layer_units

    acts = Activations()
    with warnings.catch_warnings(), FakeTensorMode(allow_non_fake_inputs=True):
        warnings.filterwarnings(
            "ignore", message="Accessing the data pointer of FakeTensor"
        )  # DoRA's cache key
        register_plan_attention()
        model = with_adapters(config, cfg, dtype, PLAN_ATTENTION).train()
        counter = SavedTensorCounter(list(model.parameters()))
        lm = language_model(model)
        units = [u for u in layer_units(model) if any(u is m for m in lm.modules())]
        hidden = lm.get_input_embeddings().embedding_dim
        handles = counter.watch(units, acts)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            x = torch.zeros(batch, seq, hidden, dtype=dtype)
            out = lm(inputs_embeds=x, use_cache=False).last_hidden_state
            logits = model.lm_head(out)
            labels = torch.zeros(batch * seq, dtype=torch.long)
            torch.nn.functional.cross_entropy(logits.float().view(batch * seq, -1), labels)
            vision = vision_model(model)
            if any(p.requires_grad for p in vision.parameters()):
                acts.notes.append(_vision_forward(vision, config, cfg, batch, dtype))
        for h in handles:
            h.remove()
        acts.saved = counter.total
        acts.logits_grad = 2 * batch * seq * logits.shape[-1] * 4
    acts.notes = [n for n in acts.notes if n]
    return acts


def _vision_forward(vision: nn.Module, config, cfg: RunConfig, batch: int, dtype: torch.dtype) -> str:
    """Run a trainable vision tower on one image per sequence; returns a note (in words) when it cannot."""
    v = config.vision_config
    if not hasattr(v, "image_size"):  # Qwen2-VL / Qwen2.5-VL: model.visual takes (patches, grid_thw)
        return vision_not_estimated("it lays its patches out from the image grid at run time (Qwen-VL)")
    try:
        pixels = torch.zeros(batch, 3, v.image_size, v.image_size, dtype=dtype)
        vision(pixels)
    except Exception:  # noqa: BLE001 -- a forward that reads values, not only shapes
        return vision_not_estimated("its forward depends on tensor values, not only on shapes")
    return ""


def vision_not_estimated(why: str) -> str:
    """The plan's note for a trainable vision tower whose activations the shape-only forward cannot measure."""
    return (
        f"vision-tower activations not estimated: {why}, which this shape-only plan cannot run; "
        "the activ column counts the language model only (add the tower's for a trainable tower)"
    )


def image_tokens(config) -> int:
    """Image tokens per image in the language model's sequence: LLaVA's patch count; the config's own
    ``image_seq_length`` (InternVL: per tile); Idefics3 / SmolVLM: patches / scale_factor² per tile; Mllama: 1
    (the image reaches the language model through cross-attention); Qwen2.5-VL: 1024 (a 896x896 image)."""
    from vlmtune.models.llava import num_image_tokens

    vision = getattr(config, "vision_config", None)
    if config.model_type == "mllama":
        return 1
    if hasattr(config, "vision_feature_select_strategy") and isinstance(vision.image_size, int):
        return num_image_tokens(config)
    if getattr(config, "image_seq_length", None):
        return int(config.image_seq_length)
    if getattr(config, "scale_factor", None):
        return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
    return 1024


# ---------------------------------------------------------------- the table
@dataclass
class Row:
    strategy: str
    params: int
    grads: int
    optimizer: int
    activations: int
    cpu: int = 0  # offloaded bytes per process
    note: str = ""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations


def optimizer_bytes(cfg: RunConfig, c: Counts) -> int:
    """AdamW: 2 states per trainable value in the parameter dtype; paged_adamw: fp32 states;
    paged_adamw_8bit: 1 byte each; SGD: 1 momentum buffer."""
    per_value = {
        "adamw": 2 * c.element_size,
        "sgd": c.element_size,
        "paged_adamw": 8,
        "paged_adamw_8bit": 2,
    }[cfg.train.optimizer]
    return c.trainable_numel * per_value


def qlora_refusal(cfg: RunConfig) -> str | None:
    """Why QLoRA does not apply to this recipe (``None``: it does)."""
    method = cfg.adapters.language.method
    if method == "dora":
        return "DoRA on 4-bit weights is refused (LoRA only)"
    if method not in ("lora",):
        return f"language tower method '{method}' (QLoRA keeps the language model frozen in 4-bit)"
    return None


def rows(cfg: RunConfig, c: Counts, acts: Activations, gpus: int) -> list[Row]:
    """The table of the module docstring, bytes per GPU."""
    act = acts.total(cfg.model.gradient_checkpointing)
    params, grads, optim, unit = c.frozen + c.trainable, c.trainable, optimizer_bytes(cfg, c), c.largest_unit
    ddp_grads = grads * (2 if gpus > 1 else 1)  # + the flat all-reduce buffer
    out = [Row("DDP", params, ddp_grads, optim, act)]
    shard = (params + grads + optim) // gpus
    out.append(
        Row("FSDP2", params // gpus + 2 * unit, grads // gpus + c.largest_unit_trainable, optim // gpus, act)
    )
    out.append(Row("FSDP2+offload", 2 * unit, c.largest_unit_trainable, 0, act, cpu=shard))
    why = qlora_refusal(cfg)
    if why is None:
        quantized = params - c.quantizable_bytes + int(c.quantizable_numel * NF4_BYTES)
        out.append(Row("QLoRA", quantized, ddp_grads, optim, act, note="4-bit language model"))
    else:
        out.append(Row("QLoRA", 0, 0, 0, 0, note=f"n/a: {why}"))
    return out


@dataclass
class Plan:
    recipe: str
    model: str
    gpus: int
    gpu_mem: int
    batch: int
    seq: int
    image_tokens: int
    checkpointing: bool
    counts: Counts
    acts: Activations
    table: list[Row]

    def fits(self, row: Row) -> bool:
        return not row.note.startswith("n/a") and row.total <= HEADROOM * self.gpu_mem


def make_plan(cfg: RunConfig, gpus: int, gpu_mem: int) -> Plan:
    if cfg.model.pipeline != "llava":
        raise ConfigError(
            f"model.pipeline={cfg.model.pipeline} is not supported; it plans image-text-to-text "
            "models (llava recipes: LLaVA and Qwen2.5-VL configs)"
        )
    config = load_model_config(cfg.model.name_or_path)
    from vlmtune.models.families import QFORMER_TYPES

    if (
        config.model_type in QFORMER_TYPES
    ):  # built by another class, with a qformer tower instead of a projector
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path} is a {config.model_type} (Q-Former) model; plan covers "
            "the llava-pipeline families (train it with the blip2 / instructblip recipes)"
        )
    dtype = plan_dtype(cfg)
    with torch.device("meta"):
        counts = count(with_adapters(config, cfg, dtype))
    n_img = image_tokens(config)
    seq = max(cfg.data.max_length, n_img + 1)
    batch = -(-cfg.train.batch_size // gpus)  # each process takes its slice of every micro-batch
    acts = activation_bytes(config, cfg, dtype, batch, seq)
    table = rows(cfg, counts, acts, gpus)
    return Plan(
        cfg.recipe,
        cfg.model.name_or_path,
        gpus,
        gpu_mem,
        batch,
        seq,
        n_img,
        cfg.model.gradient_checkpointing,
        counts,
        acts,
        table,
    )


def gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def format_plan(plan: Plan) -> str:
    c = plan.counts
    head = [
        f"plan for {plan.recipe} on {plan.model}: {c.total_numel / 1e9:.2f}B parameters, "
        f"{c.trainable_numel:,} trainable ({100 * c.trainable_numel / max(c.total_numel, 1):.2f}%), "
        f"{c.element_size}-byte weights",
        f"micro-batch per GPU {plan.batch} x {plan.seq} tokens ({plan.image_tokens} image tokens per image), "
        f"gradient checkpointing {'on' if plan.checkpointing else 'off'}; per GPU, {plan.gpus} GPU(s) of "
        f"{gib(plan.gpu_mem)} GiB (fits: total <= {int(HEADROOM * 100)}%)",
        "",
        f"{'strategy':<15}{'params':>9}{'grads':>9}{'optim':>9}{'activ':>9}{'total GiB':>11}  fits",
    ]
    for row in plan.table:
        if row.note.startswith("n/a"):
            head.append(f"{row.strategy:<15}{'':>47}  {row.note}")
            continue
        extra = f" (+{gib(row.cpu)} GiB CPU RAM per process)" if row.cpu else ""
        fits = "yes" if plan.fits(row) else "no"
        head.append(
            f"{row.strategy:<15}{gib(row.params):>9}{gib(row.grads):>9}{gib(row.optimizer):>9}"
            f"{gib(row.activations):>9}{gib(row.total):>11}  {fits}{extra}"
        )
    head += [f"note: {n}" for n in plan.acts.notes]
    return "\n".join(head)


def main(args: argparse.Namespace) -> int:
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {args.gpus}")
    gpu_mem = parse_memory(args.gpu_mem)
    cfg = load_config(args.recipe, args.overrides)
    plan = make_plan(cfg, args.gpus, gpu_mem)
    print(format_plan(plan))
    return 0
