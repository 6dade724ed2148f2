"""The user-error hierarchy: every message is one line for the user (file/line/key and what to do).

The CLI prints these without a traceback and exits with code 2 (``cli.user_error_types``).
"""


class ConfigError(ValueError):
    """A problem with a recipe or an override; the message is one line for the user."""


class AdapterError(ValueError):
    """A user-facing problem with an adapter spec or checkpoint (one line, names the key/module)."""


class DataError(ValueError):
    """A problem with a data file, record or image; the message is one line for the user."""


class EvalError(ConfigError):
    """Bad benchmark name, predictions file or reference data; the message names the file/key and the fix."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, AdapterError, DataError, FileNotFoundError)
