import csv
import json

import numpy as np
import pytest

from sparsellm import law as L
from sparsellm.cli import main

TRUE = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def synthetic(noise=0.003, seed=1):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.logspace(7, 9, 5), 4)
    D = np.tile(np.logspace(9, 11, 4), 5)
    S = np.tile([0.0, 0.5, 0.8, 0.0, 0.6], 4)
    rho = 1 - 0.6 * S  # stand-in average density
    avg = N * rho
    loss = L.ChinchillaForm("avg", "avg_params").loss(TRUE, avg, D) * np.exp(rng.normal(0, noise, N.size))
    return L.Runs(N, avg, N * (1 - S), D, loss, S, [f"r{i}" for i in range(N.size)])


def test_fit_recovers_known_coefficients_with_noise():
    runs = synthetic()
    f = L.fit(runs, "avg", n_starts=8)
    c = f.coefficients
    assert c["E"] == pytest.approx(TRUE["E"], rel=0.02)
    assert c["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert c["beta"] == pytest.approx(TRUE["beta"], abs=0.03)
    assert np.log(c["A"]) == pytest.approx(np.log(TRUE["A"]), abs=0.6)
    assert np.log(c["B"]) == pytest.approx(np.log(TRUE["B"]), abs=0.6)
    assert f.rmse_log < 0.005


def test_avg_law_beats_final_law_when_data_follows_avg_law():
    runs = synthetic(noise=0.001)
    a = L.loo(runs, "avg", n_starts=4)
    d = L.loo(runs, "dense", n_starts=4)
    assert a["rmse_log"] < 0.003
    assert a["rmse_log"] < d["rmse_log"] / 3


def test_frantar_form_fits_its_own_data():
    rng = np.random.default_rng(0)
    N = np.repeat(np.logspace(7, 9, 4), 6)
    S = np.tile([0, 0.25, 0.5, 0.75, 0.875, 0.5], 4)
    D = np.tile(np.logspace(9, 11, 3), 8)
    nz = N * (1 - S)
    true = (2.0 * (1 - S) ** 0.5 + 0.5) * 300 * nz ** -0.35 + 400 * D ** -0.3 + 1.7
    loss = true * np.exp(rng.normal(0, 0.001, N.size))
    runs = L.Runs(N, nz, nz, D, loss, S)
    f = L.fit(runs, "frantar", n_starts=8)
    assert f.rmse_log < 0.003
    assert set(f.coefficients) == {"a", "b", "c", "d", "e", "f", "g"}


def test_bootstrap_interval_contains_truth():
    runs = synthetic(noise=0.002)
    ci = L.bootstrap(runs, "avg", n=15, seed=0)
    lo, hi = ci["alpha"]
    assert lo <= hi and lo - 0.02 <= TRUE["alpha"] <= hi + 0.02


def _write(path, rows, cols=("name", "params", "avg_params", "final_params", "tokens", "loss")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def test_csv_errors_name_row_and_column(tmp_path):
    p = tmp_path / "r.csv"
    good = dict(name="a", params=10, avg_params=8, final_params=5, tokens=100, loss=3.0)
    _write(p, [good, dict(good, loss="abc")])
    with pytest.raises(ValueError, match=r"row 2: column 'loss'"):
        L.read_runs(p)
    _write(p, [good, dict(good, tokens=-5)])
    with pytest.raises(ValueError, match=r"row 2: column 'tokens'"):
        L.read_runs(p)
    _write(p, [good], cols=("params", "tokens", "loss"))
    with pytest.raises(ValueError, match="missing column"):
        L.read_runs(p)


def test_fit_cli_json(tmp_path, capsys):
    runs = synthetic()
    rows = [dict(name=n, params=a, avg_params=b, final_params=c, tokens=d, loss=e)
            for n, a, b, c, d, e in zip(runs.names, runs.params, runs.avg_params, runs.final_params, runs.tokens, runs.loss)]
    p = tmp_path / "runs.csv"
    _write(p, rows)
    assert main(["fit", "--runs", str(p), "--law", "avg", "--json", "--plot", str(tmp_path / "f.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["coefficients"]) == {"E", "A", "alpha", "B", "beta"}
    assert out["coefficients"]["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert out["rmse_log"] < 0.005
    assert (tmp_path / "f.png").stat().st_size > 1000
    _write(p, rows[:3] + [dict(rows[3], avg_params="x")])
    assert main(["fit", "--runs", str(p), "--json"]) == 2
    assert "row 4" in capsys.readouterr().err
