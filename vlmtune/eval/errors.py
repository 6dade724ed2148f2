"""Evaluation errors: :class:`~vlmtune.core.errors.EvalError` (a ``ConfigError``, so the CLI prints it)."""

from vlmtune.core.errors import EvalError

__all__ = ["EvalError"]
