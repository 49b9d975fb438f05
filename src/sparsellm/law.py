"""Scaling-law forms and their fitting.

- ``avg``:     L = E + A / N_avg^alpha + B / D^beta       (Jin et al. 2025: average parameter count)
- ``dense``:   the same form on the *final* (non-zero) parameter count (Chinchilla applied naively)
- ``frantar``: L = (a (1-S)^b + c) N^-d + e D^-f + g      (Frantar et al. 2023; N non-zero params)

Fitting follows Chinchilla: minimize the Huber loss (delta 1e-3) of log-prediction minus log-loss
with L-BFGS, from the best points of a grid of starts. Every law is parametrized in log space
(E = exp(e), A = exp(a), ...), which keeps the positive coefficients positive and makes
log-prediction a log-sum-exp. Gradients come from torch autograd in float64.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


def _import_minimize():
    # scipy's bundled OpenBLAS spins its thread pool on every tiny L-BFGS-B call; on a busy
    # 2-core machine that made each fit 50x slower. It reads the thread count when first loaded.
    prev = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        from scipy.optimize import minimize
    finally:
        if prev is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = prev
    return minimize


minimize = _import_minimize()

REQUIRED = ("params", "avg_params", "final_params", "tokens", "loss")
LAWS = ("avg", "dense", "frantar")


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class Runs:
    params: np.ndarray
    avg_params: np.ndarray
    final_params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    sparsity: np.ndarray
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, idx) -> "Runs":
        idx = np.asarray(idx)
        return Runs(self.params[idx], self.avg_params[idx], self.final_params[idx], self.tokens[idx],
                    self.loss[idx], self.sparsity[idx], [self.names[i] for i in idx] if self.names else [])

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Runs":
        cols: dict[str, list[float]] = {c: [] for c in (*REQUIRED, "sparsity")}
        names = []
        for i, r in enumerate(rows):
            for c in REQUIRED:
                v = r.get(c)
                if v is None or v == "":
                    raise ValueError(f"row {i + 1}: column {c!r} is missing")
                try:
                    x = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"row {i + 1}: column {c!r} is not a number: {v!r}") from None
                if not math.isfinite(x) or x <= 0:
                    raise ValueError(f"row {i + 1}: column {c!r} must be a positive finite number, got {v!r}")
                cols[c].append(x)
            if float(r["final_params"]) > float(r["params"]) * (1 + 1e-9):
                raise ValueError(f"row {i + 1}: column 'final_params' exceeds 'params'")
            sv = r.get("sparsity")
            if sv not in (None, ""):
                try:
                    s = float(sv)
                except ValueError:
                    raise ValueError(f"row {i + 1}: column 'sparsity' is not a number: {sv!r}") from None
                if not 0 <= s < 1:
                    raise ValueError(f"row {i + 1}: column 'sparsity' must be in [0, 1), got {sv!r}")
            else:
                s = 1.0 - float(r["final_params"]) / float(r["params"])
            cols["sparsity"].append(max(0.0, s))
            names.append(str(r.get("name", i + 1)))
        if not rows:
            raise ValueError("no runs")
        return cls(**{c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}, names=names)


def read_runs(path: str | Path) -> Runs:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{path}: no such file")
    if p.is_dir():  # a sweep folder: its runs.csv
        if not (p / "runs.csv").is_file():
            raise ValueError(f"{path}: is a folder without a runs.csv; give the runs CSV (columns {list(REQUIRED)})")
        p = p / "runs.csv"
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{p}: missing column(s) {missing}; need at least {list(REQUIRED)}")
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start}); is this the runs CSV?") from None
    except csv.Error as e:
        raise ValueError(f"{p}: not a readable CSV: {e}") from None
    try:
        return Runs.from_rows(rows)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


# ---- law forms ----------------------------------------------------------------------------------
class Law:
    name: str
    param_names: tuple[str, ...]

    def features(self, runs: Runs) -> torch.Tensor:
        raise NotImplementedError

    def log_predict(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """theta (..., P), X (n, k) -> log loss (..., n)."""
        raise NotImplementedError

    def grid(self) -> np.ndarray:
        raise NotImplementedError

    def coefficients(self, theta: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, theta: np.ndarray, runs: Runs) -> np.ndarray:
        th = torch.as_tensor(theta, dtype=torch.float64)
        return torch.exp(self.log_predict(th, self.features(runs))).numpy()


class ChinchillaForm(Law):
    """L = E + A / N^alpha + B / D^beta with N taken from ``size_column``."""

    param_names = ("a", "b", "e", "alpha", "beta")

    def __init__(self, name: str, size_column: str) -> None:
        self.name = name
        self.size_column = size_column

    def features(self, runs: Runs) -> torch.Tensor:
        return torch.tensor(np.stack([np.log(getattr(runs, self.size_column)), np.log(runs.tokens)], 1))

    def log_predict(self, theta, X):
        a, b, e, al, be = theta.unbind(-1)
        logN, logD = X[:, 0], X[:, 1]
        terms = torch.stack([
            a[..., None] - al[..., None] * logN,
            b[..., None] - be[..., None] * logD,
            e[..., None].expand(*e.shape, X.shape[0]),
        ], -1)
        return torch.logsumexp(terms, -1)

    def log_predict_jac(self, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, e, al, be = theta
        logN, logD = X[:, 0], X[:, 1]
        t = np.stack([a - al * logN, b - be * logD, np.full_like(logN, e)], 1)
        m = t.max(1, keepdims=True)
        w = np.exp(t - m)
        lp = np.log(w.sum(1)) + m[:, 0]
        w /= w.sum(1, keepdims=True)
        J = np.stack([w[:, 0], w[:, 1], w[:, 2], -w[:, 0] * logN, -w[:, 1] * logD], 1)
        return lp, J

    def grid(self) -> np.ndarray:
        g = itertools.product(np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
                              np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))
        return np.array(list(g))

    def coefficients(self, theta) -> dict[str, float]:
        a, b, e, al, be = (float(x) for x in theta)
        return {"E": math.exp(e), "A": math.exp(a), "alpha": al, "B": math.exp(b), "beta": be}

    @staticmethod
    def theta_from(E: float, A: float, alpha: float, B: float, beta: float) -> np.ndarray:
        return np.array([math.log(A), math.log(B), math.log(E), alpha, beta])

    def loss(self, coef: dict[str, float], N, D):
        return coef["E"] + coef["A"] / np.asarray(N, float) ** coef["alpha"] + coef["B"] / np.asarray(D, float) ** coef["beta"]


class FrantarForm(Law):
    """L = (a (1-S)^b + c) N^-d + e D^-f + g, N = final non-zero parameters, S = sparsity."""

    name = "frantar"
    param_names = ("la", "b", "lc", "d", "le", "f", "lg")

    def features(self, runs: Runs) -> torch.Tensor:
        return torch.tensor(np.stack([np.log(runs.final_params), np.log(runs.tokens),
                                      np.log1p(-np.minimum(runs.sparsity, 1 - 1e-9))], 1))

    def log_predict(self, theta, X):
        la, b, lc, d, le, f, lg = theta.unbind(-1)
        logN, logD, log1mS = X[:, 0], X[:, 1], X[:, 2]
        n = X.shape[0]
        coef = torch.logsumexp(torch.stack([la[..., None] + b[..., None] * log1mS,
                                            lc[..., None].expand(*lc.shape, n)], -1), -1)
        terms = torch.stack([coef - d[..., None] * logN, le[..., None] - f[..., None] * logD,
                             lg[..., None].expand(*lg.shape, n)], -1)
        return torch.logsumexp(terms, -1)

    def log_predict_jac(self, theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        la, b, lc, d, le, f, lg = theta
        logN, logD, log1mS = X[:, 0], X[:, 1], X[:, 2]
        s = np.stack([la + b * log1mS, np.full_like(logN, lc)], 1)
        sm = s.max(1, keepdims=True)
        v = np.exp(s - sm)
        u = np.log(v.sum(1)) + sm[:, 0]
        v /= v.sum(1, keepdims=True)
        t = np.stack([u - d * logN, le - f * logD, np.full_like(logN, lg)], 1)
        m = t.max(1, keepdims=True)
        w = np.exp(t - m)
        lp = np.log(w.sum(1)) + m[:, 0]
        w /= w.sum(1, keepdims=True)
        J = np.stack([w[:, 0] * v[:, 0], w[:, 0] * v[:, 0] * log1mS, w[:, 0] * v[:, 1], -w[:, 0] * logN,
                      w[:, 1], -w[:, 1] * logD, w[:, 2]], 1)
        return lp, J

    def grid(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        lo = np.array([-5, 0, -5, 0.0, 0, 0.0, -1])
        hi = np.array([25, 3, 25, 2.0, 25, 2.0, 1.5])
        return lo + (hi - lo) * rng.random((6000, 7))

    def coefficients(self, theta) -> dict[str, float]:
        la, b, lc, d, le, f, lg = (float(x) for x in theta)
        return {"a": math.exp(la), "b": b, "c": math.exp(lc), "d": d, "e": math.exp(le), "f": f, "g": math.exp(lg)}


def get_law(name: str) -> Law:
    if name == "avg":
        return ChinchillaForm("avg", "avg_params")
    if name == "dense":
        return ChinchillaForm("dense", "final_params")
    if name == "frantar":
        return FrantarForm()
    raise ValueError(f"unknown law {name!r}; choose from {LAWS}")


# ---- fitting ------------------------------------------------------------------------------------
def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass
class Fit:
    law: str
    theta: np.ndarray
    coefficients: dict[str, float]
    objective: float
    rmse_log: float  # in-sample RMS of log-loss residuals

    def to_dict(self) -> dict:
        return {"law": self.law, "coefficients": self.coefficients, "objective": self.objective,
                "rmse_log": self.rmse_log}


def fit(runs: Runs, law: str | Law = "avg", delta: float = 1e-3, n_starts: int = 16,
        extra_starts: list[np.ndarray] | None = None) -> Fit:
    """Huber-on-log-residuals fit; L-BFGS from the ``n_starts`` best grid points (plus ``extra_starts``)."""
    L = get_law(law) if isinstance(law, str) else law
    if len(runs) < len(L.param_names):  # fewer points than coefficients: any answer fits, none means anything
        raise ValueError(f"{len(runs)} runs are too few to fit the {L.name} law's {len(L.param_names)} coefficients "
                         f"(need at least {len(L.param_names)})")
    X = L.features(runs)
    logy = torch.tensor(np.log(runs.loss))

    def obj_t(th: torch.Tensor) -> torch.Tensor:
        return _huber(L.log_predict(th, X) - logy, delta).sum(-1)

    grid = torch.tensor(L.grid())
    with torch.no_grad():
        vals = obj_t(grid)
    vals = torch.nan_to_num(vals, nan=float("inf"))
    starts = [grid[i].numpy() for i in torch.argsort(vals)[:n_starts].tolist()]
    starts += list(extra_starts or [])

    Xn, logyn = X.numpy(), logy.numpy()

    def f_and_g(x: np.ndarray):
        lp, J = L.log_predict_jac(x, Xn)
        r = lp - logyn
        a = np.abs(r)
        v = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum()
        return float(v), J.T @ np.clip(r, -delta, delta)

    best_x, best_v = None, float("inf")
    for x0 in starts:
        r = minimize(f_and_g, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B",
                     options={"maxiter": 1000, "gtol": 1e-10, "ftol": 1e-13})
        if np.isfinite(r.fun) and r.fun < best_v:
            best_x, best_v = r.x, float(r.fun)
    if best_x is None:
        raise RuntimeError("every fit diverged")
    res = L.log_predict(torch.tensor(best_x), X).numpy() - logy.numpy()
    return Fit(L.name, best_x, L.coefficients(best_x), best_v, float(np.sqrt(np.mean(res ** 2))))


def predict(f: Fit, runs: Runs) -> np.ndarray:
    return get_law(f.law).predict(f.theta, runs)


def bootstrap(runs: Runs, law: str = "avg", n: int = 100, seed: int = 0, level: float = 0.95,
              base: Fit | None = None, progress: bool = False) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of each coefficient from refits on resampled runs."""
    base = base or fit(runs, law)
    rng = np.random.default_rng(seed)
    samples: list[dict[str, float]] = []
    it = range(n)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"bootstrap {law}")
    for _ in it:
        idx = rng.integers(0, len(runs), len(runs))
        try:
            samples.append(fit(runs.subset(idx), law, n_starts=3, extra_starts=[base.theta]).coefficients)
        except (RuntimeError, ValueError):
            continue
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile([s[k] for s in samples], lo)), float(np.percentile([s[k] for s in samples], hi)))
            for k in base.coefficients}


def heldout_errors(train: Runs, test: Runs, law: str) -> dict:
    f = fit(train, law)
    pred = predict(f, test)
    r = np.log(pred) - np.log(test.loss)
    return {"rmse_log": float(np.sqrt(np.mean(r ** 2))), "mae_pct": float(np.mean(np.abs(pred / test.loss - 1)) * 100),
            "predicted": pred.tolist()}


def loo(runs: Runs, law: str, n_starts: int = 8, progress: bool = False) -> dict:
    """Leave-one-out: fit on all runs but one, predict it. Same protocol for every law."""
    preds = np.empty(len(runs))
    it = range(len(runs))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"loo {law}")
    for i in it:
        keep = [j for j in range(len(runs)) if j != i]
        f = fit(runs.subset(keep), law, n_starts=n_starts)
        preds[i] = predict(f, runs.subset([i]))[0]
    r = np.log(preds) - np.log(runs.loss)
    return {"rmse_log": float(np.sqrt(np.mean(r ** 2))), "mae_pct": float(np.mean(np.abs(preds / runs.loss - 1)) * 100),
            "max_abs_pct": float(np.max(np.abs(preds / runs.loss - 1)) * 100), "predicted": preds.tolist()}


def plot_pred_vs_actual(runs: Runs, preds: dict[str, np.ndarray], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(preds), figsize=(5.0 * len(preds), 4.4), squeeze=False)
    lo, hi = runs.loss.min() * 0.98, runs.loss.max() * 1.02
    for ax, (name, p) in zip(axes[0], preds.items()):
        sc = ax.scatter(runs.loss, p, c=runs.sparsity, cmap="viridis", vmin=0, vmax=0.8, s=28)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        err = np.mean(np.abs(np.asarray(p) / runs.loss - 1)) * 100
        ax.set_title(f"{name}\nmean |error| {err:.2f}%", fontsize=10)
        ax.set_xlabel("actual eval loss")
        ax.set_ylabel("predicted")
    fig.colorbar(sc, ax=axes[0].tolist(), label="final sparsity")
    if title:
        fig.suptitle(title, y=1.04)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
