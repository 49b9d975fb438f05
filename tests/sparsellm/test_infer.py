"""Sparsity at inference: pattern detection, the `inspect` speed-up line, and the 2:4 export's guard on CPU."""

import json

import pytest
import torch

from sparsellm.cli import main
from sparsellm.infer import (model_pattern, semi_structured_available, semi_structured_shape_ok, speedup_note,
                             to_semi_structured, weight_pattern)
from sparsellm.models import build_model
from sparsellm.pruner import Pruner, PrunerConfig
from sparsellm.schedule import PruningSchedule


def test_weight_pattern_on_hand_made_weights():
    w = torch.randn(8, 16)
    assert weight_pattern(w) == "dense"
    two_four = w * torch.tensor([1.0, 0, 1, 0] * 4)  # every group of 4: 2 non-zeros
    assert weight_pattern(two_four) == "2:4"
    one_four = w * torch.tensor([0.0, 0, 0, 1] * 4)  # sparser than 2:4 still fits the kernels
    assert weight_pattern(one_four) == "2:4"
    bad = two_four.clone()
    bad[3, 1] = 1.0  # one group with 3 non-zeros breaks it
    assert weight_pattern(bad) == "unstructured"
    odd = torch.randn(4, 6)
    odd[:, :3] = 0
    assert weight_pattern(odd) == "unstructured"  # in_features not a multiple of 4
    with pytest.raises(ValueError, match="2-D"):
        weight_pattern(torch.randn(4))


def test_shape_constraints_follow_torch():
    assert semi_structured_shape_ok((64, 128), torch.bfloat16)
    assert not semi_structured_shape_ok((64, 120), torch.bfloat16)  # cuSPARSELt bf16: multiples of 16
    assert not semi_structured_shape_ok((8, 64), torch.bfloat16)
    assert not semi_structured_shape_ok((64, 64), torch.float32)  # no fp32 in cuSPARSELt
    assert semi_structured_shape_ok((64, 64), torch.float32, backend="cutlass")


def _pruned(structure: str, sparsity: float, exempt=()):
    m = build_model("micro", 256, 32, seed=0)
    p = Pruner(m, PrunerConfig(PruningSchedule(10, sparsity, 0, 0, 1), structure=structure, exempt=list(exempt)))
    p.step(0)
    return m.state_dict()


def test_model_pattern_of_pruned_models():
    r = model_pattern(_pruned("2:4", 0.5))
    assert r["pattern"] == "2:4" and r["layers_2_4"] == r["linear_layers"] == 2 * 7 + 1
    assert r["sparsity"] == pytest.approx(0.5)
    assert r["params_2_4"] == r["linear_params"]
    line = speedup_note(r)
    assert line.startswith("2:4 on 15 of 15 linear layers (100% of linear params")
    assert "compute capability >= 8.0" in line

    r = model_pattern(_pruned("2:4", 0.5, exempt=[r"lm_head"]))  # a dense head is still a 2:4 model
    assert r["pattern"] == "2:4" and r["layers_2_4"] == 14 and r["layers"]["lm_head.weight"]["pattern"] == "dense"
    assert r["params_2_4"] < r["linear_params"]

    r = model_pattern(_pruned("unstructured", 0.8))
    assert r["pattern"] == "unstructured" and r["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert speedup_note(r).startswith("unstructured at 80%: no speed-up from dense kernels")

    dense = build_model("micro", 256, 32, seed=0).state_dict()
    assert model_pattern(dense)["pattern"] == "dense" and speedup_note(model_pattern(dense)).startswith("dense")
    with pytest.raises(ValueError, match="no linear"):
        model_pattern({"embed.weight": torch.zeros(4, 4)})


def test_inspect_prints_the_speed_up_line(tmp_path, capsys):
    from sparsellm.train import TrainConfig, train

    train(TrainConfig(out_dir=str(tmp_path / "r"), data=["shakespeare"], max_chars=20_000, preset="nano",
                      seq_len=16, batch_size=2, steps=4, sparsity=0.5, structure="2:4", frequency=1,
                      start_step=1, end_step=2, eval_batches=1, progress=False, export=False, device="cpu"))
    assert main(["inspect", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "inference speed-up (2:4): 2:4 on 15 of 15 linear layers" in out
    assert main(["inspect", str(tmp_path / "r"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["pattern"] == "2:4" and j["layers"]["lm_head.weight"]["pattern"] == "2:4"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer")
def test_semi_structured_unavailable_on_cpu_says_why():
    ok, why = semi_structured_available()
    assert not ok and "no CUDA device" in why
    m = build_model("nano", 256, 32)
    with pytest.raises(RuntimeError, match="unavailable: no CUDA device"):
        to_semi_structured(m)


def test_sparse_infer_bench_smoke_runs_and_reports_the_cpu_answer():
    """bench/sparse_infer.py --smoke: end to end in seconds; on CPU it says why the format is unavailable and
    times the 2:4-pruned model on dense kernels (masked) against the dense one. No speed is asserted."""
    import math
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    done = subprocess.run([sys.executable, str(root / "bench" / "sparse_infer.py"), "--smoke", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["pattern"] == "2:4" and r["sparsity"] == pytest.approx(0.5)
    assert r["inspect_line"].startswith("2:4 on 15 of 15 linear layers")
    for k in ("prefill_speedup", "decode_speedup"):
        assert math.isfinite(r[k]) and r[k] > 0
    if not torch.cuda.is_available():
        assert r["semi_structured_available"] is False and "no CUDA device" in r["reason"]
        assert (r["baseline"], r["candidate"]) == ("dense", "masked")
    elif r["semi_structured_available"]:
        assert r["converted_layers"] == r["linear_layers"] and r["top1_agreement"] > 0.9
