"""Next-token choice: greedy, or temperature + top-p with seeded random streams, one per thread of a request.

Why per thread: asynchronous decoding samples several threads in one step, sequential decoding one at a time. With
one generator per request the k-th draw would go to different threads in the two modes, so the same request and
seed would give two different answers. With one stream per thread, thread t's i-th token always uses its stream's
i-th draw, whatever else was sampled in the step: both modes sample the same answer (given the same logits), and
`pasta generate --compare` compares like with like at any temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Temperatures below this are greedy (vLLM's convention): dividing logits by 1e-40 overflows to inf/nan, and a
# distribution that sharp is the argmax anyway.
GREEDY_BELOW = 1e-5
# Seeds a client may send: the signed or unsigned 64-bit range (torch's generators take 64 bits).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW) = greedy
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not SEED_MIN <= self.seed <= SEED_MAX):
            raise ValueError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def streams(self) -> RandomStreams | None:
        """The request's random streams (None when greedy: nothing is drawn)."""
        if self.greedy:
            return None
        return RandomStreams(self.seed if self.seed is not None else torch.seed())


_MASK64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class RandomStreams:
    """One `torch.Generator` per thread of a request, created on first use. Thread 0 (the main thread) is seeded
    with the request's seed itself, so a request without chunks draws what one seeded generator would; thread t
    with a splitmix64 mix of (seed, t), so streams do not overlap."""

    def __init__(self, seed: int) -> None:
        self.seed = seed % 2**64
        self._generators: dict[int, torch.Generator] = {}

    def __call__(self, thread: int) -> torch.Generator:
        generator = self._generators.get(thread)
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(self.seed if thread == 0 else _splitmix64(self.seed ^ _splitmix64(thread)))
            self._generators[thread] = generator
        return generator


def sample(logits: torch.Tensor, params: SamplingParams, streams: RandomStreams | None,
           threads: list[int] | None = None) -> list[int]:
    """logits [n, vocab] -> one token id per row. `threads[i]`: the thread of row i, whose stream draws it (default:
    row i is thread i)."""
    if params.greedy:
        return logits.argmax(dim=-1).tolist()
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least the most likely token).
        drop = cumulative - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if streams is None:  # sampling without a seed object: torch's global generator
        return torch.multinomial(probs, 1).squeeze(-1).tolist()
    threads = list(range(len(probs))) if threads is None else threads
    if len(threads) != len(probs):
        raise ValueError(f"sample: {len(probs)} logit rows but {len(threads)} thread ids")
    return [int(torch.multinomial(row, 1, generator=streams(t))) for row, t in zip(probs, threads)]
