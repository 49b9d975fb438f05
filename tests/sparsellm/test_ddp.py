"""Two CPU processes, gloo on loopback: the same code path torchrun takes."""

import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from sparsellm.train import TrainConfig, run_training

    cfg = TrainConfig(out_dir=f"{out}/run", data=["shakespeare"], max_chars=40_000, preset="nano", seq_len=32,
                      batch_size=2, steps=16, sparsity=0.7, frequency=3, start_step=2, end_step=11,
                      eval_batches=1, progress=False, export=False)
    res = run_training(cfg)
    torch.save({"masks": {n: m.bool() for n, m in res.pruner.masks.items()},
                "weights": {k: v.clone() for k, v in res.model.state_dict().items()},
                "summary": res.summary, "disagreements": res.pruner.mask_disagreements,
                "events": res.pruner.events_done}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ddp_masks_identical_across_ranks(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["summary"]["world_size"] == 2
    assert r0["summary"]["tokens"] == 16 * 2 * 2 * 32
    assert r0["summary"]["final_density"] == pytest.approx(0.3, abs=1e-4)
    # Rank 0's masks are broadcast, so equal masks alone prove nothing: each rank's own choice must already agree
    # (its weights equal rank 0's after every all-reduced step, though the two ranks trained on different batches).
    assert r0["events"] == r1["events"] > 0
    assert r1["disagreements"] == 0 and r0["disagreements"] == 0
    for n in r0["masks"]:
        assert torch.equal(r0["masks"][n], r1["masks"][n]), n
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
