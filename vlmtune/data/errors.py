"""Data errors and the ``data.on_error`` policy.

``on_error="raise"`` (default): the first bad record raises :class:`DataError` naming file and line.
``on_error="skip"``: bad records are counted in an :class:`ErrorLog` (count, the first reasons and where
every skipped record was: ``file:line``), reported at the end of loading and written to the run folder as
``data_errors.json``; nothing is dropped silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.core.errors import DataError

__all__ = ["ON_ERROR", "DataError", "ErrorLog", "handle"]

ON_ERROR = ("raise", "skip")


class ErrorLog:
    """Counts skipped records, keeps the first ``max_reasons`` reasons and where each skipped one was."""

    def __init__(self, max_reasons: int = 10):
        self.max_reasons = max_reasons
        self.count = 0
        self.reasons: list[str] = []
        self.skipped: list[str] = []  # ``file:line`` (or ``file:item i`` / ``file:row i``) of every skip

    def add(self, reason: str | BaseException, where: str = "") -> None:
        self.count += 1
        self.skipped.append(where or str(reason).split(": ", 1)[0])
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(str(reason))

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return True  # an empty log is still a log (so `errors or ErrorLog()` keeps it)

    def summary(self) -> str:
        """One line: ``skipped N bad record(s); first: <reason>``, or ``no bad records``."""
        if not self.count:
            return "no bad records"
        return f"skipped {self.count} bad record(s); first: {self.reasons[0]}"

    def to_dict(self) -> dict:
        return {"skipped": self.count, "first_reasons": list(self.reasons), "skipped_at": list(self.skipped)}

    def write(self, path: str | Path) -> Path:
        """Write ``{"skipped": N, "first_reasons": [...], "skipped_at": [every file:line]}`` atomically."""
        from vlmtune.core.io import atomic_write_text

        return atomic_write_text(json.dumps(self.to_dict(), indent=2) + "\n", path)


def handle(error: DataError, on_error: str, errors: ErrorLog | None, where: str = "") -> None:
    """Apply the policy to one bad record (at ``where``): raise it, or count it in ``errors``."""
    if on_error not in ON_ERROR:
        raise DataError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")
    if on_error == "raise" or errors is None:
        raise error
    errors.add(error, where)
