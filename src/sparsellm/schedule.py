"""Density schedules for gradual pruning, and the average parameter count they imply.

Convention used everywhere in this package: training steps are numbered ``0 .. total_steps - 1``.
A pruning event scheduled at step ``t`` is applied *before* the forward pass of step ``t``, so
``density(t)`` is the fraction of prunable weights that step ``t`` trains with. The average density is
the plain mean of ``density(t)`` over all steps; times the prunable parameter count it is the
"average parameter count" of Jin et al. (2025), and it is proportional to training FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Kind = Literal["geometric", "cubic", "oneshot"]
KINDS: tuple[str, ...] = ("geometric", "cubic", "oneshot")


@dataclass(frozen=True)
class PruningSchedule:
    """When to prune and to which density.

    geometric: the authors' schedule. Events at ``start_step + k * frequency`` for
        ``k = 0 .. n - 1`` with ``n = (end_step - start_step) // frequency + 1``; each removes a fraction
        ``1 - (1 - s) ** (1 / n)`` of the weights still alive, so after event ``k`` the density is
        ``(1 - s) ** ((k + 1) / n)``.
    cubic: Zhu & Gupta (2017): at event step ``t`` the sparsity is ``s * (1 - (1 - (t - start) / (end - start)) ** 3)``
        (so the first event, at ``start_step``, prunes nothing and the last reaches ``s``).
    oneshot: a single event at ``start_step`` straight to ``1 - s``.
    """

    total_steps: int
    sparsity: float
    start_step: int = 0
    end_step: int = 0
    frequency: int = 100
    kind: Kind = "geometric"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.frequency < 1:
            raise ValueError(f"frequency must be >= 1, got {self.frequency}")
        if not 0 <= self.start_step < self.total_steps:
            raise ValueError(
                f"start_step must be in [0, total_steps={self.total_steps}), got {self.start_step}"
            )
        if self.kind != "oneshot" and not self.start_step <= self.end_step < self.total_steps:
            raise ValueError(
                f"end_step must be in [start_step={self.start_step}, total_steps={self.total_steps}), "
                f"got {self.end_step}"
            )

    # ---- events -------------------------------------------------------------------------------
    @property
    def num_events(self) -> int:
        if self.sparsity == 0.0:
            return 0
        if self.kind == "oneshot":
            return 1
        return (self.end_step - self.start_step) // self.frequency + 1

    def event_steps(self) -> list[int]:
        return [self.start_step + k * self.frequency for k in range(self.num_events)]

    def event_densities(self) -> list[float]:
        """Target density after each event (same order as :meth:`event_steps`)."""
        n = self.num_events
        if n == 0:
            return []
        s = self.sparsity
        if self.kind == "oneshot":
            return [1.0 - s]
        if self.kind == "geometric":
            return [(1.0 - s) ** ((k + 1) / n) for k in range(n)]
        span = self.end_step - self.start_step
        out = []
        for t in self.event_steps():
            frac = 1.0 if span == 0 else (t - self.start_step) / span
            out.append(1.0 - s * (1.0 - (1.0 - frac) ** 3))
        out[-1] = 1.0 - s  # floor division of the span may leave the last event short of end_step
        return out

    def target_at_event(self, step: int) -> float | None:
        """Target density if ``step`` is an event step, else None."""
        if self.num_events == 0 or step < self.start_step:
            return None
        off = step - self.start_step
        if off % self.frequency:
            return None
        k = off // self.frequency
        if k >= self.num_events:
            return None
        return self.event_densities()[k]

    # ---- densities over training ---------------------------------------------------------------
    def densities(self) -> np.ndarray:
        """Density used by every step, shape ``(total_steps,)``."""
        ev = np.asarray(self.event_steps(), dtype=np.int64)
        rho = np.asarray([1.0, *self.event_densities()], dtype=np.float64)
        # number of events at or before each step indexes the density in force
        return rho[np.searchsorted(ev, np.arange(self.total_steps), side="right")]

    def density_at(self, step: int) -> float:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step must be in [0, {self.total_steps}), got {step}")
        rho = 1.0
        for t, r in zip(self.event_steps(), self.event_densities()):
            if t <= step:
                rho = r
        return rho

    @property
    def final_density(self) -> float:
        return 1.0 - self.sparsity

    def average_density(self) -> float:
        return float(self.densities().mean())

    def average_params(self, prunable_params: int, non_prunable_params: int = 0) -> float:
        """Average parameter count: average density x prunable params (+ params never pruned)."""
        return self.average_density() * prunable_params + non_prunable_params

    def final_params(self, prunable_params: int, non_prunable_params: int = 0) -> float:
        return self.final_density * prunable_params + non_prunable_params

    def training_flops(self, prunable_params: int, tokens_per_step: int) -> float:
        """6 x (non-zero linear params) x tokens, summed over steps (attention and embeddings ignored)."""
        return 6.0 * float(self.densities().sum()) * prunable_params * tokens_per_step

    def summary(self, prunable_params: int | None = None, non_prunable_params: int = 0,
                tokens_per_step: int | None = None) -> dict:
        out: dict = {**asdict(self), "num_events": self.num_events,
                     "average_density": self.average_density(), "final_density": self.final_density}
        d = self.densities()
        c = np.cumsum(d)
        out["start_compute_fraction"] = float((c[self.start_step] - d[self.start_step]) / c[-1])
        end = self.event_steps()[-1] if self.num_events else self.start_step
        out["end_compute_fraction"] = float((c[end] - d[end]) / c[-1])
        if prunable_params is not None:
            out["prunable_params"] = prunable_params
            out["average_params"] = self.average_params(prunable_params, non_prunable_params)
            out["final_params"] = self.final_params(prunable_params, non_prunable_params)
            if tokens_per_step is not None:
                out["training_flops"] = self.training_flops(prunable_params, tokens_per_step)
        return out


def _build(total_steps: int, sparsity: float, start: int, end: int, frequency: int, kind: Kind) -> PruningSchedule:
    # keep (end - start) a multiple of frequency so that the last event lands exactly on end_step
    end = max(start, end)
    end = start + ((end - start) // frequency) * frequency
    return PruningSchedule(total_steps, sparsity, start, end, frequency, kind)


def schedule_from_compute_fractions(
    total_steps: int,
    sparsity: float,
    start_fraction: float = 0.25,
    end_fraction: float = 0.75,
    frequency: int = 100,
    kind: Kind = "geometric",
    max_iter: int = 200,
) -> PruningSchedule:
    """Place start/end so they fall at the given fractions of total training *compute*.

    Compute per step is proportional to density, so the answer is a fixed point: where the pruning
    window lies changes the total compute, which moves the window. We iterate to the fixed point; for
    80% sparsity, 25%-75% of compute lands near 10%-50% of steps, as the paper says.
    """
    if not 0.0 <= start_fraction <= end_fraction < 1.0:
        raise ValueError(
            f"need 0 <= start_fraction <= end_fraction < 1, got {start_fraction}, {end_fraction}"
        )
    start = min(int(round(start_fraction * total_steps)), total_steps - 1)
    end = min(int(round(end_fraction * total_steps)), total_steps - 1)
    seen: set[tuple[int, int]] = set()
    sched = _build(total_steps, sparsity, start, end, frequency, kind)
    for _ in range(max_iter):
        c = np.concatenate([[0.0], np.cumsum(sched.densities())])  # c[t] = compute before step t
        total = c[-1]
        new_start = int(np.searchsorted(c, start_fraction * total, side="left"))
        new_end = int(np.searchsorted(c, end_fraction * total, side="left"))
        new_start = min(new_start, total_steps - 1)
        new_end = min(max(new_end, new_start), total_steps - 1)
        key = (new_start, new_end)
        if key == (sched.start_step, sched.end_step) or key in seen:
            break
        seen.add(key)
        sched = _build(total_steps, sparsity, new_start, new_end, frequency, kind)
    return sched


def geometric_average_density_continuous(sparsity: float, start_frac: float, end_frac: float) -> float:
    """Closed form of the average density of a geometric schedule in the limit of many events.

    Density is 1 before ``start_frac``, decays as ``(1-s)^x`` across the window, and is ``1-s`` after.
    """
    if sparsity == 0.0:
        return 1.0
    r = 1.0 - sparsity
    w = end_frac - start_frac
    mid = w * (1.0 - r) / -math.log(r) if w > 0 else 0.0
    return start_frac + mid + (1.0 - end_frac) * r
