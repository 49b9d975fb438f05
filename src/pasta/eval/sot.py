"""Skeleton-of-Thought (Ning et al., ICLR 2024), prompted, as a baseline for PASTA.

1. Skeleton: the model is asked for a short numbered list of points (the SoT paper's skeleton prompt, with the
   answer prefilled with "1."), decoded sequentially by the interpreter.
2. Expansion: each point gets the SoT paper's point-expanding prompt ("continue and only continue the writing of
   point i", answer prefilled with "i. <point>"), and all points are decoded **in parallel on the same engine**
   (`pasta.engine.Engine`, one program: `PointExpansion`): one KV cache, one forward pass per step, every running
   point contributing one row. The point prompts share a long common prefix (question + skeleton); it is
   prefilled once and every point's tokens attend to it plus their own tokens only (branches of one
   `pasta.layout.Layout`), each point's positions continuing from the shared prefix. This is exactly a batch of independent requests with prefix
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
from dataclasses import dataclass, field

from ..decoding import DecodeLimits
from ..layout import Layout, StepInputs
from ..sampling import SamplingParams

__all__ = ["SKELETON_PROMPT", "POINT_PROMPT", "parse_points", "SoTResult", "skeleton_of_thought", "expand_points",
           "PointExpansion", "point_requests", "assemble_points"]

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


class PointExpansion:
    """SoT's point expansion as one engine program: the points' longest common token prefix is the prompt (fed
    once); each point is a branch of the layout (`Layout.fork(reserve=False)`: it sees the prefix and its own
    tokens, and its positions continue from the prefix), fed its own prompt suffix in the first decoding step and
    then one token per step. Thread i of the program is point i, so each point samples from its own random stream,
    as if decoded alone. Stops a point at EOS or `max_tokens_each`, all of them at `max_total` sampled tokens."""

    def __init__(self, requests: list[list[int]], eos_ids: set[int], *, max_tokens_each: int = 256,
                 max_total: int | None = None) -> None:
        if not requests or any(not r for r in requests):
            raise ValueError("expand_points needs at least one non-empty request")
        shared = min(_common_prefix(requests), min(len(r) for r in requests) - 1)
        if shared < 1:
            raise ValueError("the point prompts share no common prefix (they are built from one template)")
        self.prompt_ids = list(requests[0][:shared])
        self.layout = Layout(shared)
        self._branches = [self.layout.fork(None, reserve=False) for _ in requests]
        self._suffixes = [list(r[shared:]) for r in requests]
        self.eos_ids = set(eos_ids)
        self.max_tokens_each, self.max_total = max_tokens_each, max_total
        self.outputs: list[list[int]] = [[] for _ in requests]
        self.sampled = [0] * len(requests)
        self.total = 0
        self.steps = 0
        self.done = False
        self.forced = False
        self._fed = 0  # prefix tokens fed (chunked prefill)
        self._running = list(range(len(requests)))
        self._samplers: list[int] = []

    def next_inputs(self, max_prefill: int | None = None) -> StepInputs:
        inputs = StepInputs()
        shared = len(self.prompt_ids)
        if self._fed < shared:
            end = shared if max_prefill is None else min(shared, self._fed + max(1, max_prefill))
            span = list(range(self._fed, end))
            inputs.token_ids, inputs.slots, inputs.positions = self.prompt_ids[self._fed : end], span, list(span)
            self._fed = end
            if end < shared:
                self._samplers = []
                return inputs
        first = self.steps == 0
        self.steps += 1
        for i in self._running:
            tokens = self._suffixes[i] if first else [self.outputs[i][-1]]
            for slot in self.layout.append(self._branches[i], len(tokens)):
                inputs.slots.append(slot)
                inputs.positions.append(self.layout.positions[slot])
            inputs.token_ids.extend(tokens)
            inputs.logit_rows.append(len(inputs.token_ids) - 1)
        self._samplers = list(self._running)
        return inputs

    @property
    def sampler_threads(self) -> list[int]:
        return list(self._samplers)

    def advance(self, sampled: list[int]) -> list[int]:
        if len(sampled) != len(self._samplers):
            raise ValueError(f"expected {len(self._samplers)} sampled tokens, got {len(sampled)}")
        if not self._samplers:  # a prefill piece
            return []
        still: list[int] = []
        for i, token in zip(self._samplers, sampled):
            if self.max_total is not None and self.total >= self.max_total:
                break  # the request budget ran out within this step: later rows' tokens are not taken
            self.sampled[i] += 1
            self.total += 1
            if token in self.eos_ids:
                continue
            self.outputs[i].append(token)
            if self.sampled[i] < self.max_tokens_each:
                still.append(i)
        if self.max_total is not None and self.total >= self.max_total:
            still = []
        self._running = still
        self.done = not still
        return list(sampled)

    def result(self, wall_s: float) -> Expansion:
        return Expansion(self.outputs, self.sampled, self.steps, len(self.prompt_ids), wall_s)


def expand_points(interp, requests: list[list[int]], *, sampling: SamplingParams | None = None,
                  max_tokens_each: int = 256, max_total: int | None = None) -> Expansion:
    """Decode several requests in parallel on the interpreter's engine (see `PointExpansion`). Greedy results
    equal decoding each request alone."""
    program = PointExpansion(requests, interp.eos_ids, max_tokens_each=max_tokens_each, max_total=max_total)
    return interp.run(program, sampling=sampling)


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
    prompts = point_requests(question, points)
    requests = [interp.prompt_ids(message) + tok.encode(prefill, add_special_tokens=False)
                for message, prefill in prompts]
    expansion = expand_points(interp, requests, sampling=sampling, max_tokens_each=limits.max_thread_tokens,
                              max_total=remaining)
    text, expansions, warnings, truncated = assemble_points(
        skeleton, points, [prefill for _, prefill in prompts],
        [tok.decode(out, skip_special_tokens=True) for out in expansion.outputs], expansion.sampled,
        limits=limits, max_points=max_points, skeleton_tokens=sk.stats.tokens)
    return SoTResult(
        text=text, skeleton=skeleton, points=points, expansions=expansions,
        steps=sk.stats.steps + expansion.steps, tokens=sk.stats.tokens + sum(expansion.sampled),
        critical_path=sk.stats.tokens + max(expansion.sampled), wall_s=sk.stats.wall_s + expansion.wall_s,
        warnings=warnings, truncated=truncated,
    )


def point_requests(question: str, points: list[tuple[int, str]]) -> list[tuple[str, str]]:
    """Each point's expanding prompt (a user message) and the answer prefilled for it ("i. <point>")."""
    skeleton_text = "\n".join(f"{i}. {p}" for i, p in points)
    return [(POINT_PROMPT.format(question=question, skeleton=skeleton_text, index=index), f"{index}. {point}")
            for index, point in points]


def assemble_points(skeleton: str, points: list[tuple[int, str]], prefills: list[str], outputs: list[str],
                    sampled: list[int], *, limits: DecodeLimits, max_points: int,
                    skeleton_tokens: int) -> tuple[str, list[str], list[str], bool]:
    """The SoT answer from the points' decoded outputs: (text, expansions, warnings, truncated)."""
    expansions = [_one_point(out) for out in outputs]
    text = "\n".join(prefill + body.rstrip() for prefill, body in zip(prefills, expansions))
    warnings = []
    if len(points) < len(parse_points(skeleton, max_points, dedupe=False)):
        warnings.append(f"the skeleton repeated a point after point {len(points)}: the rest was dropped")
    cut = [i + 1 for i, n in enumerate(sampled) if n >= limits.max_thread_tokens]
    if cut:
        warnings.append(f"points {cut} reached max_thread_tokens")
    truncated = bool(cut) or skeleton_tokens + sum(sampled) >= limits.max_new_tokens
    return text, expansions, warnings, truncated


_NEXT_POINT = re.compile(r"\n\s*\d{1,2}\s*[.)]\s")


def _one_point(expansion: str) -> str:
    """An expansion that goes on to write the next points ("do not continue with other points!") is cut there."""
    m = _NEXT_POINT.search(expansion)
    return expansion[: m.start()] if m else expansion
