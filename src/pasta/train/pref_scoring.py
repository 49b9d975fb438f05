"""Stage 2's objective and ranking, as pure functions: the BoNBoN loss, a sample's speed term, its score, and the
(best, worst) pair of a prompt's samples."""

from __future__ import annotations

import math

import torch


def bonbon_loss(logp_best: torch.Tensor, logp_worst: torch.Tensor, ref_logp_best: torch.Tensor,
                ref_logp_worst: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha * NLL(best) + (1 - alpha) * IPO term; elementwise over a batch of pairs (sequence log-probs)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    margin = (logp_best - logp_worst) - (ref_logp_best - ref_logp_worst)
    return alpha * (-logp_best) + (1 - alpha) * (margin - 1 / (2 * beta)) ** 2


def sample_speedup(stats, critical_path: int) -> float:
    """The speed term of a sample's score: plain-text tokens (+1 for EOS) over the critical path, for an answer a
    user would accept; 0 for a runaway one (cut by the token cap, ended or trimmed by a guard, repeated topics or
    near-duplicate chunks), so every failure ranks below every plain answer (speedup 1)."""
    if not stats.complete or stats.guards or stats.repeated_topics or stats.duplicate_chunks:
        return 0.0
    return (stats.plain_tokens + 1) / max(1, critical_path)


def score_sample(speedup: float, quality: float | None, lam: float) -> tuple[float, float]:
    """Sort key (higher is better). lambda = inf: quality first, speedup breaks ties."""
    q = 0.0 if quality is None else quality
    if math.isinf(lam):
        return (q, speedup)
    return (speedup + lam * q, 0.0)


def select_pair(samples: list[dict], lam: float) -> tuple[dict, dict] | None:
    """(best, worst) by score, or None when every sample scores the same (nothing to learn)."""
    if len(samples) < 2:
        return None
    keyed = sorted(samples, key=lambda s: score_sample(s["speedup"], s["quality"], lam))
    worst, best = keyed[0], keyed[-1]
    if score_sample(best["speedup"], best["quality"], lam) == score_sample(worst["speedup"], worst["quality"], lam):
        return None
    return best, worst
