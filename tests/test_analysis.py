"""Weight decomposition analysis (DoRA eqs. 2-4) on synthetic weights and synthetic run folders."""

from __future__ import annotations

import argparse
import json
import types

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from vlmtune.adapters import AdapterSpec, adapter_layers, attach, save_adapter
from vlmtune.analysis import decomposition_change, finetuned_weights, fit_line
from vlmtune.analysis import runs as runs_mod
from vlmtune.analysis.command import main as analyze_main


def test_row_scaling_is_pure_magnitude_change() -> None:
    """Rows of nn.Linear.weight are the paper's columns: scaling rows leaves every direction intact."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 4)
    s = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    d_m, d_d = decomposition_change(w0, s[:, None] * w0)
    assert d_d == pytest.approx(0.0, abs=1e-7)
    assert d_m == pytest.approx(float(((s - 1).abs() * w0.norm(dim=1)).mean()), rel=1e-6)
    # scaling input columns instead changes directions
    _, d_d_cols = decomposition_change(w0, w0 * torch.tensor([1.0, 3.0, 1.0, 1.0]))
    assert d_d_cols > 1e-3


def test_rotation_is_pure_direction_change() -> None:
    w0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c, s = np.cos(0.3), np.sin(0.3)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32)
    d_m, d_d = decomposition_change(w0, w0 @ rot.T)
    assert d_m == pytest.approx(0.0, abs=1e-6)
    assert d_d == pytest.approx(1 - c, rel=1e-5)


def test_fit_line_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    y = -0.7 * x + rng.normal(scale=0.5, size=20)
    fit = fit_line(x.tolist(), y.tolist())
    slope, intercept = np.polyfit(x, y, 1)
    assert fit.slope == pytest.approx(slope) and fit.intercept == pytest.approx(intercept)
    assert fit.correlation == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert fit.n == 20 and fit.correlation < 0
    assert np.isnan(fit_line([1.0], [2.0]).correlation)
    assert np.isnan(fit_line([1.0, 1.0], [2.0, 3.0]).slope)


class Attn(nn.Module):
    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([Attn() for _ in range(3)])


TOWERS = {"language": ["layers"]}


def tuned(method: str, scale: float) -> Toy:
    model = Toy()
    if method == "full":
        attach(model, TOWERS, {"language": AdapterSpec(method="full")})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn_like(p))
        return model
    attach(model, TOWERS, {"language": AdapterSpec(method=method, r=2, alpha=4, targets=["q", "k", "v"])})
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.lora_B.weight.normal_(std=scale)
            if method == "dora":
                layer.lora_magnitude_vector.mul_(1 + scale * torch.rand_like(layer.lora_magnitude_vector))
    return model


def base_w0() -> dict[str, torch.Tensor]:
    return runs_mod.base_weights(Toy(), ("q", "v"))


def test_finetuned_weights_lora_dora_ft(tmp_path) -> None:
    w0 = base_w0()
    assert sorted(w0) == [f"layers.{i}.{n}" for i in range(3) for n in ("q_proj", "v_proj")]
    for method in ("lora", "dora", "full"):
        model = tuned(method, 0.3)
        save_adapter(model, tmp_path / method)
        wt = finetuned_weights(tmp_path / method, w0)
        assert sorted(wt) == sorted(w0)  # k_proj is not requested
        layer = model.get_submodule("layers.1.v_proj")
        if method == "full":
            expected = layer.weight
        else:
            a, b = layer.lora_A.weight, layer.lora_B.weight
            expected = w0["layers.1.v_proj"] + 2.0 * b @ a
            if method == "dora":
                expected = (
                    layer.lora_magnitude_vector[:, None] * expected / expected.norm(dim=1, keepdim=True)
                )
                torch.testing.assert_close(
                    wt["layers.1.v_proj"].norm(dim=1), layer.lora_magnitude_vector.detach()
                )
        torch.testing.assert_close(wt["layers.1.v_proj"], expected.detach(), rtol=1e-5, atol=1e-6)


def write_run(root, name: str, method: str, scales=(0.05, 0.1, 0.2, 0.4, 0.8)):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"name": "toy"}, "adapters": {"language": {"method": method}}})
    )
    for i, scale in enumerate(scales):
        ckpt = run / "checkpoints" / f"step-{(i + 1) * 10:06d}"
        save_adapter(tuned(method, scale), ckpt / "adapter")
        (ckpt / "done").write_text("1\n")
    return run


def test_analyze_runs_and_command(tmp_path, monkeypatch, capsys) -> None:
    runs = [
        write_run(tmp_path / "runs", n, m) for n, m in (("ft", "full"), ("lora", "lora"), ("dora", "dora"))
    ]
    # an incomplete checkpoint (no done file) is ignored
    (runs[1] / "checkpoints" / "step-000099" / "adapter").mkdir(parents=True)
    monkeypatch.setattr(runs_mod, "build_base_model", lambda run, config, build=None: Toy())
    points, rows = runs_mod.analyze_runs(runs)
    assert len(points) == 3 * 5 * 6  # runs x checkpoints x (3 layers x q,v)
    assert {(r["run"], r["method"], r["module"]) for r in rows} == {
        (n, m, k) for n, m in (("ft", "FT"), ("lora", "LoRA"), ("dora", "DoRA")) for k in ("q", "v")
    }
    for r in rows:
        assert r["n"] == 15 and r["checkpoints"] == [10, 20, 30, 40, 50] and -1 <= r["correlation"] <= 1
        low, high = r["correlation_ci95"]
        assert -1 <= low <= r["correlation"] <= high <= 1  # percentile bootstrap over the 5 checkpoints
    lora_q = next(r for r in rows if r["run"] == "lora" and r["module"] == "q")
    assert lora_q["paper_correlation"] == 0.83
    # bigger updates move both magnitude and direction: LoRA's (ΔD, ΔM) here rise together
    assert lora_q["correlation"] > 0.5 and lora_q["slope"] > 0

    out = tmp_path / "out"
    args = argparse.Namespace(run_dirs=[str(r) for r in runs], out=str(out), modules="q,v")
    assert analyze_main(args) == 0
    png = out / "weight_decomposition.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "weight_decomposition.json").read_text())
    assert summary["paper"]["correlation_q"] == {"FT": -0.62, "LoRA": 0.83, "DoRA": -0.31}
    assert len(summary["points"]) == len(points) and len(summary["fits"]) == 6
    out_text = capsys.readouterr().out
    assert "LoRA" in out_text and "95% CI (bootstrap over ckpts)" in out_text
    assert f"[{lora_q['correlation_ci95'][0]:.2f}, {lora_q['correlation_ci95'][1]:.2f}]" in out_text


def test_fewer_than_five_checkpoints_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    from vlmtune.cli import main as cli_main

    built = []
    monkeypatch.setattr(runs_mod, "build_base_model", lambda run, config: built.append(run) or Toy())
    good = write_run(tmp_path / "runs", "lora", "lora")
    short = write_run(tmp_path / "runs", "dora", "dora", scales=(0.1, 0.4))
    assert cli_main(["analyze", str(good), str(short), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 complete checkpoint(s)" in err and "at least 5" in err
    assert built == [] and not (tmp_path / "out").exists()  # refused before any model was built


def test_summarize_bootstrap_interval_resamples_checkpoints() -> None:
    def pts(step, xy):
        return [
            runs_mod.Point("r", "LoRA", "q", f"l.{i}.q_proj", i, step, y, x) for i, (x, y) in enumerate(xy)
        ]

    # 5 checkpoints x 2 layers on the line dM = 2 dD: correlation 1 in every resample
    line = [p for s in range(5) for p in pts(s, [(s + 1.0, 2 * s + 2.0), (s + 1.5, 2 * s + 3.0)])]
    (row,) = runs_mod.summarize(line)
    assert row["correlation"] == pytest.approx(1.0) and row["correlation_ci95"] == pytest.approx([1.0, 1.0])
    # scattered checkpoints: the interval is wide and holds the point estimate
    xy = [[(1, 1), (2, 3)], [(3, 2), (4, 5)], [(5, 4), (6, 4)], [(7, 9), (8, 6)], [(9, 7), (10, 10)]]
    (row,) = runs_mod.summarize([p for s, g in enumerate(xy) for p in pts(s, g)])
    low, high = row["correlation_ci95"]
    assert low < row["correlation"] < high and high - low > 0.05


def test_run_method_labels() -> None:
    lang = {"language": {"method": "dora"}, "projector": {"method": "full"}, "vision": {"method": "frozen"}}
    assert runs_mod.run_method({"adapters": lang}) == "DoRA"
    assert (
        runs_mod.run_method({"adapters": {"language": {"method": "full"}, "projector": {"method": "full"}}})
        == "FT"
    )
    assert runs_mod.run_method({"adapters": {"language": {"method": "lora"}}}) == "LoRA"


def test_run_without_checkpoints_is_a_clear_error(tmp_path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\n")
    with pytest.raises(FileNotFoundError, match="save_every"):
        runs_mod.analyze_runs([run], load_base=lambda r, c: Toy())


def test_extras_only_folder(tmp_path) -> None:
    w0 = base_w0()
    folder = tmp_path / "ft"
    folder.mkdir()
    save_file(
        {"layers.0.q_proj.weight": 2 * w0["layers.0.q_proj"]}, str(folder / "trainable_extras.safetensors")
    )
    wt = finetuned_weights(folder, w0)
    assert list(wt) == ["layers.0.q_proj"]
    d_m, d_d = decomposition_change(w0["layers.0.q_proj"], wt["layers.0.q_proj"])
    assert d_d == pytest.approx(0, abs=1e-9) and d_m > 0


def test_base_model_of_a_run_builds_from_any_directory(tmp_path, monkeypatch) -> None:
    """analyze builds only the base model: a run whose (relative) training data is not reachable from here
    still builds, with the run's settings as trained (not the recipe's model_defaults again)."""
    from vlmtune.core.config import load_config, to_dict
    from vlmtune.train.run import write_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    monkeypatch.chdir(tmp_path / "data")
    trained = load_config("llava-dora", ["data.train=train.jsonl", "adapters.language.r=4"])
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, to_dict(trained))
    monkeypatch.chdir(tmp_path)
    seen = []
    model = runs_mod.build_base_model(
        run, {}, build=lambda cfg: seen.append(cfg) or types.SimpleNamespace(model="m")
    )
    assert model == "m" and seen[0].model == trained.model and seen[0].adapters.language.r == 4


def test_analyze_without_out_never_overwrites_an_earlier_analysis(tmp_path, monkeypatch, capsys) -> None:
    from vlmtune.cli import main as cli_main

    monkeypatch.setattr(runs_mod, "build_base_model", lambda run, config, build=None: Toy())
    lora, dora = (write_run(tmp_path / "runs", n, n) for n in ("lora", "dora"))
    assert cli_main(["analyze", str(lora), str(dora)]) == 0
    first = tmp_path / "runs" / "analysis" / "weight_decomposition.json"
    before = first.read_bytes()
    assert cli_main(["analyze", str(dora)]) == 0
    assert first.read_bytes() == before  # the two-run analysis is kept
    second = json.loads((tmp_path / "runs" / "analysis-2" / "weight_decomposition.json").read_text())
    assert {r["run"] for r in second["fits"]} == {"dora"}
    assert f"{tmp_path / 'runs' / 'analysis-2' / 'weight_decomposition.json'}" in capsys.readouterr().out
