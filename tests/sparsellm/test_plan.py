import json

import pytest

from sparsellm.cli import main
from sparsellm.plan import avg_density_for, best_plan, frontier

COEF = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def test_avg_density_for_matches_closed_form():
    from sparsellm.schedule import geometric_average_density_continuous as g

    # 80%: window ~10%-50% of steps
    assert avg_density_for(0.8) == pytest.approx(g(0.8, 0.0994, 0.4994), abs=0.01)
    assert avg_density_for(0.0) == 1.0


def test_best_plan_respects_budget_and_cap():
    C, n_inf = 1e21, 2e8
    p = best_plan(COEF, C, n_inf)
    assert p.final_params <= n_inf * 1.0001
    assert p.compute == pytest.approx(6 * p.avg_params * p.tokens, rel=1e-9)
    # it is at least as good as the dense model at the cap with the same compute
    dense_loss = COEF["E"] + COEF["A"] / n_inf ** COEF["alpha"] + COEF["B"] / (C / (6 * n_inf)) ** COEF["beta"]
    assert p.loss <= dense_loss + 1e-12


def test_frontier_sparse_never_worse_than_dense():
    rows = frontier(COEF, 2.3, [1e7, 1e8, 1e9])
    for r in rows:
        if r["dense_compute"] is not None:
            assert r["sparse_compute"] <= r["dense_compute"] * (1 + 1e-9)
    # a small inference size that dense training cannot reach at all can be reached sparsely
    rows = frontier(COEF, 2.3, [2e6])
    assert rows[0]["dense_compute"] is None or rows[0]["sparse_compute"] < rows[0]["dense_compute"]


def test_plan_cli(tmp_path, capsys):
    cf = tmp_path / "c.json"
    cf.write_text(json.dumps({"coefficients": COEF}))
    assert main(["plan", "--coefficients", str(cf), "--compute", "1e21", "--inference-params", "2e8",
                 "--json", "--plot", str(tmp_path / "p.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"]["final_params"] <= 2e8 * 1.0001 and len(out["frontier"]) == 9
    assert (tmp_path / "p.png").exists()
