"""Loading a checkpoint strictly: by the class its config names, with every tensor accounted for.

transformers initialises missing tensors at random and drops unexpected ones with a warning, so a
LLaVA-NeXT folder declared as ``llava`` or a config that does not match its weights would train as a
different, partly random model. :func:`load_strict` turns any unexpected, missing or mis-sized tensor
into one line naming the folder, the class and ``model_type``, and the first keys.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.core.config import ConfigError


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_model_type(path: str, name: str, trust_remote_code: bool = False) -> str:
    """``model_type`` of a folder or cached hub id; one line when there is no such checkpoint."""
    from transformers import AutoConfig

    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).suffix
    if looks_local and not Path(path).expanduser().exists():
        raise ConfigError(f"model.name_or_path='{name}': no such folder")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError) as e:
        if (
            not Path(path).expanduser().exists()
        ):  # `org/name`: a hub id, or a relative folder that is not there
            raise ConfigError(
                f"model.name_or_path='{name}': no such folder, and no hub checkpoint of that name could be read "
                f"({first_line(e)})"
            ) from None
        raise ConfigError(
            f"model.name_or_path='{name}' has no readable config.json: {first_line(e)}"
        ) from None


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_strict(model_class, path: str, name: str, supported: list[str], **kwargs):
    """``model_class.from_pretrained(path, **kwargs)``; a ConfigError unless every tensor loaded."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report below replaces transformers' multi-line one
    try:
        # mis-sized tensors are reported in ``info`` (and refused below) instead of a RuntimeError that
        # points at the silenced report
        model, info = model_class.from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model.name_or_path='{name}' could not be loaded: {first_line(e)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = [m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys", [])]
    problems = [
        f"{len(keys)} {kind} tensor(s) ({_first(sorted(str(k) for k in keys))})"
        for kind, keys in (
            ("unexpected", info.get("unexpected_keys", [])),
            ("missing", info.get("missing_keys", [])),
            ("mis-sized", mismatched),
        )
        if keys
    ]
    if problems:
        raise ConfigError(
            f"model.name_or_path='{name}': its weights do not load cleanly into {type(model).__name__} "
            f"(config model_type '{model.config.model_type}'): {'; '.join(problems)}. Is config.json's "
            f"model_type right? Supported: {', '.join(supported)}"
        )
    return model
