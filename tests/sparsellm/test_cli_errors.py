"""`sparsellm` CLI: bad paths, files and numbers give one line naming the problem and exit code 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sparsellm import law as L
from sparsellm.cli import main

RUNS = Path(__file__).parents[2] / "results" / "sparsellm" / "runs.csv"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_fit_on_a_folder_uses_its_runs_csv_or_says_what_is_missing(tmp_path, capsys):
    err = _error(capsys, ["fit", "--runs", str(tmp_path)])
    assert str(tmp_path) in err and "runs.csv" in err
    shutil.copy(RUNS, tmp_path / "runs.csv")
    assert main(["fit", "--runs", str(tmp_path), "--json"]) == 0
    assert '"coefficients"' in capsys.readouterr().out


def test_non_utf8_and_bad_json_name_the_file(tmp_path, capsys):
    bad = tmp_path / "runs.bin"
    bad.write_bytes(b"params,loss\n\xff\xfe\n")
    assert str(bad) in _error(capsys, ["fit", "--runs", str(bad)])
    coef = tmp_path / "coef.json"
    coef.write_text("{not json")
    err = _error(capsys, ["plan", "--coefficients", str(coef), "--compute", "1e18", "--inference-params", "1e8"])
    assert str(coef) in err
    coef.write_text('{"E": 1.0, "A": 2.0}')
    assert "alpha" in _error(capsys, ["plan", "--coefficients", str(coef), "--compute", "1e18",
                                      "--inference-params", "1e8"])
    missing = tmp_path / "absent.json"
    assert str(missing) in _error(capsys, ["plan", "--coefficients", str(missing), "--compute", "1e18",
                                           "--inference-params", "1e8"])


def test_fit_refuses_fewer_runs_than_coefficients(capsys):
    runs = L.read_runs(RUNS)
    with pytest.raises(ValueError, match="too few"):
        L.fit(runs.subset([0, 1]), "avg")
    with pytest.raises(ValueError, match="7 coefficients"):
        L.fit(runs.subset(list(range(6))), "frantar")
    L.fit(runs.subset(list(range(5))), "avg", n_starts=2)  # exactly determined: allowed


@pytest.mark.parametrize("flag,value", [("--prunable-params", "-10"), ("--non-prunable-params", "-1"),
                                        ("--tokens-per-step", "0")])
def test_schedule_refuses_negative_sizes(capsys, flag, value):
    err = _error(capsys, ["schedule", "--total-steps", "100", "--sparsity", "0.5", flag, value])
    assert flag in err
