"""Evaluation errors: one line for the user (a :class:`~vlmtune.core.config.ConfigError`, so the CLI prints it)."""

from vlmtune.core.config import ConfigError


class EvalError(ConfigError):
    """Bad benchmark name, predictions file or reference data; the message names the file/key and the fix."""
