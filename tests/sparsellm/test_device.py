"""The hardware options of `sparsellm train` (device, bf16 autocast, fused AdamW, torch.compile), on CPU."""

import math

import pytest
import torch

from sparsellm.cli import main
from sparsellm.train import TrainConfig, lm_loss, resolve_device, run_training


def cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), data=["shakespeare"], max_chars=40_000, preset="nano",
                seq_len=16, batch_size=2, steps=6, sparsity=0.5, frequency=2, start_step=1, end_step=3,
                eval_batches=1, progress=False, export=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_bf16_autocast_on_cpu_trains_and_keeps_masks(tmp_path):
    r = run_training(cfg(tmp_path, "bf16", bf16=True))
    s = r.summary
    assert s["bf16"] is True and s["device"] == "cpu"
    assert math.isfinite(s["loss"]) and math.isfinite(s["train_loss"])
    # weights and masks stay fp32; every pruned weight is still exactly zero
    for n, p in r.pruner.params.items():
        assert p.dtype == torch.float32
        assert int((p[r.pruner.masks[n] == 0] != 0).sum()) == 0, n
    assert s["final_density"] == pytest.approx(0.5, abs=1 / s["params"])


def test_bf16_changes_the_forward_precision():
    from sparsellm.models import build_model

    m = build_model("nano", 257, 32, seed=0)
    b = torch.randint(0, 257, (2, 17))
    with torch.no_grad():
        l32, l16 = float(lm_loss(m, b)), float(lm_loss(m, b, bf16=True))
    assert l16 != l32 and abs(l16 - l32) < 0.05  # bf16 rounding: close, not equal


def test_compile_backend_matches_eager(tmp_path):
    a = run_training(cfg(tmp_path, "eager"))
    b = run_training(cfg(tmp_path, "compiled", compile="eager"))  # dynamo tracing, no codegen: quick on CPU
    assert b.summary["compile"] == "eager"
    assert b.summary["loss"] == pytest.approx(a.summary["loss"], rel=1e-5)
    for k, v in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_device_resolution_and_errors(tmp_path):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        cfg(tmp_path, "x", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        assert main(["train", "--out", str(tmp_path / "c"), "--steps", "2", "--device", "cuda"]) == 2


def test_summary_says_what_params_count(tmp_path):
    s = run_training(cfg(tmp_path, "count", sparsity=0.0, steps=2, start_step=None, end_step=None)).summary
    from sparsellm.models import prunable_count

    assert s["params_counted"] == "non_embedding_linear"
    assert s["params"] == prunable_count("nano", s["vocab_size"])  # closed form: attention + MLP + head
    assert s["other_params"] == s["vocab_size"] * 32 + (2 * 2 + 1) * 32  # embedding + RMSNorm weights
