import json

import pytest
import torch

from sparsellm.cli import main
from sparsellm.train import TrainConfig, inspect, lr_at, run_training, train


def cfg(tmp_path, name, **kw):
    base = dict(out_dir=str(tmp_path / name), data=["shakespeare"], max_chars=60_000, preset="nano",
                seq_len=32, batch_size=4, steps=24, sparsity=0.6, frequency=4, start_step=4, end_step=16,
                eval_batches=2, progress=False, export=False, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule():
    T, peak = 1000, 1.0
    assert lr_at(0, T, peak, 0.01, 0.1) == pytest.approx(0.1)
    assert lr_at(9, T, peak, 0.01, 0.1) == pytest.approx(1.0)
    assert lr_at(T - 1, T, peak, 0.01, 0.1) == pytest.approx(0.1)
    mid = lr_at(10 + (T - 11) // 2, T, peak, 0.01, 0.1)
    assert mid == pytest.approx(0.55, abs=0.01)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one of steps or tokens"):
        TrainConfig(out_dir=str(tmp_path), steps=None)
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(out_dir=str(tmp_path), steps=5, preset="huge")


def test_resume_equals_uninterrupted(tmp_path):
    full = run_training(cfg(tmp_path, "full"))
    part = run_training(cfg(tmp_path, "part", stop_after=11))
    assert part.summary == {"stopped_at": 11}
    resumed = run_training(cfg(tmp_path, "part", resume=True))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.summary["loss"] == full.summary["loss"]
    assert resumed.summary["avg_density"] == pytest.approx(full.summary["avg_density"])


def test_train_tracks_schedule_exports_and_inspects(tmp_path, capsys):
    s = train(cfg(tmp_path, "run", export=True, start_step=None, end_step=None))
    assert s["avg_density"] == pytest.approx(s["predicted_avg_density"], abs=1 / s["params"] + 1e-12)
    assert s["final_density"] == pytest.approx(0.4, abs=1 / s["params"])
    assert s["avg_params"] == pytest.approx(s["avg_density"] * s["params"])
    assert s["loss"] < 5.6  # below the uniform-over-257 loss (5.55 nats) plus slack: it learned something
    hf = tmp_path / "run" / "hf"
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(hf))
    r = inspect(str(hf))
    assert r["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert r["layers"]["lm_head.weight"]["sparsity"] > 0
    emb = m.get_input_embeddings().weight
    assert int((emb == 0).sum()) == 0  # embeddings are never pruned
    assert main(["inspect", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_bpe_tokenizer_and_2_4(tmp_path):
    s = train(cfg(tmp_path, "bpe", tokenizer="bpe:300", sparsity=0.5, structure="2:4", steps=12,
                  start_step=2, end_step=6, frequency=2))
    assert s["vocab_size"] == 300
    from sparsellm.pruner import is_valid_2_4

    sd = torch.load(tmp_path / "bpe" / "checkpoint.pt", weights_only=False)["model"]
    assert all(is_valid_2_4(w) for k, w in sd.items() if k.endswith("proj.weight") or k == "lm_head.weight")


def test_schedule_cli(capsys):
    assert main(["schedule", "--total-steps", "1000", "--start-step", "100", "--end-step", "500",
                 "--frequency", "100", "--sparsity", "0.8", "--prunable-params", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = [0.2 ** (k / 5) for k in range(1, 6)]
    expect = (100 + 100 * sum(d[:-1]) + 500 * 0.2) / 1000
    assert out["average_density"] == pytest.approx(expect)
    assert out["average_params"] == pytest.approx(expect * 1000)
    assert main(["schedule", "--total-steps", "10", "--sparsity", "1.5"]) == 2


def test_datasets_folder_and_saved_tokenizer(tmp_path):
    import datasets

    from sparsellm.data import load_tokenizer, read_texts, tokenize_corpus, train_batch

    datasets.Dataset.from_dict({"text": ["hello world " * 20, "", "to be or not to be " * 30]}).save_to_disk(
        str(tmp_path / "ds"))
    texts = read_texts([str(tmp_path / "ds")])
    assert len(texts) == 2 and texts[0].startswith("hello")
    tok = load_tokenizer("bpe:280", texts)
    tok.save(tmp_path / "tok")
    tok2 = load_tokenizer(str(tmp_path / "tok"))
    assert tok2.encode("to be or not") == tok.encode("to be or not")
    data = tokenize_corpus(texts, tok2, eval_fraction=0.1)
    b1 = train_batch(data.train, 5, 3, 8, seed=1)
    assert torch.equal(b1, train_batch(data.train, 5, 3, 8, seed=1))
    assert not torch.equal(b1, train_batch(data.train, 5, 3, 8, seed=1, rank=1))
    with pytest.raises(ValueError, match="no such file"):
        read_texts([str(tmp_path / "missing.txt")])


def test_train_cli(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "c"), "--preset", "nano", "--steps", "6", "--seq-len", "16",
               "--batch-size", "2", "--sparsity", "0.5", "--frequency", "2", "--start-step", "1", "--end-step", "3",
               "--max-chars", "20000", "--eval-batches", "1", "--no-export", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["final_density"] == pytest.approx(0.5, abs=1e-4) and out["steps"] == 6
    assert main(["train", "--out", str(tmp_path / "d"), "--preset", "nope", "--steps", "2"]) == 2
