"""Step-time overhead of gradual pruning vs dense training of the same model, in the same run.

Two copies of one model (same init, same batches) train step by step, interleaved (dense step, sparse
step, dense step, ...) so machine load hits both alike. The sparse copy carries the full pruning
machinery: a Pruner with events every `--frequency` steps (global magnitude top-k), gradient masking
before the optimizer step, mask re-application after it, and optimizer-state zeroing at events.

    python bench/pruning.py --json
prints {"overhead_ratio": mean sparse step time / mean dense step time, ...}; target <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from sparsellm.models import build_model
from sparsellm.pruner import Pruner, PrunerConfig
from sparsellm.schedule import PruningSchedule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--frequency", type=int, default=100)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=257)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    models = [build_model(a.preset, a.vocab, a.seq_len, seed=0).to(dev) for _ in range(2)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1) for m in models]
    end = a.frequency * ((a.steps - 1) // a.frequency)
    sched = PruningSchedule(a.steps, a.sparsity, a.frequency, max(a.frequency, end), a.frequency)
    pruner = Pruner(models[1], PrunerConfig(sched))
    g = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[], []]

    def step(i: int, t: int, batch: torch.Tensor) -> None:
        m, opt = models[i], opts[i]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if i == 1:
            pruner.step(t, opt)
        logits = m(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        if i == 1:
            pruner.mask_grads()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == 1:
            pruner.apply_masks()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times[i].append(time.perf_counter() - t0)

    for t in range(a.steps):
        batch = torch.randint(0, a.vocab, (a.batch_size, a.seq_len + 1), generator=g).to(dev)
        order = (0, 1) if t % 2 == 0 else (1, 0)  # alternate who goes first
        for i in order:
            step(i, t, batch)
    warm = min(10, a.steps // 10)
    dense, sparse = times[0][warm:], times[1][warm:]
    out = {
        "preset": a.preset, "device": str(dev), "steps": a.steps, "frequency": a.frequency,
        "sparsity": a.sparsity, "events": sched.num_events, "final_density": pruner.density,
        "dense_step_s": statistics.mean(dense), "sparse_step_s": statistics.mean(sparse),
        "overhead_ratio": statistics.mean(sparse) / statistics.mean(dense),
        "median_ratio": statistics.median(s / d for s, d in zip(sparse, dense)),
        "event_step_s": statistics.mean(times[1][t] for t in sched.event_steps()),
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
