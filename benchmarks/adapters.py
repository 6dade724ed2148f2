"""Forward+backward step time and peak memory of LoRA/DoRA layers: vlmtune vs peft vs frozen base.

Two shapes, each with every variant in one process on the same inputs and the same (shared,
frozen) base weights:

* ``linear``: one adapted ``nn.Linear`` (hidden -> hidden, a 7B LLaMA ``q_proj``);
* ``stack``:  ``--layers`` LLaMA decoder layers (transformers ``LlamaModel``), adapters on
  q,k,v,o,gate,up,down (the LLaVA recipe's targets).

Variants: ``base`` (frozen, no adapter), ``vlmtune-lora``, ``peft-lora``, ``vlmtune-dora``,
``peft-dora``, ``vlmtune-dora-merged`` (after ``merge()``, wrappers kept), for r in ``--ranks``
and adapter dropout in ``--dropouts``; alpha = 2r. The input requires grad, as every layer but
the first does in a real network, so the frozen base also runs its backward pass.  Adapters are
in the base dtype for both libraries (peft: ``autocast_adapter_dtype=False``); add
``--peft-fp32-adapters`` to also time peft's default, which keeps adapters in fp32 for a bf16 base.

Defaults: on CUDA bf16 at the 7B layer shape (hidden 4096, MLP 11008, 2 layers, 4096 tokens);
on CPU (or with ``--small``) fp32, the linear layer at hidden 2048 with 1024 tokens and a stack of
2 layers at hidden 1024 / MLP 2752 with 512 tokens (about 2 minutes of CPU time on 2 cores).  Fewer tokens than ~4r make any exact DoRA
slow relative to LoRA: the norm costs one (r, in) x (in, out) GEMM per step, i.e. r/(2N) of the
frozen layer's forward+backward.  Peak memory: see ``benchmarks/memory.py``.

Prints one JSON line per case, then a markdown table of ratios (medians of per-round ratios).

    python benchmarks/adapters.py                 # auto: CUDA 7B shapes, else CPU --small
    python benchmarks/adapters.py --small --repeats 7 --ranks 16 128 --dropouts 0 0.05
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable

import torch
from harness import clock, device_description, interleaved, median, paired_ratio
from memory import peak_step_memory
from torch import nn

from vlmtune.adapters import AdapterSpec, DoraLinear, attach

STACK_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Acceptance thresholds of issue #9: (numerator, denominator, what, max ratio, dropout or None=any).
CHECKS = [
    ("vlmtune-dora", "peft-dora", "time", 0.8, 0.05),
    ("vlmtune-dora", "peft-dora", "time", 1.0, 0.0),
    ("vlmtune-dora", "peft-dora", "mem", 0.9, None),
    ("vlmtune-dora", "vlmtune-lora", "time", 1.15, None),
    ("vlmtune-lora", "peft-lora", "time", 1.05, None),
]


class OneLinear(nn.Module):
    """A single ``proj`` layer, so both libraries can target it by name."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d_in, d_out, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x)


def build_stack(hidden: int, mlp: int, layers: int, heads: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=32,
        max_position_embeddings=8192,
        attn_implementation="sdpa",
    )
    return LlamaModel(cfg)


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(inputs_embeds=x, use_cache=False) if x.dim() == 3 else model(x)
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


def shared_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are the original's (frozen base weights shared)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def vlmtune_variant(model: nn.Module, method: str, r: int, dropout: float, targets: list[str]) -> nn.Module:
    spec = AdapterSpec(method=method, r=r, alpha=2 * r, dropout=dropout, targets=targets)
    attach(model, {"language": ["layers"]}, {"language": spec})
    return model


def peft_variant(
    model: nn.Module, dora: bool, r: int, dropout: float, targets: list[str], fp32_adapters: bool
) -> nn.Module:
    import peft

    cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=targets, use_dora=dora)
    return peft.get_peft_model(model, cfg, autocast_adapter_dtype=fp32_adapters)


def build_variants(
    base: nn.Module, r: int, dropout: float, targets: list[str], peft_fp32: bool
) -> dict[str, nn.Module]:
    base.requires_grad_(False)
    variants = {
        "base": base,
        "vlmtune-lora": vlmtune_variant(shared_copy(base), "lora", r, dropout, targets),
        "peft-lora": peft_variant(shared_copy(base), False, r, dropout, targets, False),
        "vlmtune-dora": vlmtune_variant(shared_copy(base), "dora", r, dropout, targets),
        "peft-dora": peft_variant(shared_copy(base), True, r, dropout, targets, False),
    }
    merged = vlmtune_variant(copy.deepcopy(base), "dora", r, dropout, targets)  # merge writes W0
    for layer in merged.modules():
        if isinstance(layer, DoraLinear):
            with torch.no_grad():
                layer.lora_B.weight.normal_(std=0.01)
            layer.merge()
    variants["vlmtune-dora-merged"] = merged
    if peft_fp32:
        variants["peft-lora-fp32a"] = peft_variant(shared_copy(base), False, r, dropout, targets, True)
        variants["peft-dora-fp32a"] = peft_variant(shared_copy(base), True, r, dropout, targets, True)
    for model in variants.values():
        model.train()
    return variants


def make_step(model: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        forward(model, x).backward(grad_out)

    return step


def run_case(
    shape: str,
    base: nn.Module,
    x: torch.Tensor,
    targets: list[str],
    r: int,
    dropout: float,
    args: argparse.Namespace,
    info: dict,
) -> dict:
    device = x.device
    variants = build_variants(base, r, dropout, targets, args.peft_fp32_adapters)
    with torch.no_grad():
        grad_out = torch.randn_like(forward(base, x))
    steps = {name: make_step(m, x, grad_out) for name, m in variants.items()}
    times = interleaved(steps, args.repeats, args.warmup, device)
    mem = {name: peak_step_memory(step, device) for name, step in steps.items()}
    for name in steps:
        row = {
            **info,
            "shape": shape,
            "variant": name,
            "r": r,
            "dropout": dropout,
            "step_ms": round(1e3 * median(times[name]), 3),
            "step_ms_all": [round(1e3 * t, 3) for t in times[name]],
            "peak_mb": round(mem[name] / 2**20, 2),
        }
        print(json.dumps(row), flush=True)
    ratios = {"shape": shape, "r": r, "dropout": dropout}
    for a, b in [
        ("vlmtune-dora", "peft-dora"),
        ("vlmtune-dora", "vlmtune-lora"),
        ("vlmtune-lora", "peft-lora"),
        ("vlmtune-lora", "base"),
        ("peft-dora", "base"),
        ("vlmtune-dora", "base"),
        ("vlmtune-dora-merged", "base"),
    ]:
        ratios[f"time {a}/{b}"] = paired_ratio(times, a, b)
        ratios[f"mem {a}/{b}"] = mem[a] / max(mem[b], 1)
    del variants, steps
    return ratios


def checks(rows: list[dict]) -> list[str]:
    failures = []
    for row in rows:
        for a, b, what, limit, dropout in CHECKS:
            if dropout is not None and row["dropout"] != dropout:
                continue
            value = row[f"{what} {a}/{b}"]
            if value > limit:
                failures.append(
                    f"{row['shape']} r={row['r']} dropout={row['dropout']}: {what} {a}/{b} = {value:.3f} > {limit}"
                )
    return failures


def table(rows: list[dict]) -> str:
    cols = [
        ("time vlmtune-dora/peft-dora", "DoRA v/p time"),
        ("mem vlmtune-dora/peft-dora", "DoRA v/p mem"),
        ("time vlmtune-dora/vlmtune-lora", "DoRA/LoRA v time"),
        ("mem vlmtune-dora/vlmtune-lora", "DoRA/LoRA v mem"),
        ("time vlmtune-lora/peft-lora", "LoRA v/p time"),
        ("mem vlmtune-lora/peft-lora", "LoRA v/p mem"),
        ("time vlmtune-lora/base", "LoRA v/base time"),
        ("time vlmtune-dora/base", "DoRA v/base time"),
        ("time peft-dora/base", "DoRA p/base time"),
        ("time vlmtune-dora-merged/base", "merged/base time"),
    ]
    lines = [
        "| shape | r | dropout | " + " | ".join(c[1] for c in cols) + " |",
        "|---" * (3 + len(cols)) + "|",
    ]
    for row in rows:
        vals = " | ".join(f"{row[c[0]]:.3f}" for c in cols)
        lines.append(f"| {row['shape']} | {row['r']} | {row['dropout']} | {vals} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="CPU shapes (default when CUDA is unavailable)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--shapes", nargs="+", default=["linear", "stack"], choices=["linear", "stack"])
    p.add_argument("--ranks", nargs="+", type=int, default=[16, 128])
    p.add_argument("--dropouts", nargs="+", type=float, default=[0.0, 0.05])
    p.add_argument("--linear-hidden", type=int, default=None)
    p.add_argument("--linear-tokens", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None, help="stack hidden size")
    p.add_argument("--mlp", type=int, default=None, help="stack MLP size")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="stack sequence length (batch 1)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (1 on CPU, 3 on CUDA)")
    p.add_argument("--peft-fp32-adapters", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU, see README)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    args.device = "cuda" if cuda else "cpu"
    small = args.small or not cuda
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    defaults = (
        {
            "dtype": "float32",
            "linear_hidden": 2048,
            "linear_tokens": 1024,
            "hidden": 1024,
            "mlp": 2752,
            "tokens": 512,
            "repeats": 5,
        }
        if small
        else {
            "dtype": "bfloat16",
            "linear_tokens": 4096,
            "hidden": 4096,
            "mlp": 11008,
            "tokens": 4096,
            "repeats": 20,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.heads is None:
        args.heads = max(1, args.hidden // 128)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    info = {
        "bench": "adapters",
        "device": device_description(device),
        "dtype": args.dtype,
        "clock": clock(device),
    }
    print(json.dumps({**info, "command": " ".join(["python", *sys.argv])}), flush=True)
    rows = []
    for shape in args.shapes:
        torch.manual_seed(args.seed)
        if shape == "linear":
            h = args.linear_hidden
            base, x_shape = OneLinear(h, h), (args.linear_tokens, h)
            targets, dims = ["0"], {"hidden": h, "tokens": args.linear_tokens}
        else:
            base = build_stack(args.hidden, args.mlp, args.layers, args.heads)
            x_shape, targets = (1, args.tokens, args.hidden), STACK_TARGETS
            dims = {"hidden": args.hidden, "mlp": args.mlp, "layers": args.layers, "tokens": args.tokens}
        base = base.to(device=device, dtype=dtype)
        x = torch.randn(x_shape, device=device, dtype=dtype, requires_grad=True)
        for r in args.ranks:
            for dropout in args.dropouts:
                rows.append(run_case(shape, base, x, targets, r, dropout, args, {**info, **dims}))
    print()
    print(table(rows))
    failures = checks(rows)
    print()
    print("acceptance (issue #9): " + ("all pass" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
