"""Trainable-parameter report in the papers' "# Params (%)" form.

Percentages are of the base model's parameters (adapter tensors excluded from the denominator),
as in the LoRA, DoRA and VeRA tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class ParamCount:
    name: str
    trainable: int
    total: int  # base parameters (adapter tensors not counted)
    adapter: int  # parameters added by adapters

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)


def adapter_param_ids(model: nn.Module) -> set[int]:
    """ids of parameters added by adapters: everything in a module flagged ``adapter_module``
    except its wrapped ``base_layer``."""
    ids: set[int] = set()
    for module in model.modules():
        if getattr(module, "adapter_module", False):
            ids.update(id(p) for n, p in module.named_parameters() if not n.startswith("base_layer."))
    return ids


def adapter_module_paths(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Paths of the outermost added modules (``adapter_module``: bottleneck adapters, soft prompts, VPT,
    PIN...) under ``prefixes``, where a tower method put them (``...self_attn.o_proj``, ``...soft_prompt``)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if (
            getattr(module, "adapter_module", False)
            and any(name == q or name.startswith(q + ".") for q in prefixes)
            and not any(name.startswith(f + ".") for f in found)
        ):
            found.append(name)
    return found


def _count(name: str, params: list[nn.Parameter], extra: set[int]) -> ParamCount:
    return ParamCount(
        name=name,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params if id(p) not in extra),
        adapter=sum(p.numel() for p in params if id(p) in extra),
    )


def param_report(model: nn.Module, towers: dict[str, list[str]]) -> list[ParamCount]:
    """One row per tower, then ``other`` (embeddings, heads) and ``total``."""
    extra = adapter_param_ids(model)
    seen: set[int] = set()
    rows = []
    for tower, prefixes in towers.items():
        params = []
        for name, p in model.named_parameters():
            if id(p) not in seen and any(name == q or name.startswith(q + ".") for q in prefixes):
                seen.add(id(p))
                params.append(p)
        rows.append(_count(tower, params, extra))
    rest = [p for p in model.parameters() if id(p) not in seen]
    rows.append(_count("other", rest, extra))
    rows.append(_count("total", list(model.parameters()), extra))
    return rows


def format_report(rows: list[ParamCount]) -> str:
    lines = [f"{'tower':<10} {'trainable':>14} {'base params':>14} {'% of base':>10}"]
    for r in rows:
        share = f"{r.percent:>9.4f}%" if r.total else f"{'-':>10}"  # a tower of new modules only (a seam)
        lines.append(f"{r.name:<10} {r.trainable:>14,} {r.total:>14,} {share}")
    return "\n".join(lines)


def placement_lines(towers: dict[str, list[str]], specs: dict, adapted: list[str]) -> list[str]:
    """One line per tower: its method and the adapted module paths under it counted by leaf name
    (``language   dora    k_proj x2, q_proj x2   (prefixes: ...)``)."""
    from collections import Counter

    lines = []
    for tower, prefixes in towers.items():
        spec = specs.get(tower)
        method = spec.method if spec is not None else "frozen"
        paths = [p for p in adapted if any(p == q or p.startswith(q + ".") for q in prefixes)]
        leaves = Counter(p.rsplit(".", 1)[-1] for p in paths)
        what = ", ".join(f"{leaf} x{n}" for leaf, n in sorted(leaves.items())) or "-"
        lines.append(f"  {tower:<10} {method:<7} {what}   (prefixes: {', '.join(prefixes)})")
    return lines
