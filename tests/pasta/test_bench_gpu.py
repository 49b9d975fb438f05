"""bench/gpu.py is ready for a GPU session: its CPU smoke mode runs end to end, and the exactness it reports (cached
engine vs the naive oracle, fp32, a model built from a real-shape config) is what the oracle tests demand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_gpu_bench_smoke_runs_and_is_exact():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--json", "--graphs", "tiny-a"],
                          capture_output=True,
                          text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["exactness_fp32_max_abs"] < 1e-4
    assert report["exactness_graphs_fp32_max_abs"] < 1e-4  # the static steps CUDA graphs replay (uncaptured on CPU)
    first = next(iter(report["shapes"].values()))
    runner = first["graphs_runner"]
    assert runner["static"] > runner["eager"] > 0 and not runner["graphs"] and runner["capture_error"] is None
    assert [r["k"] for r in first["per_step_graphs"]] == [1, 4, 8]
    assert [r["k"] for r in first["per_step"]] == [1, 4, 8] and [r["k"] for r in first["parallel"]] == [2, 4, 8, 16]
    for row in first["parallel"]:  # theoretical speedups follow from the step counts, not from timings
        assert row["theoretical"] == pytest.approx(row["tokens"] / row["steps"], abs=2e-3)
        assert 1 < row["theoretical"] <= row["k"] + 1
