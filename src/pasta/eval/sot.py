"""Skeleton-of-Thought (Ning et al., ICLR 2024), prompted, as a baseline for PASTA.

1. Skeleton: the model is asked for a short numbered list of points (the SoT paper's skeleton prompt, with the
   answer prefilled with "1."), decoded sequentially by the interpreter.
2. Expansion: each point gets the SoT paper's point-expanding prompt ("continue and only continue the writing of
   point i", answer prefilled with "i. <point>"), and all points are decoded **in parallel through the same
   engine** (`pasta.engine.ModelRunner`): one KV cache, one forward pass per step, every running point
   contributing one row. The point prompts share a long common prefix (question + skeleton); it is prefilled
   once and every point's tokens attend to it plus their own tokens only (a custom 4D mask), each point's
   positions continuing from the shared prefix. This is exactly a batch of independent requests with prefix
   sharing: each point decodes as it would alone (tested against one-by-one decoding).

Why not a Pasta-Lang program (a forced main thread with one promise per point)? SoT gives each point its own
instruction, which a chunk cannot have (a chunk's prefix is the main thread's text); forcing promise tags through
the main thread would cost one decoding step per tag token; and a model without Pasta training has never seen
the tags. The direct batch keeps SoT as its authors ran it (batched point expansion) on the same engine.

If the skeleton has no numbered point, the answer is decoded normally (sequentially) and the record says
`fallback`; the skeleton's cost is still counted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import torch

from ..decoding import DecodeLimits
from ..engine import StepInputs
from ..sampling import SamplingParams, sample

__all__ = ["SKELETON_PROMPT", "POINT_PROMPT", "parse_points", "SoTResult", "skeleton_of_thought", "expand_points"]

SKELETON_PROMPT = (
    "You're an organizer responsible for only giving the skeleton (not the full content) for answering the question. "
    "Provide the skeleton in a list of points (numbered 1., 2., 3., etc.) to answer the question. Instead of writing "
    "a full sentence, each skeleton point should be very short with only 3~5 words. Generally, the skeleton should "
    "have 3~10 points. Now, please provide the skeleton for the following question.\n{question}\nSkeleton:"
)
POINT_PROMPT = (
    "You're responsible for continuing the writing of one and only one point in the overall answer to the following "
    "question.\n\n{question}\n\nThe skeleton of the answer is\n\n{skeleton}\n\nContinue and only continue the "
    "writing of point {index}. Write it **very shortly** in 1~2 sentence and do not continue with other points!"
)
SKELETON_PREFILL = "1."

_POINT_LINE = re.compile(r"^\s*(\d{1,2})\s*[.)]\s*(.+?)\s*$")


def parse_points(skeleton: str, max_points: int = 10, *, dedupe: bool = True) -> list[tuple[int, str]]:
    """Numbered points of a skeleton, in order: ("1. Sleep well" -> (1, "Sleep well")). Numbering must count up
    from 1 (a repeated or skipped number ends the list, as when the model starts a second list), and a point that
    repeats an earlier one ends it too (a small model's skeleton loops: "1. X 2. X, Jr. 3. X, Jr. ...")."""
    from .answer_stats import near_duplicate

    points: list[tuple[int, str]] = []
    for line in skeleton.splitlines():
        m = _POINT_LINE.match(line)
        if m is None:
            continue
        index, text = int(m.group(1)), m.group(2).strip()
        if index != len(points) + 1 or not text:
            break
        if dedupe and any(near_duplicate(text, earlier, threshold=0.6) for _, earlier in points):
            break
        points.append((index, text))
        if len(points) >= max_points:
            break
    return points


@dataclass
class SoTResult:
    text: str
    skeleton: str
    points: list[tuple[int, str]]
    expansions: list[str]
    steps: int
    tokens: int
    critical_path: int
    wall_s: float
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False  # a budget cut the answer (the request's, or a point's max_thread_tokens)


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for k in range(n):
        first = seqs[0][k]
        if any(s[k] != first for s in seqs[1:]):
            return k
    return n


@dataclass
class Expansion:
    outputs: list[list[int]]  # sampled tokens per request, EOS excluded
    sampled: list[int]  # sampled tokens per request, EOS included
    steps: int
    shared: int  # tokens of the shared prefix
    wall_s: float


def expand_points(interp, requests: list[list[int]], *, sampling: SamplingParams | None = None,
                  max_tokens_each: int = 256, max_total: int | None = None) -> Expansion:
    """Decode several requests in parallel over one KV cache: their longest common token prefix is fed once, then
    one forward pass per step carries one token of every running request. Greedy results equal decoding each
    request alone. Stops a request at EOS or `max_tokens_each`, all of them at `max_total` sampled tokens."""
    if not requests or any(not r for r in requests):
        raise ValueError("expand_points needs at least one non-empty request")
    sampling = sampling or SamplingParams()
    streams = sampling.streams()  # one stream per point, as if each were decoded alone
    runner = interp.runner
    eos = interp.eos_ids
    shared = min(_common_prefix(requests), min(len(r) for r in requests) - 1)
    positions: list[int] = list(range(shared))
    token_ids: list[int] = list(requests[0][:shared])
    rows: list[torch.Tensor] = [torch.ones(i + 1, dtype=torch.bool) for i in range(shared)]
    logit_rows: list[int] = []
    own_slots: list[list[int]] = [[] for _ in requests]
    next_pos = [shared] * len(requests)

    def add(i: int, token: int, step_tokens, step_slots, step_positions, step_rows) -> None:
        slot = len(positions)
        own_slots[i].append(slot)
        row = torch.zeros(slot + 1, dtype=torch.bool)
        row[:shared] = True
        row[torch.tensor(own_slots[i])] = True
        positions.append(next_pos[i])
        next_pos[i] += 1
        step_tokens.append(token)
        step_slots.append(slot)
        step_positions.append(positions[-1])
        step_rows.append(row)

    step_tokens, step_slots, step_pos, step_rows = list(token_ids), list(range(shared)), list(positions), list(rows)
    for i, request in enumerate(requests):
        for token in request[shared:]:
            add(i, token, step_tokens, step_slots, step_pos, step_rows)
        logit_rows.append(len(step_tokens) - 1)
    outputs: list[list[int]] = [[] for _ in requests]
    sampled = [0] * len(requests)
    running = list(range(len(requests)))
    cache = runner.new_cache()
    steps = total = 0
    started = time.perf_counter()
    while running:
        logits = runner.forward(cache, StepInputs(step_tokens, step_slots, step_pos, step_rows, logit_rows), positions)
        steps += 1
        chosen = sample(logits, sampling, streams, running)
        still: list[int] = []
        for i, token in zip(running, chosen):
            if max_total is not None and total >= max_total:
                break  # the request budget ran out within this step: later rows' tokens are not taken
            sampled[i] += 1
            total += 1
            if token in eos:
                continue
            outputs[i].append(token)
            if sampled[i] < max_tokens_each:
                still.append(i)
        if max_total is not None and total >= max_total:
            still = []
        running = still
        step_tokens, step_slots, step_pos, step_rows, logit_rows = [], [], [], [], []
        for i in running:
            add(i, outputs[i][-1], step_tokens, step_slots, step_pos, step_rows)
            logit_rows.append(len(step_tokens) - 1)
    return Expansion(outputs, sampled, steps, shared, time.perf_counter() - started)


def skeleton_of_thought(interp, question: str, *, sampling: SamplingParams | None = None,
                        limits: DecodeLimits | None = None, skeleton_tokens: int = 128,
                        max_points: int = 10) -> SoTResult:
    """The SoT answer to `question` and its cost (steps, sampled tokens, critical path, decode wall time).
    `limits.max_new_tokens` bounds skeleton and expansions together; `limits.max_thread_tokens` each point."""
    limits = limits or DecodeLimits()
    tok = interp.tokenizer
    skeleton_ids = interp.prompt_ids(SKELETON_PROMPT.format(question=question)) + tok.encode(
        SKELETON_PREFILL, add_special_tokens=False)
    sk_limits = DecodeLimits(max_new_tokens=min(skeleton_tokens, limits.max_new_tokens),
                             max_thread_tokens=limits.max_thread_tokens, max_threads=1)
    sk = interp.generate(skeleton_ids, sampling=sampling, limits=sk_limits, mode="sequential")
    skeleton = SKELETON_PREFILL + sk.text
    points = parse_points(skeleton, max_points)
    remaining = limits.max_new_tokens - sk.stats.tokens
    if not points or remaining < 1:
        why = "no numbered point in the skeleton" if not points else "no token budget left after the skeleton"
        rest = DecodeLimits(max_new_tokens=max(1, remaining), max_thread_tokens=limits.max_thread_tokens,
                            max_threads=limits.max_threads)
        plain = interp.generate(question, sampling=sampling, limits=rest, mode="sequential")
        return SoTResult(
            text=plain.text, skeleton=skeleton, points=points, expansions=[],
            steps=sk.stats.steps + plain.stats.steps, tokens=sk.stats.tokens + plain.stats.tokens,
            critical_path=sk.stats.tokens + plain.stats.tokens, wall_s=sk.stats.wall_s + plain.stats.wall_s,
            fallback=True, warnings=[f"fallback to plain decoding: {why}"],
            truncated=plain.stats.finish_reason == "length",
        )
    skeleton_text = "\n".join(f"{i}. {p}" for i, p in points)
    requests = []
    prefills = []
    for index, point in points:
        prefill = f"{index}. {point}"
        prefills.append(prefill)
        ids = interp.prompt_ids(POINT_PROMPT.format(question=question, skeleton=skeleton_text, index=index))
        requests.append(ids + tok.encode(prefill, add_special_tokens=False))
    expansion = expand_points(interp, requests, sampling=sampling, max_tokens_each=limits.max_thread_tokens,
                              max_total=remaining)
    expansions = [_one_point(tok.decode(out, skip_special_tokens=True)) for out in expansion.outputs]
    text = "\n".join(prefill + body.rstrip() for prefill, body in zip(prefills, expansions))
    warnings = []
    if len(points) < len(parse_points(skeleton, max_points, dedupe=False)):
        warnings.append(f"the skeleton repeated a point after point {len(points)}: the rest was dropped")
    cut = [i + 1 for i, n in enumerate(expansion.sampled) if n >= limits.max_thread_tokens]
    if cut:
        warnings.append(f"points {cut} reached max_thread_tokens")
    truncated = bool(cut) or sk.stats.tokens + sum(expansion.sampled) >= limits.max_new_tokens
    return SoTResult(
        text=text, skeleton=skeleton, points=points, expansions=expansions,
        steps=sk.stats.steps + expansion.steps, tokens=sk.stats.tokens + sum(expansion.sampled),
        critical_path=sk.stats.tokens + max(expansion.sampled), wall_s=sk.stats.wall_s + expansion.wall_s,
        warnings=warnings, truncated=truncated,
    )


_NEXT_POINT = re.compile(r"\n\s*\d{1,2}\s*[.)]\s")


def _one_point(expansion: str) -> str:
    """An expansion that goes on to write the next points ("do not continue with other points!") is cut there."""
    m = _NEXT_POINT.search(expansion)
    return expansion[: m.start()] if m else expansion
