"""Analyse the sweep: `.venv/bin/python scripts/sparsellm/analyze.py` (after sweep.py).

Writes results/sparsellm/{runs.csv, analysis.json, summary.md} and the figures
loss_vs_params.png, law_fits.png, schedules.png, frontier.png.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent  # the scripts (sweep.py is imported from here)
ROOT = HERE.parents[1]
OUT = ROOT / "results" / "sparsellm"  # results hold data only
sys.path.insert(0, str(HERE))

from sweep import COLS, CSV, RUNS  # noqa: E402

from sparsellm import law as L  # noqa: E402
from sparsellm.report import plot_loss_vs_params, runs_table_md  # noqa: E402


replicates: dict[str, float] = {}  # run name -> eval loss with seed 1


def gather() -> list[dict]:
    rows = []
    for d in sorted(RUNS.glob("*/summary.json")):
        s = json.loads(d.read_text())
        name = d.parent.name
        s["name"] = name
        if name.endswith("-seed1"):
            replicates[name[:-6]] = s["loss"]
            continue
        s["group"] = "grid" if not name.startswith("dense-match-") else "match:" + name[len("dense-match-"):]
        rows.append(s)
    if not rows:  # never replace the committed results with nothing
        raise SystemExit(f"no finished runs under {RUNS}: run scripts/sparsellm/sweep.sh first ({CSV} left as it is)")
    rows.sort(key=lambda r: (r["tokens"], r["params"], r["sparsity"]))
    with open(CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return rows


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = gather()
    runs = L.read_runs(CSV)
    by_name = {r["name"]: r for r in rows}
    out: dict = {"n_runs": len(rows)}

    # 1) matched pairs: sparse run vs dense run with the same average parameter count and tokens
    pairs = []
    for r in rows:
        if r["group"].startswith("match:"):
            sp = by_name.get(r["group"][6:])
            if sp is None:
                continue
            dn = next((x for x in rows if x["group"] == "grid" and x["preset"] == sp["preset"]
                       and x["sparsity"] == 0 and x["tokens"] == sp["tokens"]), None)
            pairs.append({"sparse": sp["name"], "sparse_avg_params": sp["avg_params"],
                          "sparse_final_params": sp["final_params"], "sparse_loss": sp["loss"],
                          "dense_match": r["name"], "dense_params": r["params"], "dense_loss": r["loss"],
                          "loss_gap_pct": (sp["loss"] / r["loss"] - 1) * 100,
                          "big_dense_loss": dn["loss"] if dn else None, "tokens": sp["tokens"]})
    out["pairs"] = pairs
    out["seed_replicates"] = {k: {"seed0": by_name[k]["loss"], "seed1": v, "diff_pct": (v / by_name[k]["loss"] - 1) * 100}
                              for k, v in replicates.items() if k in by_name}

    # 2) laws: in-sample fit, leave-one-out, and fit-on-dense -> predict-sparse
    dense_idx = [i for i, r in enumerate(rows) if r["sparsity"] == 0]
    sparse_idx = [i for i, r in enumerate(rows) if r["sparsity"] > 0]
    laws = {}
    loo_preds = {}
    for name in ("avg", "dense", "frantar"):
        f = L.fit(runs, name)
        lo = L.loo(runs, name, n_starts=8, progress=True)
        loo_preds[name] = np.array(lo["predicted"])
        laws[name] = {"coefficients": f.coefficients, "rmse_log": f.rmse_log,
                      "loo": {k: v for k, v in lo.items() if k != "predicted"}}
        # sensitivity: the same LOO without the smallest preset (nano at 80% is the far extrapolation)
        keep = [i for i, r in enumerate(rows) if r["preset"] != "nano"]
        lo2 = L.loo(runs.subset(keep), name, n_starts=8)
        laws[name]["loo_without_nano"] = {k: v for k, v in lo2.items() if k != "predicted"}
        if name != "frantar":
            laws[name]["dense_to_sparse"] = {k: v for k, v in L.heldout_errors(
                runs.subset(dense_idx), runs.subset(sparse_idx), name).items() if k != "predicted"}
    laws["avg"]["ci95"] = L.bootstrap(runs, "avg", n=100, base=L.fit(runs, "avg"), progress=True)
    out["laws"] = laws

    L.plot_pred_vs_actual(runs, {f"{k} law (LOO)": v for k, v in loo_preds.items()}, OUT / "law_fits.png",
                          "Leave-one-out predictions on the sweep")

    # 3) loss vs average and vs final parameter count
    plot_loss_vs_params(rows, {k: v["coefficients"] for k, v in laws.items()}, OUT / "loss_vs_params.png",
                        "held-out loss (nats/byte)")

    # 4) schedules used in the sweep
    from sparsellm.schedule import schedule_from_compute_fractions

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    T = int(max(r["steps"] for r in rows))
    for s in sorted({r["sparsity"] for r in rows if r["sparsity"] > 0}):
        sch = schedule_from_compute_fractions(T, s, frequency=20)
        ax.plot(sch.densities(), label=f"s={s:.0%}: avg density {sch.average_density():.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("density")
    ax.set_title("geometric schedule, 25%-75% of compute")
    ax.legend(fontsize=8)
    fig.savefig(OUT / "schedules.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    # 5) Pareto frontier under the fitted average-parameter law
    from sparsellm.plan import best_plan, frontier, plot_frontier

    coef = laws["avg"]["coefficients"]
    small = min(r["final_params"] for r in rows)
    big = rows[-1]
    target = float(np.median([r["loss"] for r in rows]))
    fr = frontier(coef, target, np.logspace(np.log10(small), np.log10(big["params"]), 9), 0.9)
    plot_frontier(fr, str(OUT / "frontier.png"), target)
    out["frontier"] = {"target_loss": target, "rows": fr}
    C = 6 * big["params"] * big["tokens"]
    out["plan_example"] = {"compute": C, "inference_params": small * 2,
                           "best": best_plan(coef, C, small * 2).to_dict()}
    (OUT / "analysis.json").write_text(json.dumps(out, indent=2))

    # 6) markdown summary
    md = ["Parameters counted (column `params_counted`): non_embedding_linear = every linear weight (attention, MLP, "
          "untied head); no embedding, no norms.", "", *runs_table_md(rows)]
    md += ["", "| sparse run | avg / final params | loss | dense run with same avg params | loss | gap | dense at full size |",
           "|---|---|---|---|---|---|---|"]
    for p in pairs:
        md.append(f"| {p['sparse']} | {p['sparse_avg_params']:,.0f} / {p['sparse_final_params']:,.0f} | "
                  f"{p['sparse_loss']:.4f} | {p['dense_match']} ({p['dense_params']:,}) | {p['dense_loss']:.4f} | "
                  f"{p['loss_gap_pct']:+.2f}% | {p['big_dense_loss']:.4f} |")
    if out["seed_replicates"]:
        md += ["", "| run (seed noise) | seed 0 | seed 1 | diff |", "|---|---|---|---|"]
        md += [f"| {k} | {v['seed0']:.4f} | {v['seed1']:.4f} | {v['diff_pct']:+.2f}% |"
               for k, v in out["seed_replicates"].items()]
    md += ["", "| law | in-sample RMSE(log) | LOO RMSE(log) | LOO mean abs err | LOO mean abs err without nano runs | fit dense -> predict sparse: mean abs err |",
           "|---|---|---|---|---|---|"]
    for k, v in laws.items():
        ds = v.get("dense_to_sparse")
        md.append(f"| {k} | {v['rmse_log']:.4f} | {v['loo']['rmse_log']:.4f} | {v['loo']['mae_pct']:.2f}% | "
                  f"{v['loo_without_nano']['mae_pct']:.2f}% | "
                  + (f"{ds['mae_pct']:.2f}% |" if ds else "n/a |"))
    md += ["", "avg-law coefficients: " + ", ".join(f"{k}={v:.4g}" for k, v in laws["avg"]["coefficients"].items()),
           "95% bootstrap CI: " + ", ".join(f"{k} [{a:.3g}, {b:.3g}]" for k, (a, b) in laws["avg"]["ci95"].items())]
    noise = OUT / "noise.json"  # scripts/sparsellm/noise.py: 3 seeds of a few configurations
    if noise.exists():
        from noise import noise_md

        md += ["", "Run-to-run noise (scripts/sparsellm/noise.py):", "", noise_md(json.loads(noise.read_text()))]
    (OUT / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
