"""The few collectives Stage 2 needs, without a DDP wrapper (so the layout code sees the plain model)."""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); under torchrun (WORLD_SIZE > 1) the process group is initialised here (nccl on GPU,
    gloo on CPU)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
