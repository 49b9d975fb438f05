"""Run-to-run noise of the CPU sweep: a few of its configurations with seeds 0, 1, 2.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/sparsellm/noise.py            # train (resumable), then analyse
    .venv/bin/python scripts/sparsellm/noise.py --analyse                    # analyse the rows already there

The configurations are the sweep's own jobs (``sweep.jobs()``: same shapes, steps, schedule, batches), run
one at a time with one torch thread in runs/sparsellm-noise/<name>-seed<k>/. Each finished run is appended
to results/sparsellm/noise_runs.csv at once; a row already there is skipped, so the script resumes. Seed 0
re-runs the sweep's own run, which checks that the committed runs.csv is reproduced by today's code.

The analysis (results/sparsellm/noise.json, printed) gives, per configuration, the mean, sample std and
relative std of the held-out loss over seeds, and then asks whether the laws' leave-one-out differences
exceed that noise: every run's loss in runs.csv is perturbed by Gaussian noise of the measured relative std
(``--sims`` times), the three laws' LOO mean abs errors are recomputed on each perturbed sweep, and the
spread of the differences between laws is reported next to the differences measured on the real sweep
(``sparsellm.report.loo_under_noise``); once with the pooled relative std and once with the largest one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from sweep import BATCH, COLS, CSV, FREQ, SEQ, jobs  # noqa: E402

from sparsellm import law as L  # noqa: E402
from sparsellm.report import append_row, loo_under_noise, read_rows, seed_noise  # noqa: E402

NOISE_RUNS = ROOT / "runs" / "sparsellm-noise"
NOISE_CSV = ROOT / "results" / "sparsellm" / "noise_runs.csv"
NOISE_JSON = ROOT / "results" / "sparsellm" / "noise.json"
NOISE_MD = ROOT / "results" / "sparsellm" / "noise.md"
# small configurations (about 0.5-1.7 min each at one thread) spread over size, sparsity and the dense matches
CONFIGS = ["nano-s80-D1", "micro-s0-D1", "micro-s50-D1", "mini-s80-D1", "dense-match-mini-s50-D1",
           "dense-match-mini-s80-D1"]
SEEDS = [0, 1, 2]
NOISE_COLS = ["config", "seed"] + [c for c in COLS if c not in ("name", "group")]


def train_all(configs: list[str], seeds: list[int]) -> None:
    import torch

    torch.set_num_threads(1)
    from sparsellm.train import TrainConfig, train

    by_name = {j["name"]: j for j in jobs()}
    unknown = [c for c in configs if c not in by_name]
    if unknown:
        raise SystemExit(f"not sweep configurations: {unknown}")
    have = {(r["config"], int(r["seed"])) for r in read_rows(NOISE_CSV)}
    todo = [(c, s) for s in seeds for c in configs if (c, s) not in have]
    print(f"{len(todo)} runs to do ({len(have)} already in {NOISE_CSV.name})", flush=True)
    for c, s in todo:
        j = by_name[c]
        t0 = time.time()
        cfg = TrainConfig(out_dir=str(NOISE_RUNS / f"{c}-seed{s}"), data=["shakespeare"], preset=j["preset"],
                          tokenizer="byte", seq_len=SEQ, batch_size=BATCH, steps=j["steps"], sparsity=j["sparsity"],
                          frequency=FREQ, lr=3e-3, seed=s, resume=True, save_every=200, eval_batches=16,
                          progress=False, export=False, threads=1)
        summary = train(cfg)
        append_row(NOISE_CSV, NOISE_COLS, dict(summary, config=c, seed=s))
        print(f"done {c} seed {s}: loss {summary['loss']:.4f} ({time.time() - t0:.0f} s)", flush=True)


def analyse(sims: int) -> dict:
    rows = read_rows(NOISE_CSV)
    if not rows:
        raise SystemExit(f"no rows in {NOISE_CSV}: run the training part first")
    sweep_loss = {r["name"]: float(r["loss"]) for r in read_rows(CSV)}
    out = seed_noise(rows)
    for c, v in out["configs"].items():  # seed 0 is the sweep's own run: is it reproduced to the bit?
        seed0 = [float(r["loss"]) for r in rows if r["config"] == c and int(r["seed"]) == 0]
        if seed0 and c in sweep_loss:
            v["seed0_reproduces_sweep"] = seed0[0] == sweep_loss[c]
    if sims and math.isfinite(out["pooled_rel_std_pct"]):
        runs = L.read_runs(CSV)
        out["loo_under_noise"] = loo_under_noise(runs, out["pooled_rel_std_pct"] / 100, sims, progress=True)
        # the same with the largest per-configuration noise, a pessimistic bound
        out["loo_under_max_noise"] = loo_under_noise(runs, out["max_rel_std_pct"] / 100, sims, seed=1, progress=True)
        # the post-hoc view of the sweep (without the nano family, where avg wins): is that gap beyond noise?
        keep = [i for i, r in enumerate(read_rows(CSV)) if r["preset"] != "nano"]
        out["loo_without_nano_under_noise"] = loo_under_noise(runs.subset(keep), out["pooled_rel_std_pct"] / 100, sims,
                                                              seed=2, progress=True)
    NOISE_JSON.write_text(json.dumps(out, indent=2))
    NOISE_MD.write_text(noise_md(out))
    brief = {k: v for k, v in out.items() if not k.startswith("loo_under")}
    for k in ("loo_under_noise", "loo_under_max_noise", "loo_without_nano_under_noise"):
        if k in out:
            brief[k] = {kk: vv for kk, vv in out[k].items() if kk != "sim_loo_mae_pct"}
    print(json.dumps(brief, indent=2))
    return out


def noise_md(out: dict) -> str:
    """The noise tables (also appended to summary.md by analyze.py)."""
    md = ["| config (3 seeds) | seed 0 | seed 1 | seed 2 | std | rel std | seed 0 = runs.csv |",
          "|---|---|---|---|---|---|---|"]
    for c, v in out["configs"].items():
        md.append(f"| {c} | " + " | ".join(f"{x:.4f}" for x in v["losses"]) + f" | {v['std']:.4f} | "
                  f"{v['rel_std_pct']:.2f}% | {'yes' if v.get('seed0_reproduces_sweep') else 'no'} |")
    md.append(f"\npooled relative std {out['pooled_rel_std_pct']:.2f}% (largest {out['max_rel_std_pct']:.2f}%)")
    for key, label in (("loo_under_noise", "pooled noise, all 26 runs"), ("loo_under_max_noise", "largest noise"),
                       ("loo_without_nano_under_noise", "pooled noise, the 20 runs without nano: post hoc")):
        if key not in out:
            continue
        x = out[key]
        md += ["", f"LOO mean abs error differences vs their spread over {x['sims']} noisy copies "
               f"({label}; {100 * x['rel_std']:.2f}%):", "",
               "| laws | LOO difference (points) | std over copies | exceeds 2 std |", "|---|---|---|---|"]
        md += [f"| {k} | {v['real_pct']:+.2f} | {v['sim_std_pct']:.2f} | {'yes' if v['exceeds_noise'] else 'no'} |"
               for k, v in x["differences"].items()]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analyse", action="store_true", help="skip training; analyse the rows already written")
    ap.add_argument("--configs", nargs="+", default=CONFIGS)
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--sims", type=int, default=20, help="noisy copies of the sweep for the LOO comparison")
    ap.add_argument("--md", action="store_true", help="only rewrite noise.md from noise.json")
    a = ap.parse_args()
    if a.md:
        NOISE_MD.write_text(noise_md(json.loads(NOISE_JSON.read_text())))
        return
    if not a.analyse:
        train_all(a.configs, a.seeds)
    analyse(a.sims)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
