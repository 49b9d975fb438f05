"""`pasta train pref` under torchrun's code path: two gloo processes on loopback. Any number of pairs (fewer than
ranks, odd) runs the same collectives on every rank, and 2 ranks x batch 1 give the weights one process with batch
2 gives (the oracle: the single-process run)."""

from __future__ import annotations


import pytest
import torch
import torch.multiprocessing as mp

from pasta.subprocesses import free_port

BEST = 'Tips:\n1. <promise topic="sleep" tokens="8"/><async>Sleep well.</async>\n<sync/>Done.'
WORST = "Tips: sleep well, eat well, sleep well, eat well."


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"Give tips {k}.", "chosen": BEST, "rejected": WORST + " x" * k} for k in range(n)]


def _train(out: str, n_pairs: int, batch_size: int):
    torch.set_num_threads(1)
    from tiny import ByteTokenizer, tiny_model

    from pasta.train.pref import PrefConfig, PrefTrainer

    config = PrefConfig(output_dir=out, judge="none", batch_size=batch_size, grad_accum=2, epochs=2,
                        learning_rate=1e-2)
    trainer = PrefTrainer(config, tiny_model(seed=5), ByteTokenizer())
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero LoRA: the policy differs from the reference, so gradients are not trivial
        for name, p in trainer.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    history = trainer.train_round(1, _pairs(n_pairs))
    weights = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    return weights, history


def _worker(rank: int, world: int, port: int, out: str, n_pairs: int) -> None:
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    weights, history = _train(f"{out}/pref", n_pairs, batch_size=1)
    torch.save({"weights": weights, "history": history}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("n_pairs", [3, 1])
def test_two_ranks_equal_one_process_for_any_number_of_pairs(tmp_path, n_pairs):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), n_pairs), nprocs=2, join=True)  # no hang, no crash
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    single, history = _train(str(tmp_path / "single"), n_pairs, batch_size=2)
    assert sum(h["pairs"] for h in r0["history"] + r1["history"]) == sum(h["pairs"] for h in history) == 2 * n_pairs
    if n_pairs == 1:
        assert r1["history"] == []  # rank 1 had no pair, yet took part in every step
    for name, value in single.items():
        torch.testing.assert_close(r0["weights"][name], value, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r1["weights"][name], value, atol=1e-5, rtol=1e-4)
    start, _ = _train(str(tmp_path / "none"), 0, batch_size=2)  # no pairs: the initial weights
    assert any(not torch.allclose(start[n], single[n]) for n in single)  # training did move the weights
