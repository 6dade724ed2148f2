"""VPT: visual prompt tuning (Jia et al., ECCV 2022): the prompts, ViT layouts and registry entry."""

from vlmtune.adapters.vpt.layer import (
    VisualPrompts,
    ViTLayout,
    add_vpt,
    expand_prompts,
    insert_tokens,
    remove_tokens,
    vit_layout,
    vpt_init_bound,
)

__all__ = [
    "ViTLayout",
    "VisualPrompts",
    "add_vpt",
    "expand_prompts",
    "insert_tokens",
    "remove_tokens",
    "vit_layout",
    "vpt_init_bound",
]
