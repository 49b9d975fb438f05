"""Cross-request batching: one forward pass per step advances the threads of every request in flight.

Each request is a `Decoding` (the same state machine the single-request interpreter drives) plus a page table in
the shared `SlotCache`. A step asks every running request for its `StepInputs`, maps its request-local slots to
global slots, stacks all tokens into one sequence (batch 1, no padding) and builds one [q, kv] mask that is
block-diagonal by request: a query row can only be true on its own request's slots. Logits are split back and
each request samples with its own parameters and random streams. Requests join and leave between steps (continuous
batching); a finished or cancelled request's pages go back to the pool at once.

The engine is confined to one thread (the model is not thread-safe); `pasta.serve.scheduler` feeds it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..decoding import Decoding
from ..engine import ModelRunner, model_attention_mask
from ..interpreter import GenerationResult, build_stats
from ..sampling import RandomStreams, SamplingParams, sample
from ..slot_cache import PagePool, PageTable, SlotCache, SlotCacheConfig


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 8  # requests decoding together; 1 = one request at a time
    max_step_tokens: int = 4096  # a joining request's prefill waits if the step would exceed this (one always runs)
    # Chunked prefill: a prompt enters the cache at most this many tokens per step, so a long prompt does not stall
    # the other requests' decoding for its whole prefill (None: the whole prompt in one step).
    prefill_chunk: int | None = 128
    # Batch-invariant mode: every request gets its own cache and its own forward pass, exactly as `Interpreter.run`
    # decodes it alone, so its answer is bitwise independent of what else is in flight (in any dtype). Costs the
    # batching speedup, and prefill is not chunked. Off: one shared forward pass; no token ever crosses requests
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


_ids = itertools.count(1)


@dataclass(eq=False)
class Sequence:
    """One request inside the batch engine."""

    decoding: Decoding
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Called on the engine thread after every step that advanced this request, and once at the end.
    on_step: Callable[[Sequence], None] | None = None
    record_logits: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "waiting"  # waiting | running | done | cancelled | failed
    error: BaseException | None = None
    result: GenerationResult | None = None
    logits: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)
    started: float = 0.0
    table: PageTable | None = None
    streams: RandomStreams | None = None
    stop_requested: bool = False  # e.g. a stop string was produced: finish at the next step boundary
    cache: object | None = None  # batch-invariant mode: this request's own KV cache

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class BatchEngine:
    def __init__(self, model: torch.nn.Module, config: BatchConfig | None = None) -> None:
        self.config = config or BatchConfig()
        self.runner = ModelRunner(model)
        self.pool = PagePool(self.config.cache)
        self.cache = SlotCache(model.config.num_hidden_layers, self.pool)
        self._key_positions = torch.zeros(0, dtype=torch.long)  # position id of every global slot (sliding window)
        self.running: list[Sequence] = []
        self.waiting: list[Sequence] = []
        self.steps = 0
        self.tokens_fed = 0  # tokens through the model so far (prefill pieces included): the work behind the steps

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
                seq.cache = self.runner.new_cache()
            else:
                seq.table = PageTable(self.pool)
            self.running.append(seq)

    def _retire(self, seq: Sequence, status: str, error: BaseException | None = None) -> None:
        seq.status = status
        seq.error = error
        if seq.table is not None:
            seq.table.release()
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if status in ("done", "cancelled") and seq.result is None and seq.decoding.steps:
            seq.result = self._result(seq)
        if seq.on_step is not None:
            try:
                seq.on_step(seq)
            except Exception:  # a broken listener must not stop the engine
                pass

    def _result(self, seq: Sequence) -> GenerationResult:
        annotated, text = seq.decoding.stitch()
        cache_tokens = len(seq.decoding.layout)
        stats = build_stats(seq.decoding, time.perf_counter() - seq.started, cache_tokens)
        return GenerationResult(text=text, annotated=annotated, stats=stats, logits=seq.logits)

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
        batch: list[tuple[Sequence, object, torch.Tensor | None]] = []
        for seq in list(self.running):
            try:
                inputs = seq.decoding.next_inputs(None if invariant else self.config.prefill_chunk)
                if invariant:
                    batch.append((seq, inputs, None))
                else:
                    seq.table.ensure(inputs.slots[-1] + 1)
                    batch.append((seq, inputs, seq.table.global_slots(inputs.slots)))
            except Exception as exc:  # one request's failure (a bug, or the cache is full) stays its own
                self._retire(seq, "failed", exc)
        if not batch:
            return []
        self.steps += 1
        finished = []
        if invariant:  # one forward pass per request, over its own cache
            per_request = []
            for seq, inputs, _ in batch:
                try:
                    self.tokens_fed += len(inputs.token_ids)
                    per_request.append((seq, inputs, self.runner.forward(seq.cache, inputs, seq.decoding.layout.positions)))
                except Exception as exc:
                    self._retire(seq, "failed", exc)
                    finished.append(seq)
        else:
            try:
                logits = self._forward(batch)
            except Exception as exc:
                for seq, _, _ in batch:
                    self._retire(seq, "failed", exc)
                return [seq for seq, _, _ in batch]
            per_request, offset = [], 0
            for seq, inputs, _ in batch:
                per_request.append((seq, inputs, logits[offset : offset + len(inputs.logit_rows)]))
                offset += len(inputs.logit_rows)
        for seq, inputs, rows in per_request:
            try:
                threads = seq.decoding.sampler_threads
                seq.decoding.advance(sample(rows, seq.sampling, seq.streams, threads))
                if seq.record_logits and threads:  # (a prefill piece samples nothing)
                    seq.logits.append((threads, rows.clone()))
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

    def _forward(self, batch) -> torch.Tensor:
        kv_length = self.pool.high_water
        if self._key_positions.numel() < self.cache.capacity:
            grown = torch.zeros(self.cache.capacity, dtype=torch.long)
            grown[: self._key_positions.numel()] = self._key_positions
            self._key_positions = grown
        token_ids: list[int] = []
        positions: list[int] = []
        logit_rows: list[int] = []
        write = torch.cat([g for _, _, g in batch])
        mask = torch.zeros(len(write), kv_length, dtype=torch.bool)
        for seq, inputs, _ in batch:
            start = len(token_ids)
            width = inputs.slots[-1] + 1
            local = torch.zeros(len(inputs.rows), width, dtype=torch.bool)
            for i, row in enumerate(inputs.rows):
                local[i, : row.numel()] = row
            # Block-diagonal by construction: this request's rows only reach this request's slots.
            columns = seq.table.prefix(width)
            mask[start : start + len(inputs.rows)].index_copy_(1, columns, local)
            logit_rows.extend(start + r for r in inputs.logit_rows)
            token_ids.extend(inputs.token_ids)
            positions.extend(inputs.positions)
        self.tokens_fed += len(token_ids)
        position_tensor = torch.tensor(positions, dtype=torch.long)
        self._key_positions[write] = position_tensor
        runner = self.runner
        attention_mask = model_attention_mask(
            runner.model, mask[None, None], position_tensor, self._key_positions[:kv_length]
        )
        self.cache.prepare(write, kv_length)
        out = runner.model(
            input_ids=torch.tensor([token_ids], device=runner.device),
            position_ids=position_tensor[None].to(runner.device),
            attention_mask=attention_mask,
            use_cache=True,
            logits_to_keep=torch.tensor(logit_rows, dtype=torch.long, device=runner.device),
            **{runner._cache_kwarg: self.cache},
        )
        return out.logits[0].float()

    def run_all(self) -> None:
        """Step until every added request has finished (tests, offline batch use)."""
        while self.has_work:
            self.step()
