"""Core: the error hierarchy, atomic file io and the run-config dataclasses; imports nothing of vlmtune."""
