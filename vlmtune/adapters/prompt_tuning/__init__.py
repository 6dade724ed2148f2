"""Prompt tuning (Lester et al., EMNLP 2021): the soft prompt and its registry entry."""

from vlmtune.adapters.prompt_tuning.layer import SoftPrompt, find_decoder

__all__ = ["SoftPrompt", "find_decoder"]
