"""Sweep bookkeeping and the analyses the sweep scripts share.

- :func:`append_row` / :func:`read_rows`: a CSV that gains one row the moment a run finishes (header
  first when the file is new), so an interrupted sweep keeps every finished run and can skip them.
- :func:`seed_noise`: run-to-run noise of repeated configurations (mean, sample std, relative std).
- :func:`loo_under_noise`: do the laws' leave-one-out differences exceed that noise? Every run's loss is
  perturbed by log-normal noise of the measured relative std, ``sims`` times, the LOO mean abs errors
  recomputed, and the spread of each difference between laws compared with the real difference.
- :func:`compare_laws`: in-sample fit, LOO, fit-on-some-runs -> predict-others, for every law.
- :func:`plot_loss_vs_params`: loss against average and final parameter counts with the fitted laws.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

LAWS = ("avg", "dense", "frantar")  # as sparsellm.law.LAWS; law (scipy) is imported only where fits are made


def read_rows(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.exists():
        return []
    with open(p, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_row(path: str | Path, cols: list[str], row: dict) -> None:
    """Append one row (the header first if the file is new or empty), on disk before returning.

    A file whose header differs from ``cols`` is refused rather than silently misaligned.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    if not new:
        with open(p, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != cols:
            raise ValueError(f"{p}: its columns {header} are not this sweep's {cols}; move it away or use another --out")
    with open(p, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def seed_noise(rows: list[dict], key: str = "config", loss: str = "loss") -> dict:
    """Per configuration (rows grouped by ``key``): losses, mean, sample std and relative std in percent;
    ``pooled_rel_std_pct`` is the root mean square of the relative stds of configurations with >= 2 seeds."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(float(r[loss]))
    out: dict = {"configs": {}}
    rel = []
    for c, v in sorted(groups.items()):
        a = np.asarray(v)
        sd = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
        out["configs"][c] = {"n": len(a), "losses": a.tolist(), "mean": float(a.mean()), "std": sd,
                             "rel_std_pct": 100 * sd / float(a.mean())}
        if len(a) > 1:
            rel.append(out["configs"][c]["rel_std_pct"])
    out["pooled_rel_std_pct"] = float(np.sqrt(np.mean(np.square(rel)))) if rel else float("nan")
    out["max_rel_std_pct"] = float(max(rel)) if rel else float("nan")
    return out


def loo_under_noise(runs, rel_std: float, sims: int = 20, seed: int = 0, laws=LAWS,
                    n_starts: int = 8, progress: bool = False, real: dict[str, float] | None = None) -> dict:
    """LOO mean abs error (%) of each law on ``runs`` and on ``sims`` copies whose losses carry noise.

    For each pair of laws: the real difference of their LOO errors, the mean and std of that difference
    over the noisy copies, and ``exceeds_noise`` = |real difference| > 2 x that std.
    """
    from . import law as L

    if sims < 2:
        raise ValueError(f"sims must be >= 2 to measure a spread, got {sims}")
    if real is None:  # the LOO errors on the runs as measured (pass them if already computed)
        real = {k: L.loo(runs, k, n_starts=n_starts)["mae_pct"] for k in laws}
    rng = np.random.default_rng(seed)
    sim: dict[str, list[float]] = {k: [] for k in laws}
    for i in range(sims):
        noisy = runs.subset(np.arange(len(runs)))
        noisy.loss = runs.loss * np.exp(rng.normal(0.0, rel_std, len(runs)))
        for k in laws:
            sim[k].append(L.loo(noisy, k, n_starts=n_starts)["mae_pct"])
        if progress:
            print(f"  noisy copy {i + 1}/{sims}: " + ", ".join(f"{k} {sim[k][-1]:.2f}%" for k in laws), flush=True)
    pairs = {}
    names = list(laws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = np.asarray(sim[a]) - np.asarray(sim[b])
            real_d = real[a] - real[b]
            sd = float(d.std(ddof=1))
            pairs[f"{a}-{b}"] = {"real_pct": real_d, "sim_mean_pct": float(d.mean()), "sim_std_pct": sd,
                                 "exceeds_noise": bool(abs(real_d) > 2 * sd),
                                 "sim_frac_same_sign": float(np.mean(np.sign(d) == np.sign(real_d)))}
    return {"rel_std": rel_std, "sims": sims, "real_loo_mae_pct": real,
            "sim_loo_mae_pct": {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": v}
                                for k, v in sim.items()},
            "differences": pairs}


def compare_laws(runs, holdouts: dict[str, tuple[list[int], list[int]]] | None = None, laws=LAWS,
                 n_starts: int = 8) -> dict:
    """For every law: coefficients and in-sample RMSE(log), LOO errors, and for each named hold-out
    ``(train indices, test indices)`` the errors of a fit on the train runs predicting the test runs."""
    from . import law as L

    out: dict = {}
    for k in laws:
        f = L.fit(runs, k)
        lo = L.loo(runs, k, n_starts=n_starts)
        out[k] = {"coefficients": f.coefficients, "rmse_log": f.rmse_log,
                  "loo": {kk: v for kk, v in lo.items() if kk != "predicted"}, "loo_predicted": lo["predicted"]}
        for name, (tr, te) in (holdouts or {}).items():
            if len(tr) < len(L.get_law(k).param_names) or not te:
                out[k][name] = None  # too few runs to fit this law, or nothing to predict
                continue
            h = L.heldout_errors(runs.subset(tr), runs.subset(te), k)
            out[k][name] = {kk: v for kk, v in h.items() if kk != "predicted"}
    return out


def fmt_tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,.0f}"


def runs_table_md(rows: list[dict]) -> list[str]:
    """The per-run Markdown table of a summary (rows as read from a CSV or as numbers)."""
    md = ["| run | params | avg params | final params | tokens | eval loss |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | {int(float(r['params'])):,} | {float(r['avg_params']):,.0f} | "
                  f"{float(r['final_params']):,.0f} | {fmt_tokens(float(r['tokens']))} | {float(r['loss']):.4f} |")
    return md


def plot_loss_vs_params(rows: list[dict], coefs: dict[str, dict], path: str | Path, ylabel: str,
                        vmax: float = 0.8) -> None:
    """Two panels, loss vs ``avg_params`` (with the ``avg`` law) and vs ``final_params`` (``dense`` law),
    coloured by final sparsity, one marker per token budget; rows not in group ``grid`` get a black edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    budgets = sorted({float(r["tokens"]) for r in rows})
    markers = dict(zip(budgets, ["o", "s", "^", "D", "v", "P"]))
    for ax, col, title, law in ((axes[0], "avg_params", "average parameter count", "avg"),
                                (axes[1], "final_params", "final (non-zero) parameter count", "dense")):
        for r in rows:
            ax.scatter(float(r[col]), float(r["loss"]), c=[float(r["sparsity"])], cmap="viridis", vmin=0,
                       vmax=vmax, marker=markers[float(r["tokens"])], s=40,
                       edgecolors="k" if r.get("group", "grid") != "grid" else "none")
        c = coefs.get(law)
        if c:
            xs = np.array([float(r[col]) for r in rows])
            xs = np.logspace(math.log10(xs.min()) - 0.05, math.log10(xs.max()) + 0.05, 50)
            for D in budgets:
                ax.plot(xs, c["E"] + c["A"] / xs ** c["alpha"] + c["B"] / D ** c["beta"], "--", lw=0.8, color="gray")
        ax.set_xscale("log")
        if max(float(r[col]) for r in rows) / min(float(r[col]) for r in rows) > 10:  # decades are labelled
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(title)
        ax.set_title(f"loss vs {title}")
    axes[0].set_ylabel(ylabel)
    h = [plt.Line2D([], [], marker=markers[D], ls="", color="k", label=f"{fmt_tokens(D)} tokens") for D in budgets]
    axes[1].legend(handles=h, title="marker", fontsize=8)
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, vmax))
    fig.colorbar(sm, ax=axes.tolist(), label="final sparsity")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
