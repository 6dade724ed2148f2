"""Interleaved timing, paired ratios and machine description shared by the benchmarks.

Each round runs one step of every variant in turn, so a burst of load from other processes hits
all variants alike; ratios are medians over rounds of per-round ratios (robust to a noisy machine).
On CUDA steps are timed by wall clock (after ``synchronize``); on CPU by this process's CPU time
(``time.process_time``), which other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> str:
    return "wall" if device.type == "cuda" else "process_cpu"


def time_step(step: Callable[[], None], device: torch.device) -> float:
    """Seconds of one ``step()``: wall time with CUDA work included, CPU time of this process on CPU."""
    now = time.perf_counter if device.type == "cuda" else time.process_time
    sync(device)
    start = now()
    step()
    sync(device)
    return now() - start


def interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per step for each variant: ``warmup`` untimed rounds, then ``repeats`` timed ones."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_step(step, device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(a) / time(b) measured in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {torch.get_num_threads()} threads"
