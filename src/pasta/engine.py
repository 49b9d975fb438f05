"""The engine: every decode in PASTA runs here (one request or many, async or sequential, SoT's points).

    engine = Engine(model)
    seq = engine.add(Sequence(decoding, sampling=SamplingParams()))
    while engine.has_work:
        engine.step()              # one forward pass advances every running request's threads
    seq.result                     # GenerationResult

`Interpreter.generate` is add + step until done; the server's worker drives one long-lived engine; Skeleton-of-
Thought expands its points as one program on it. A request is a *program*: any state machine with the `Program`
methods (`pasta.decoding.Decoding` for Pasta-Lang). Each step asks every running program for its `StepInputs`,
maps its request-local slots to global slots through its page table in the shared `SlotCache`, stacks all tokens
into one sequence (batch 1, no padding) and builds one [q, kv] mask from each program's `Layout` rows, block-
diagonal by request: a query row can only be true on its own request's slots. The runner makes the one model call;
logits are split back and each request samples with its own parameters and random streams. Requests join and
leave between steps (continuous batching); a finished or cancelled request's pages go back to the pool at once.

The engine is confined to one thread (the model is not thread-safe); `pasta.serve.scheduler` feeds it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .layout import Layout, StepInputs
from .runner import ModelRunner
from .sampling import RandomStreams, SamplingParams, sample
from .slot_cache import PagePool, PageTable, SlotCache, SlotCacheConfig


class Program(Protocol):
    """What the engine drives: one request's decoding state machine (model-free)."""

    prompt_ids: list[int]
    layout: Layout  # positions and visibility of the request's slots
    done: bool
    steps: int

    def next_inputs(self, max_prefill: int | None = None) -> StepInputs: ...
    @property
    def sampler_threads(self) -> list[int]: ...
    def advance(self, sampled: list[int]) -> list[int]: ...
    def result(self, wall_s: float) -> Any: ...
    # Optional: `choose(logits, sampling, streams) -> tokens` picks the last step's tokens itself (Decoding: penalties,
    # and a promise draft's rows, which stop at the first token the model would not write; later rows get None).


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8  # requests decoding together; 1 = one request at a time
    max_step_tokens: int = 4096  # a joining request's prefill waits if the step would exceed this (one always runs)
    # Chunked prefill: a prompt enters the cache at most this many tokens per step, so a long prompt does not stall
    # the other requests' decoding for its whole prefill (None: the whole prompt in one step).
    prefill_chunk: int | None = 128
    # Batch-invariant mode: every request gets its own cache and its own forward pass, exactly as it decodes alone
    # (`Interpreter.generate`), so its answer is bitwise independent of what else is in flight (in any dtype). Costs
    # the batching speedup, and prefill is not chunked. Off: one shared forward pass; no token ever crosses requests
    # (the mask is block-diagonal), but in bf16 the numerics of a shared pass can change a greedy choice.
    batch_invariant: bool = False
    cache: SlotCacheConfig = field(default_factory=SlotCacheConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {self.max_batch!r}")
        if not isinstance(self.max_step_tokens, int) or self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens must be a positive integer, got {self.max_step_tokens!r}")
        if self.prefill_chunk is not None and (not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1):
            raise ValueError(f"prefill_chunk must be a positive integer or None, got {self.prefill_chunk!r}")


# One request at a time, whole prompt in one step: how `Interpreter.generate` decodes.
SINGLE = EngineConfig(max_batch=1, prefill_chunk=None)

_ids = itertools.count(1)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine."""

    decoding: Program
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Called on the engine thread after every step that advanced this request, and once at the end.
    on_step: Callable[[Sequence], None] | None = None
    record_logits: bool = False  # keep (thread indices, logits) of every sampling step
    record_logprobs: bool = False  # keep (step, thread, log-prob of the token taken) of every sampled row
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "waiting"  # waiting | running | done | cancelled | failed
    error: BaseException | None = None
    result: Any = None
    logits: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    logprobs: list[tuple[int, int, float]] = field(default_factory=list)
    started: float = 0.0
    table: PageTable | None = None
    streams: RandomStreams | None = None
    stop_requested: bool = False  # e.g. a stop string was produced: finish at the next step boundary
    space: _CacheSpace | None = None  # batch-invariant mode: this request's own KV cache

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class _CacheSpace:
    """A slot cache with its page pool and the position id of every global slot (for sliding windows)."""

    def __init__(self, num_layers: int, config: SlotCacheConfig) -> None:
        self.pool = PagePool(config)
        self.cache = SlotCache(num_layers, self.pool)
        self.key_positions = torch.zeros(0, dtype=torch.long)

    def positions_buffer(self) -> torch.Tensor:
        if self.key_positions.numel() < self.cache.capacity:
            grown = torch.zeros(self.cache.capacity, dtype=torch.long)
            grown[: self.key_positions.numel()] = self.key_positions
            self.key_positions = grown
        return self.key_positions


class Engine:
    def __init__(self, model: torch.nn.Module, config: EngineConfig | None = None,
                 runner: ModelRunner | None = None) -> None:
        self.config = config or EngineConfig()
        self.runner = runner or ModelRunner(model)
        self._layers = model.config.num_hidden_layers
        self.space = _CacheSpace(self._layers, self.config.cache)
        self.running: list[Sequence] = []
        self.waiting: list[Sequence] = []
        self.steps = 0
        self.tokens_fed = 0  # tokens through the model so far (prefill pieces included): the work behind the steps

    @property
    def pool(self) -> PagePool:
        return self.space.pool

    @property
    def cache(self) -> SlotCache:
        return self.space.cache

    # -- membership ----------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> Sequence:
        seq.status = "waiting"
        seq.streams = seq.sampling.streams()
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Drop a request now (between steps): its pages are freed and it is never stepped again."""
        if seq.finished:
            return
        self._retire(seq, "cancelled")

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _admit(self) -> None:
        budget = self.config.max_step_tokens - len(self.running)
        while self.waiting and len(self.running) < self.config.max_batch:
            seq = self.waiting[0]
            need = len(seq.decoding.prompt_ids)
            if self.config.prefill_chunk is not None:
                need = min(need, self.config.prefill_chunk)
            if self.running and need > budget:
                break  # its prefill would make this step too long; it joins at a later step
            self.waiting.pop(0)
            budget -= need
            seq.status = "running"
            seq.started = time.perf_counter()
            if self.config.batch_invariant:
                seq.space = _CacheSpace(self._layers, self.config.cache)
            seq.table = PageTable((seq.space or self.space).pool)
            self.running.append(seq)

    def _retire(self, seq: Sequence, status: str, error: BaseException | None = None) -> None:
        seq.status = status
        seq.error = error
        if seq.table is not None:
            seq.table.release()
        seq.space = None  # its own cache (batch-invariant mode) goes with it
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if status in ("done", "cancelled") and seq.result is None and seq.decoding.steps:
            seq.result = seq.decoding.result(time.perf_counter() - seq.started)
            if hasattr(seq.result, "logits"):
                seq.result.logits, seq.result.logprobs = seq.logits, seq.logprobs
        if seq.on_step is not None:
            try:
                seq.on_step(seq)
            except Exception:  # a broken listener must not stop the engine
                pass

    # -- one step --------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Advance every running request by one forward pass. Returns the requests that finished in it."""
        for seq in [s for s in self.running if s.stop_requested]:
            self._retire(seq, "done")
        self._admit()
        if not self.running:
            return []
        invariant = self.config.batch_invariant
        batch: list[tuple[Sequence, StepInputs]] = []
        for seq in list(self.running):
            try:
                inputs = seq.decoding.next_inputs(None if invariant else self.config.prefill_chunk)
                seq.table.ensure(inputs.slots[-1] + 1)
                batch.append((seq, inputs))
            except Exception as exc:  # one request's failure (a bug, or the cache is full) stays its own
                self._retire(seq, "failed", exc)
        if not batch:
            return []
        self.steps += 1
        finished: list[Sequence] = []
        per_request: list[tuple[Sequence, StepInputs, torch.Tensor]] = []
        groups = [[item] for item in batch] if invariant else [batch]  # invariant: one pass per request
        for group in groups:
            try:
                logits = self._forward(group, group[0][0].space or self.space)
            except Exception as exc:
                for seq, _ in group:
                    self._retire(seq, "failed", exc)
                    finished.append(seq)
                continue
            offset = 0
            for seq, inputs in group:
                per_request.append((seq, inputs, logits[offset : offset + len(inputs.logit_rows)]))
                offset += len(inputs.logit_rows)
        for seq, inputs, rows in per_request:
            try:
                self._sample(seq, rows)
            except Exception as exc:
                self._retire(seq, "failed", exc)
                finished.append(seq)
                continue
            if seq.decoding.done:
                self._retire(seq, "done")
                finished.append(seq)
            elif seq.on_step is not None:
                seq.on_step(seq)
        return finished

    def _sample(self, seq: Sequence, rows: torch.Tensor) -> None:
        decoding = seq.decoding
        threads = decoding.sampler_threads
        choose = getattr(decoding, "choose", None)  # optional: a Decoding's penalties and promise drafts
        if choose is not None and threads:
            taken = decoding.advance(choose(rows, seq.sampling, seq.streams))
        else:
            taken = decoding.advance(sample(rows, seq.sampling, seq.streams, threads))
        if not threads:  # a prefill piece samples nothing
            return
        if seq.record_logprobs:
            logprobs = torch.log_softmax(rows, dim=-1)
            seq.logprobs.extend((decoding.steps, thread, float(logprobs[row, token]))
                                for row, (thread, token) in enumerate(zip(threads, taken)) if token is not None)
        if seq.record_logits:
            seq.logits.append((threads, rows.clone()))

    def _forward(self, batch: list[tuple[Sequence, StepInputs]], space: _CacheSpace) -> torch.Tensor:
        """One model call for the batch over `space`; float32 logits of every request's sampling rows, in order."""
        # Attention reads up to the highest slot in use by the batch, not to the end of its page: a request decoded
        # alone then attends over exactly its own tokens (its pages are packed from slot 0), the same shapes, and so
        # the same numerics, in any dtype, as a cache that grows by concatenation.
        columns = [seq.table.prefix(inputs.slots[-1] + 1) for seq, inputs in batch]  # each request's global slots
        kv_length = max(int(c.max()) + 1 for c in columns)
        key_positions = space.positions_buffer()
        token_ids: list[int] = []
        positions: list[int] = []
        logit_rows: list[int] = []
        write = torch.cat([seq.table.global_slots(inputs.slots) for seq, inputs in batch])
        mask = torch.zeros(len(write), kv_length, dtype=torch.bool)
        for (seq, inputs), own in zip(batch, columns):
            start = len(token_ids)
            # Block-diagonal by construction: this request's rows only reach this request's slots.
            mask[start : start + len(inputs.token_ids)].index_copy_(1, own, seq.decoding.layout.step_mask(inputs))
            logit_rows.extend(start + r for r in inputs.logit_rows)
            token_ids.extend(inputs.token_ids)
            positions.extend(inputs.positions)
        self.tokens_fed += len(token_ids)
        position_tensor = torch.tensor(positions, dtype=torch.long)
        key_positions[write] = position_tensor
        space.cache.prepare(write, kv_length)
        return self.runner.forward(token_ids, position_tensor, mask, key_positions=key_positions[:kv_length],
                                   cache=space.cache, logit_rows=logit_rows)

    def run_all(self) -> None:
        """Step until every added request has finished (tests, offline batch use)."""
        while self.has_work:
            self.step()
