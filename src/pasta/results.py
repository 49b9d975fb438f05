"""What a decoded request returns: the answer in both forms and its statistics (model-free)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .decoding import Decoding, ThreadTrace


@dataclass
class RunStats:
    mode: str
    steps: int  # forward passes, prefill included
    tokens: int  # sampled tokens, all threads (EOS included)
    threads: int  # async chunks
    critical_path: int  # steps an unlimited-thread schedule needs
    theoretical_speedup: float  # tokens / steps
    wall_s: float
    prompt_tokens: int
    cache_tokens: int  # KV-cache length at the end: prompt + tokens fed
    tokens_per_thread: list[int]
    timeline: list[ThreadTrace]
    warnings: list[str] = field(default_factory=list)
    finish_reason: str = "eos"  # eos | length (the request's token cap) | guard (a runtime guard ended it)
    guards: list[str] = field(default_factory=list)  # runtime guards that fired (see DecodeLimits)
    outline_topics_fed: int = 0  # promise topics fed from an outline line (DecodeLimits.outline_topics)
    outline_blocked: list[str] = field(default_factory=list)  # outline copies banned (DecodeLimits.outline_no_repeat)
    drafted: int = 0  # drafted tokens the model confirmed (DecodeLimits.draft_promises; they took no pass of their own)
    drafts_rejected: int = 0  # promise drafts the model cut short by choosing another token
    drafted_plain: int = 0  # of `drafted`, plain text (list numbers) rather than tag syntax
    # The remote backend only: requests, prompt tokens re-sent, peak concurrency (`backends.openai.RemoteStats`).
    # Its steps are the critical path (it cannot see the server's forward passes) and cache_tokens is 0.
    remote: Any = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str  # the plain answer, reading order
    annotated: str  # storage form, with tags
    stats: RunStats
    # Teacher forcing / diagnostics: per sampled row, (step, thread index, log-prob of the token taken).
    logprobs: list[tuple[int, int, float]] = field(default_factory=list)
    # With record_logits: per step, (thread indices, logits [rows, vocab]).
    logits: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "annotated": self.annotated, "stats": self.stats.to_dict()}


def build_stats(decoding: Decoding, wall_s: float, cache_tokens: int) -> RunStats:
    return RunStats(
        mode=decoding.mode,
        steps=decoding.steps,
        tokens=decoding.sampled,
        threads=len(decoding.threads) - 1,
        critical_path=decoding.critical_path(),
        theoretical_speedup=decoding.sampled / max(1, decoding.steps),
        wall_s=wall_s,
        prompt_tokens=len(decoding.prompt_ids),
        cache_tokens=cache_tokens,
        tokens_per_thread=[t.trace.sampled for t in decoding.threads],
        timeline=[t.trace for t in decoding.threads],
        warnings=list(decoding.warnings),
        finish_reason=decoding.finish_reason,
        guards=list(decoding.guards),
        outline_topics_fed=decoding.outline_topics_fed,
        outline_blocked=list(getattr(decoding, "outline_blocked", [])),
        drafted=getattr(decoding, "drafted", 0),
        drafts_rejected=getattr(decoding, "draft_rejected", 0),
        drafted_plain=getattr(decoding, "drafted_plain", 0),
    )
