"""benchmarks/trainer.py runs end to end (the ``tiny`` model, one round) and reports what issue 23 asks."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_trainer_benchmark_smoke(capsys, monkeypatch, tmp_path) -> None:
    pytest.importorskip("peft")
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # its sibling helpers (harness)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    spec = importlib.util.spec_from_file_location("benchmark_trainer", BENCH_DIR / "trainer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        argv = "--model tiny --samples 8 --batch-size 4 --rounds 1 --cache".split()
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"')]  # not HF's printed dict
    rows = {r["variant"]: r for r in rows if "variant" in r}
    assert set(rows) == {
        "vlmtune-packed-dora",
        "vlmtune-dora",
        "hf-peft-dora",
        "vlmtune-2ep-dora",
        "vlmtune-2ep-cached-dora",
    }
    assert all(r["model"] == "tiny" and r["wall_s"] > 0 and r["cpu_s"] > 0 for r in rows.values())
    cached = rows["vlmtune-2ep-cached-dora"]
    assert cached["cache_misses"] == cached["cache_hits"] > 0  # epoch 1 fills, epoch 2 reads
    assert len(cached["step_wall_s"]) == len(cached["step_cpu_s"]) == 4
    assert cached["loss"] == pytest.approx(rows["vlmtune-2ep-dora"]["loss"], abs=1e-5)
    assert "speed vlmtune-packed-dora / hf-peft-dora:" in out
    assert "epoch 2 / epoch 1 wall time, vlmtune-2ep-cached-dora:" in out
    assert "no cache takes a warm epoch below" in out
    assert "epoch 2 CPU time, cached / uncached (the same batches" in out
    # The work folder (~0.5 GB per run on `small`) is removed unless --keep-work.
    assert not list(tmp_path.glob("bench-trainer-*"))
