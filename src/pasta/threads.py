"""How many CPU threads torch should use on a machine it shares.

torch's default is one thread per core. When another process keeps a core busy, the threads of every matmul wait
on the slowest (descheduled) one: on this project's 2-core machine 96 tokens took 15-17 s instead of 3.9 s (4x),
while one thread took 6.2 s. `auto` counts the cores other processes leave free and uses that many threads (at
least one): it samples the kernel's per-CPU counters (`/proc/stat`, the CPUs this process may run on) and
subtracts this process's own CPU time (`/proc/self/stat`), so it works while we are decoding too. A long-running
caller (the server's worker, an evaluation loop) keeps a `ThreadGovernor` and calls `tick()` between steps; it
re-samples at most every `interval_s` and changes the thread count only when the free-core count changes.

An explicit `OMP_NUM_THREADS` is respected as an upper bound (a user or a scheduler that set it meant it). Off Linux
(no /proc), `auto` keeps torch's default.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    busy: float  # busy ticks summed over our CPUs (user, nice, system, irq, softirq, steal)
    total: float  # all ticks summed over our CPUs
    own: float  # this process's user + system ticks
    cpus: int


def _cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def sample(stat: str = "/proc/stat", self_stat: str = "/proc/self/stat") -> CpuSample | None:
    """Counters now, or None where the kernel does not expose them."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
        with open(self_stat) as f:
            own_fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    cpus = _cpus()
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [float(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        busy += ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
        total += sum(ticks)
    own = float(own_fields[11]) + float(own_fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return CpuSample(time.monotonic(), busy, total, own, len(cpus))


def free_cores(before: CpuSample, after: CpuSample) -> float:
    """Cores that processes other than this one left free between two samples."""
    total = after.total - before.total
    if total <= 0:
        return float(after.cpus)
    busy_cores = after.cpus * (after.busy - before.busy) / total
    wall_ticks = max(1e-9, (after.at - before.at) * _TICKS)
    own_cores = (after.own - before.own) / wall_ticks
    others = max(0.0, busy_cores - own_cores)
    return max(0.0, after.cpus - others)


def env_cap() -> int | None:
    """`OMP_NUM_THREADS` when set to a positive integer."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def threads_for(free: float, cpus: int) -> int:
    """One thread per free core (a core counts as free when others use less than half of it), at least one, at
    most `OMP_NUM_THREADS` when that is set."""
    cap = env_cap()
    return max(1, min(cpus if cap is None else min(cpus, cap), int(free + 0.5)))


def parse_threads(value: str | int | None) -> int | str | None:
    """CLI value: a positive integer, "auto", or "torch" (torch's own default). Raises ValueError otherwise."""
    if value is None or value == "auto":
        return "auto"
    if value == "torch":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer, 'auto' or 'torch', got {value!r}") from None
    if n < 1:
        raise ValueError(f"threads must be a positive integer, 'auto' or 'torch', got {value!r}")
    return n


class ThreadGovernor:
    """Keeps torch's thread count at the free-core count (`auto`) or at a fixed value."""

    def __init__(self, threads: int | str | None = "auto", *, interval_s: float = 5.0, sample_s: float = 0.2) -> None:
        """`sample_s`: how long `auto` watches the counters at start-up before choosing."""
        self.mode = parse_threads(threads) if isinstance(threads, str) else threads  # None: torch decides
        self.interval_s = interval_s
        self.changes: list[tuple[float, int]] = []  # (monotonic time, threads) each time the count changed
        self._last: CpuSample | None = None
        if isinstance(self.mode, int):
            self._set(self.mode)
        elif self.mode == "auto":
            self._last = sample()  # None off Linux: torch keeps its default
            if self._last is not None:
                time.sleep(sample_s)
                self._resample()

    def _set(self, threads: int) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            self.changes.append((time.monotonic(), threads))

    def tick(self) -> None:
        """Re-sample if `interval_s` has passed (cheap otherwise: one clock read)."""
        if self.mode != "auto" or self._last is None or time.monotonic() - self._last.at < self.interval_s:
            return
        self._resample()

    def _resample(self) -> None:
        """Set the thread count from the free cores since the last sample."""
        now = sample()
        if now is None:
            return
        self._set(threads_for(free_cores(self._last, now), now.cpus))
        self._last = now
