"""Aggregates for the evaluation: geometric-mean speedups with bootstrap intervals, win rate with its standard
error, and a length-controlled win rate.

Win rates are in percent (as AlpacaEval reports them); a preference is the probability, in [0, 1], that the
judged system's answer is better than the baseline's (0.5 = tie).

Length-controlled win rate (AlpacaEval 2's idea, reduced to one system against one baseline):
fit, by maximum likelihood with the soft preferences as targets, the logistic model

    P(system wins on prompt i) = sigmoid(theta_0 + theta_1 * tanh(d_i / s))

where d_i = len(system answer_i) - len(baseline answer_i) in characters and s is the standard deviation of
d over the prompts (s = 1 when all d_i are equal). The LC win rate is the model's prediction with the length
term removed: 100 * sigmoid(theta_0), i.e. the win rate the system would have if its answers were as long as
the baseline's. A small L2 penalty (on theta_1 mostly; a tiny one on theta_0) keeps the fit finite when the
preferences are all 0 or all 1. AlpacaEval 2 also has an instruction-difficulty term fitted across many models;
with one system and one baseline it is not identifiable and is left out. Its standard error: the delta method on
a sandwich (robust) covariance of theta_0, which matches the plain win rate's SE when lengths carry no signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "geomean",
    "bootstrap_geomean_ci",
    "win_rate",
    "LengthControlled",
    "length_controlled_win_rate",
]


def _positive(values: Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise ValueError(f"{what}: every value must be a finite number > 0, got {x.tolist()}")
    return x


def geomean(values: Sequence[float]) -> float:
    """exp(mean(log x)): the right mean for ratios such as speedups (a 2x and a 0.5x average to 1x)."""
    return float(np.exp(np.mean(np.log(_positive(values, "geomean")))))


def bootstrap_geomean_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the geometric mean: resample the prompts with replacement."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    logs = np.log(_positive(values, "bootstrap"))
    rng = np.random.default_rng(seed)
    index = rng.integers(0, logs.size, size=(resamples, logs.size))
    means = logs[index].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(np.exp(lo)), float(np.exp(hi))


def wilson_interval(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion: how far a share of n answers (guards on 4 of 23 forks) can move by
    chance. Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 of n."""
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(preferences: Sequence[float]) -> tuple[float, float]:
    """(win rate %, standard error %): the mean preference and std(ddof=1)/sqrt(n); SE is 0 for one prompt."""
    p = np.asarray(list(preferences), dtype=float)
    if p.size == 0:
        raise ValueError("win_rate: no preferences")
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError(f"win_rate: preferences must be numbers in [0, 1], got {p.tolist()}")
    se = float(p.std(ddof=1) / math.sqrt(p.size)) if p.size > 1 else 0.0
    return 100 * float(p.mean()), 100 * se


@dataclass(frozen=True)
class LengthControlled:
    lc_win_rate: float  # percent
    lc_win_rate_se: float  # percent
    intercept: float  # theta_0
    length_coef: float  # theta_1
    length_scale: float  # s


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def length_controlled_win_rate(preferences: Sequence[float], length_diffs: Sequence[float], *,
                               l2_length: float = 0.05, l2_intercept: float = 1e-3,
                               max_iter: int = 100) -> LengthControlled:
    """See the module docstring. Newton's method on the penalized (convex) log-likelihood."""
    p = np.asarray(list(preferences), dtype=float)
    d = np.asarray(list(length_diffs), dtype=float)
    if p.size == 0 or p.size != d.size:
        raise ValueError(f"length_controlled_win_rate: need as many length differences as preferences "
                         f"({d.size} vs {p.size}), at least one")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):  # NaN fails every comparison: check it apart
        raise ValueError(f"length_controlled_win_rate: preferences must be numbers in [0, 1], got {p.tolist()}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"length_controlled_win_rate: length differences must be finite, got {d.tolist()}")
    scale = float(d.std()) if d.size > 1 and d.std() > 0 else 1.0
    x = np.stack([np.ones_like(d), np.tanh(d / scale)], axis=1)
    reg = np.array([l2_intercept, l2_length])
    theta = np.zeros(2)
    hessian = np.eye(2)
    for _ in range(max_iter):
        mu = _sigmoid(x @ theta)
        grad = x.T @ (mu - p) + reg * theta
        hessian = (x * (mu * (1 - mu))[:, None]).T @ x + np.diag(reg)
        step = np.linalg.solve(hessian, grad)
        theta = theta - step
        if np.max(np.abs(step)) < 1e-10:
            break
    mu = _sigmoid(x @ theta)
    hessian = (x * (mu * (1 - mu))[:, None]).T @ x + np.diag(reg)
    # Sandwich (robust) covariance H^-1 (sum g_i g_i^T) H^-1 * n/(n-1): the preferences are soft, not Bernoulli
    # draws, so the model-based H^-1 would overstate the noise when every preference is near 0.5.
    scores = x * (mu - p)[:, None]
    h_inv = np.linalg.inv(hessian)
    correction = p.size / (p.size - 1) if p.size > 1 else 1.0
    var0 = float((h_inv @ (scores.T @ scores) @ h_inv)[0, 0] * correction)
    lc = float(_sigmoid(np.array(theta[0])))
    se = lc * (1 - lc) * math.sqrt(max(var0, 0.0))
    return LengthControlled(100 * lc, 100 * se, float(theta[0]), float(theta[1]), scale)
