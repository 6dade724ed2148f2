"""What to attach to one tower: method, rank, scaling and target modules."""

from __future__ import annotations

from dataclasses import dataclass, field

# Short names used in recipes -> module names in the architectures vlmtune supports
# (Llama/Vicuna/Mistral, CLIP, BART, timm ViT). A target that is not an alias is used as is.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj", "out_proj", "dense"),
    "qkv": ("qkv", "in_proj"),
    "proj": ("proj",),
    "gate": ("gate_proj",),
    "up": ("up_proj", "fc1"),
    "down": ("down_proj", "fc2"),
    "fc1": ("fc1",),
    "fc2": ("fc2",),
}

# ``full`` trains every parameter of the tower; ``frozen`` trains none (the default).
WHOLE_TOWER_METHODS = ("full", "frozen")


@dataclass
class AdapterSpec:
    """Adapter settings for one tower (``language``, ``vision`` or ``projector``).

    ``targets`` are short aliases (``q,k,v,o,gate,up,down``), module names (``q_proj``) or
    regular expressions over the module path inside the tower (``re:layers\\.[0-3]\\..*q_proj``).
    """

    method: str = "frozen"
    r: int = 8
    alpha: float | None = None  # None (unset): 16 for the LoRA family; VeRA/DVoRA have no alpha
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)
    rslora: bool = False
    detach_norm: bool = True
    magnitude_only: list[str] = field(default_factory=list)
    lora_plus_ratio: float | None = None  # None (unset): train.lora_plus_ratio
    lr: float | None = None  # None (unset): the tower's train.*lr
    trainable_bias: bool = False
    trainable_norms: bool = False
    options: dict = field(default_factory=dict)

    def target_names(self) -> list[str]:
        return expand_targets(self.targets)


def expand_targets(targets: list[str]) -> list[str]:
    names: list[str] = []
    for t in targets:
        names.extend(TARGET_ALIASES.get(t, (t,)))
    return names


DEFAULT_LORA_ALPHA = 16.0


def lora_alpha(spec: AdapterSpec) -> float:
    """``spec.alpha``, or 16 when the recipe left it unset."""
    return DEFAULT_LORA_ALPHA if spec.alpha is None else float(spec.alpha)
