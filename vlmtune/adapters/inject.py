"""Former home of ``attach`` / ``merge`` / target resolution, kept so old imports keep working.

New code imports :mod:`vlmtune.adapters.attach`, :mod:`vlmtune.adapters.targets` and
:mod:`vlmtune.adapters.registry`.
"""

from vlmtune.adapters.attach import adapter_layers, attach, is_weight_adapter, merge
from vlmtune.adapters.registry import known_methods
from vlmtune.adapters.targets import replace_module, resolve_targets, set_trainable, tower_modules
from vlmtune.core.errors import AdapterError

__all__ = [
    "AdapterError",
    "adapter_layers",
    "attach",
    "is_weight_adapter",
    "known_methods",
    "merge",
    "replace_module",
    "resolve_targets",
    "set_trainable",
    "tower_modules",
]
