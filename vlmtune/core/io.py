"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

A reader (or a resumed run) sees either the old file or the complete new one, never a torn write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    return atomic_write(path, write)


def atomic_write_json(obj, path: str | Path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def atomic_write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None
) -> Path:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def atomic_torch_save(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cache_dir(*parts: str) -> Path:
    """``$VLMTUNE_CACHE/<parts>`` (default ``~/.cache/vlmtune/<parts>``): generated datasets, built
    presets, feature caches."""
    return Path(os.environ.get("VLMTUNE_CACHE") or "~/.cache/vlmtune").expanduser().joinpath(*parts)


def atomic_dir(final: Path, build: Callable[[Path], object], complete: str | None = None) -> Path:
    """``final``, written once: when it is not complete yet (``final/complete`` missing, or the folder
    itself when ``complete`` is None), ``build(tmp)`` fills a temporary sibling folder that is then
    renamed into place. Safe under concurrent callers: the loser discards its copy."""

    def done() -> bool:
        return (final / complete).is_file() if complete else final.is_dir()

    if done():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        os.rename(tmp, final)
    except OSError:
        if not done():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def replace_dir(final: Path, build: Callable[[Path], object]) -> Path:
    """``final`` replaced whole or not at all: ``build(tmp)`` fills a temporary sibling folder
    (``.{final.name}.*``) that then takes ``final``'s place; an older ``final`` is removed only then, so an
    error (a full disk) leaves it as it was."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_text(path: str | Path, error: type[Exception] | None = None) -> str:
    """A user's file as UTF-8 text (a leading BOM tolerated). Other bytes are one line naming the file and
    the offset, raised as ``error`` (default :class:`~vlmtune.core.errors.DataError`), never a traceback."""
    from vlmtune.core.errors import DataError

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise (error or DataError)(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it the right file? save it as UTF-8"
        ) from None


def read_json_object(path: str | Path, error: type[Exception] | None = None) -> dict:
    """A JSON object from a file vlmtune wrote (a run folder's records): a truncated, edited or non-object
    file is one line naming it and the line, raised as ``error`` (default
    :class:`~vlmtune.core.errors.ConfigError`), never a traceback."""
    from vlmtune.core.errors import ConfigError

    error = error or ConfigError
    try:
        value = json.loads(read_text(path, error))
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); truncated or edited? restore it") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}; restore the file vlmtune wrote")
    return value


def read_safetensors(path: str | Path, error: type[Exception] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file; a truncated or corrupt file is one line naming it, raised as
    ``error`` (default :class:`~vlmtune.core.errors.AdapterError`), never safetensors' traceback."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlmtune.core.errors import AdapterError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise (error or AdapterError)(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}): truncated or corrupt; "
            "copy it again or retrain"
        ) from None


def safetensors_shapes(path: str | Path, error: type[Exception] | None = None) -> dict[str, list[int]]:
    """``{name: shape}`` from a ``.safetensors`` header without reading the tensors (one line if corrupt)."""
    from safetensors import SafetensorError, safe_open

    from vlmtune.core.errors import AdapterError

    try:
        with safe_open(str(path), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise (error or AdapterError)(
            f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}): truncated or corrupt; "
            "copy it again or retrain"
        ) from None


LOCK_NAME = ".vlmtune.lock"


@contextmanager
def claim(folder: str | Path):
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/.vlmtune.lock``, which holds the pid) for
    the block, so that two runs never write one run folder. A folder another process holds is a one-line
    ConfigError naming its pid. The lock file is removed when the block ends."""
    import fcntl

    from vlmtune.core.errors import ConfigError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip()
        handle.close()
        raise ConfigError(
            f"{folder} is in use by another vlmtune run{f' (pid {pid})' if pid else ''}; wait for it to finish "
            "or give another --output-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield folder
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
