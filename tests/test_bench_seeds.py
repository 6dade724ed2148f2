"""``vlmtune bench vit|llava|vlbart`` with seeds: sweep order, resume, tables with hand-checked
intervals, one-line errors, and the ViT bench reproducing its own numbers (tiny budgets)."""

from __future__ import annotations

import json

import pytest

from vlmtune import sweep
from vlmtune.cli import main as cli_main

# seed -> value; dora = lora + (1, 2, 3): paired mean 2, s = 1, half = t(0.975, 2) / sqrt(3) = 2.4842
LORA = {0: 10.0, 1: 12.0, 2: 14.0}
DORA = {s: v + 1 + s for s, v in LORA.items()}


def fake_runner(calls: list):
    def run(cfg, run_dir):
        method, r, seed = cfg.adapters.language.method, cfg.adapters.language.r, cfg.train.seed
        calls.append((method, r, seed, run_dir.name))
        value = (LORA if method == "lora" else DORA)[seed] + r
        return {"metric": "accuracy", "value": value, "seconds": 0.0}

    return run


def test_sweep_runs_seed_major_writes_every_row_and_resumes(tmp_path) -> None:
    calls: list = []
    rows, info = sweep.run_sweep(
        "llava",
        ["lora", "dora"],
        [2, 8],
        [0, 1],
        [],
        tmp_path,
        say=lambda *_: None,
        runner=fake_runner(calls),
    )
    assert [c[:3] for c in calls[:4]] == [("lora", 2, 0), ("dora", 2, 0), ("lora", 8, 0), ("dora", 8, 0)]
    assert calls[0][3] == "lora-r2-s0" and len(rows) == 8
    saved = json.loads((tmp_path / "bench_llava.json").read_text())
    assert saved["rows"] == rows and saved["setting"]["recipe"] == "llava-dora"
    assert "train.max_steps=50" in saved["setting"]["overrides"]
    # a rerun with the same setting resumes: only the new seed runs
    more: list = []
    rows2, _ = sweep.run_sweep(
        "llava",
        ["lora", "dora"],
        [2, 8],
        [0, 1, 2],
        [],
        tmp_path,
        say=lambda *_: None,
        runner=fake_runner(more),
    )
    assert {c[2] for c in more} == {2} and len(more) == 4 and rows2[:8] == rows
    # another setting in the same folder is refused, nothing overwritten
    with pytest.raises(sweep.ConfigError, match="another setting"):
        sweep.run_sweep("llava", ["lora"], [2], [0], ["train.lr=1e-4"], tmp_path, runner=fake_runner([]))
    assert json.loads((tmp_path / "bench_llava.json").read_text())["rows"] == rows2


def test_bench_llava_table_json_plot(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sweep, "one_run", fake_runner([]))
    argv = ["bench", "llava", "--methods", "lora", "dora", "--ranks", "2", "8", "--seeds", "3"]
    assert cli_main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # dora - lora at r=2: +2.00 [2 -+ 2.4842]; dora r=2 (13, 16, 19): 16 -+ t(0.975, 2) * 3 / sqrt(3)
    assert "| dora | 2 | 3 | 16.00 [8.55, 23.45] | +2.00 [-0.48, +4.48] | within noise |" in out
    assert "| lora | 8 | 3 | 20.00 [15.03, 24.97] | (reference) |  |" in out
    saved = json.loads((tmp_path / "bench_llava.json").read_text())
    assert len(saved["rows"]) == 12 and len(saved["summary"]) == 4
    dora2 = next(s for s in saved["summary"] if s["method"] == "dora" and s["r"] == 2)
    assert dora2["diff"]["mean"] == pytest.approx(2.0) and dora2["diff"]["high"] == pytest.approx(
        4.4842, abs=1e-4
    )
    assert (tmp_path / "bench_llava.md").read_text().count("| dora |") == 2
    png = (tmp_path / "bench_llava.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_llava_says_the_users_overrides_in_its_header_and_plot(tmp_path, monkeypatch, capsys) -> None:
    """The suite's description is of its defaults (50 steps, 200 questions): overrides are said next to it."""
    monkeypatch.setattr(sweep, "one_run", fake_runner([]))
    titles = []
    monkeypatch.setattr(
        "vlmtune.analysis.compare.plot_vs_rank",
        lambda summary, path, title, metric: titles.append(title) or path,
    )
    argv = ["bench", "llava", "train.max_steps=3", "--methods", "lora", "--ranks", "2", "--seeds", "1"]
    assert cli_main([*argv, "--out", str(tmp_path)]) == 0
    assert "your settings on top of it: train.max_steps=3" in capsys.readouterr().out
    assert titles == [sweep.SUITES["llava"].title + "\nwith train.max_steps=3"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "llava", "--methods", "lora", "nope"], "--methods: unknown nope"),
        (["bench", "vlbart", "--ranks", "0"], "--ranks must be positive"),
        (["bench", "llava", "train.seed=3"], "train.seed is set by --seeds"),
        (["bench", "llava", "adapters.language.alpha=4"], "adapters.language.alpha is set by the sweep"),
        (["bench", "vit", "--seeds", "0"], "--seeds must be >= 1"),
        (["bench", "vit", "--methods", "lora", "train.epochs=1"], "put key=value overrides before"),
    ],
)
def test_bench_bad_arguments_are_one_line_exit_2(argv, message, tmp_path, capsys) -> None:
    assert cli_main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_bench_vit_seeds_reproduce_run_to_run(tmp_path, tmp_path_factory, monkeypatch, capsys) -> None:
    import vlmtune.presets.digits_vit as vit

    # the session's dataset cache (as in test_vit.py); the backbone is the random-init digits-tiny
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setattr(vit, "pretrained_digits_tiny", lambda quiet=True: "digits-tiny-scratch")
    tiny = [
        "model.name_or_path=digits-tiny-scratch",
        "train.epochs=1",
        "data.max_train_samples=64",
        "data.max_eval_samples=64",
    ]
    results = []
    for i in range(2):
        js = tmp_path / f"vit{i}.json"
        argv = ["bench", "vit", *tiny, "--methods", "lora,dora", "--seeds", "2", "--json", str(js)]
        assert cli_main(argv) == 0
        results.append(json.loads(js.read_text()))
    out = capsys.readouterr().out
    assert "- lora (paired) [95% t-CI]" in out and "| dora | 2 |" in out
    first, second = results
    assert [(r["method"], r["seed"]) for r in first["rows"]] == [
        ("lora", 0),
        ("dora", 0),
        ("lora", 1),
        ("dora", 1),
    ]
    assert [r["accuracy"] for r in first["rows"]] == [r["accuracy"] for r in second["rows"]]
    assert first["summary"] == second["summary"]
    dora = next(s for s in first["summary"] if s["method"] == "dora")
    acc = {(r["method"], r["seed"]): r["accuracy"] for r in first["rows"]}
    diffs = [acc["dora", s] - acc["lora", s] for s in (0, 1)]
    assert dora["diff"]["mean"] == pytest.approx(sum(diffs) / 2) and dora["diff"]["n"] == 2


@pytest.mark.slow
def test_real_llava_sweep_is_reproducible(model_dir, tmp_path, tmp_path_factory, monkeypatch) -> None:
    """Two 2-step sweeps on the random tiny LLaVA: same rows (loss and score) run to run."""
    monkeypatch.setenv("VLMTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    tiny = [
        f"model.name_or_path={model_dir}",
        "train.max_steps=2",
        "train.batch_size=4",
        "data.shapes_size=16",
        "data.max_eval_samples=4",
        "train.save_every=0",
    ]
    rows = []
    for name in ("a", "b"):
        got, _ = sweep.run_sweep(
            "llava", ["lora", "dora"], [2], [0, 1], tiny, tmp_path / name, say=lambda *_: None
        )
        rows.append([{k: v for k, v in r.items() if k != "seconds"} for r in got])
    assert rows[0] == rows[1] and len(rows[0]) == 4
    assert all(r["steps"] == 2 and r["eval_count"] == 4 and r["metric"] == "accuracy" for r in rows[0])
    losses = {(r["method"], r["seed"]): r["final_loss"] for r in rows[0]}
    assert losses["lora", 0] != losses["lora", 1]  # the seed changes init and data order
