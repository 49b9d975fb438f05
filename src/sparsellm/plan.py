"""Planning with a fitted average-parameter law.

Training compute is ``C = 6 * N_avg * D`` (linear parameters; compute proportional to density), and
the model served at inference has ``N_final = (1 - s) * N`` non-zero parameters. Under
``L = E + A / N_avg^alpha + B / D^beta``, sparse pre-training lets a run pick N_avg (quality and
training cost) and N_final (inference cost) separately. This module searches (N, s, D) for:

- :func:`best_plan`: lowest predicted loss for a compute budget and a maximum inference size;
- :func:`frontier`: for a target loss, the least training compute at each inference size, dense vs
  sparse — the Pareto frontier of training compute against inference parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from .schedule import schedule_from_compute_fractions


@lru_cache(maxsize=256)
def avg_density_for(sparsity: float, start_fraction: float = 0.25, end_fraction: float = 0.75) -> float:
    """Average density of the geometric 25%-75%-of-compute schedule (large-T limit, 1000 events)."""
    if sparsity == 0:
        return 1.0
    return schedule_from_compute_fractions(100_000, sparsity, start_fraction, end_fraction, 50).average_density()


@dataclass
class Plan:
    params: float  # dense (initial) linear parameters N
    sparsity: float
    final_params: float
    avg_params: float
    tokens: float
    compute: float
    loss: float

    def to_dict(self) -> dict:
        return asdict(self)


def _loss(coef: dict, n_avg, d):
    return coef["E"] + coef["A"] / np.power(n_avg, coef["alpha"]) + coef["B"] / np.power(d, coef["beta"])


def _check_coef(coef: dict) -> None:
    missing = [k for k in ("E", "A", "alpha", "B", "beta") if k not in coef]
    if missing:
        raise ValueError(f"law coefficients missing {missing} (need an avg-law fit)")


def best_plan(coef: dict, compute: float, inference_params: float, max_sparsity: float = 0.9,
              sparsities: np.ndarray | None = None, allow_smaller: bool = True) -> Plan:
    """Lowest predicted loss with training compute ``compute`` and at most ``inference_params`` non-zero
    parameters at the end. With ``allow_smaller`` a dense model below the cap is also considered."""
    _check_coef(coef)
    if compute <= 0 or inference_params <= 0:
        raise ValueError("compute and inference_params must be positive")
    if not 0 <= max_sparsity < 1:
        raise ValueError(f"max_sparsity must be in [0, 1), got {max_sparsity}")
    ss = np.linspace(0, max_sparsity, 91) if sparsities is None else np.asarray(sparsities)
    best: Plan | None = None
    cands = [(s, inference_params / (1 - s)) for s in ss]
    if allow_smaller:
        cands += [(0.0, n) for n in inference_params * np.logspace(-2, 0, 81)]
    for s, N in cands:
        n_avg = avg_density_for(round(float(s), 6)) * N
        D = compute / (6 * n_avg)
        L = float(_loss(coef, n_avg, D))
        if best is None or L < best.loss:
            best = Plan(float(N), float(s), float(N * (1 - s)), float(n_avg), float(D), float(compute), L)
    assert best is not None
    return best


def min_compute(coef: dict, target_loss: float, inference_params: float, sparsity: float) -> Plan | None:
    """Least compute to reach ``target_loss`` with this final size and sparsity (None if unreachable)."""
    N = inference_params / (1 - sparsity)
    n_avg = avg_density_for(round(float(sparsity), 6)) * N
    rest = target_loss - coef["E"] - coef["A"] / n_avg ** coef["alpha"]
    if rest <= 0:
        return None
    D = (coef["B"] / rest) ** (1 / coef["beta"])
    return Plan(float(N), float(sparsity), float(inference_params), float(n_avg), float(D), float(6 * n_avg * D),
                float(target_loss))


def frontier(coef: dict, target_loss: float, inference_params: list[float] | np.ndarray,
             max_sparsity: float = 0.9) -> list[dict]:
    """For each inference size: least-compute dense plan vs least-compute sparse plan."""
    _check_coef(coef)
    if target_loss <= coef["E"]:
        raise ValueError(f"target loss {target_loss} is below the law's irreducible loss E={coef['E']:.4g}")
    rows = []
    for n in inference_params:
        dense = min_compute(coef, target_loss, n, 0.0)
        sparse = None
        for s in np.linspace(0, max_sparsity, 91):
            p = min_compute(coef, target_loss, n, float(s))
            if p is not None and (sparse is None or p.compute < sparse.compute):
                sparse = p
        rows.append({"inference_params": float(n),
                     "dense_compute": dense.compute if dense else None,
                     "dense_tokens": dense.tokens if dense else None,
                     "sparse_compute": sparse.compute if sparse else None,
                     "sparse_params": sparse.params if sparse else None,
                     "sparse_sparsity": sparse.sparsity if sparse else None,
                     "sparse_tokens": sparse.tokens if sparse else None})
    # Pareto-optimal: no smaller-or-equal inference size reaches the target with less compute
    best = float("inf")
    for r in sorted(rows, key=lambda r: r["inference_params"]):
        c = r["sparse_compute"] if r["sparse_compute"] is not None else float("inf")
        r["pareto"] = c < best
        best = min(best, c)
    return rows


def plot_frontier(rows: list[dict], path: str, target_loss: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("dense_compute", "dense"), ("sparse_compute", "sparse pre-training (best sparsity)")):
        pts = [(r["inference_params"], r[key]) for r in rows if r[key] is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, "o-", label=label, ms=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("inference parameters (non-zero, linear)")
    ax.set_ylabel("training FLOPs to reach target")
    ax.set_title(f"Pareto frontier at loss {target_loss:.3g}")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
