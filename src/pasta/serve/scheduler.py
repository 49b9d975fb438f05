"""The bridge between the asyncio server and the engine (`pasta.engine`): one worker thread owns the model.

Requests arrive from the event loop (`submit`), wait in a bounded queue (full: `QueueFull`, answered 429), join
the engine's batch between steps, and report back through an asyncio queue per request: text deltas (the final
reading-order prefix as it grows, stop strings held back until they cannot match), then one "done" or "error".
`cancel` (client gone) removes a request between steps and frees its cache pages.

No request can wedge the server: a failure while admitting or stepping one request fails that request only; if the
worker thread itself ever dies, every open request is answered with an error and `health()` says "dead"; a step
that runs longer than `stuck_after_s` makes it say "stuck"; `stop` returns within its timeout and answers every
request still open.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..decoding import Decoding
from ..sampling import SamplingParams
from ..streaming import final_prefix
from ..threads import ThreadGovernor
from ..engine import Engine, Sequence

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    pass


class EngineDown(RuntimeError):
    """The worker thread is dead or stopping: a new request would never be answered."""


@dataclass(eq=False)
class Job:
    """One request as the server sees it."""

    decoding: Decoding
    sampling: SamplingParams
    loop: asyncio.AbstractEventLoop
    stops: list[str] = field(default_factory=list)
    annotated: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    seq: Sequence | None = None
    sent: int = 0  # characters of the answer already delivered as deltas
    stop_at: int | None = None  # where a stop string begins in the answer
    stop_string: str | None = None  # which one (vLLM's `stop_reason`)
    finished: bool = False

    def _emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed (shutdown): nobody is listening any more
            pass


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


class Scheduler:
    def __init__(self, engine: Engine, *, max_queue: int = 64, stuck_after_s: float = 120.0,
                 threads: ThreadGovernor | None = None) -> None:
        self.engine = engine
        self.threads = threads  # re-checks the free CPU cores between steps (`--threads auto`)
        self.stuck_after_s = stuck_after_s
        self.capacity = engine.config.max_batch + max_queue
        self._cond = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._cancels: deque[Job] = deque()
        self._in_flight = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._open: set[Job] = set()  # submitted and not yet answered
        self._step_since: float | None = None  # monotonic start of the step in progress
        self.fatal: BaseException | None = None  # why the worker thread died, if it did
        self.completed = 0
        self.failed = 0
        self.cancelled = 0

    # -- event-loop side --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="pasta-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; returns within about `timeout` seconds even if a step is stuck (the thread is a daemon),
        and answers every request still open with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._abandon_all("the server is shutting down")

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping or self.health() == "dead":
                raise EngineDown(f"the engine is not running ({self.fatal!r})" if self.fatal else
                                 "the server is shutting down")
            if self._in_flight >= self.capacity:
                raise QueueFull(f"server busy: {self._in_flight} requests in flight (limit {self.capacity})")
            self._in_flight += 1
            self._open.add(job)
            self._inbox.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        with self._cond:
            if job.finished:
                return
            self._cancels.append(job)
            self._cond.notify()

    def health(self) -> str:
        """"ok", "dead" (the worker thread is gone: nothing will be decoded) or "stuck" (one step has run longer than
        `stuck_after_s`)."""
        if self.fatal is not None or (self._thread is not None and not self._thread.is_alive() and not self._stopping):
            return "dead"
        since = self._step_since
        if since is not None and time.monotonic() - since > self.stuck_after_s:
            return "stuck"
        return "ok"

    def stats(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "engine": self.health(),
            "in_flight": self._in_flight, "running": len(engine.running),
            "waiting": len(engine.waiting) + len(self._inbox), "kv_pages_used": engine.pool.used,
            "kv_pages_capacity": engine.pool.capacity_pages, "steps": engine.steps,
            "completed": self.completed, "failed": self.failed, "cancelled": self.cancelled,
        }

    # -- worker side ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug in the loop itself: say so everywhere rather than hang every client
            self.fatal = exc
            log.exception("the engine thread died")
        finally:
            self._abandon_all(f"the engine stopped: {self.fatal!r}" if self.fatal else "the server is shutting down")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._inbox or self._cancels or self.engine.has_work or self._stopping):
                    self._cond.wait()
                if self._stopping:
                    break
                inbox, self._inbox = list(self._inbox), deque()
                cancels, self._cancels = list(self._cancels), deque()
            for job in inbox:
                try:
                    job.seq = Sequence(job.decoding, sampling=job.sampling,
                                       on_step=lambda seq, job=job: self._on_step(job))
                    self.engine.add(job.seq)
                except Exception as exc:  # e.g. a sampler that cannot be built: this request fails, no other
                    log.warning("request failed on admission: %r", exc)
                    if self._finish(job, "failed"):
                        job._emit("error", exc)
            for job in cancels:
                if job.seq is not None:
                    self.engine.cancel(job.seq)
            if self.engine.has_work:
                if self.threads is not None:
                    self.threads.tick()
                self._step_since = time.monotonic()
                try:
                    self.engine.step()
                except Exception:  # the engine isolates per-request failures; anything else is a bug: keep serving
                    log.exception("batch step failed")
                finally:
                    self._step_since = None
        for seq in list(self.engine.running) + list(self.engine.waiting):
            self.engine.cancel(seq)

    def _abandon_all(self, reason: str) -> None:
        with self._cond:
            open_jobs = list(self._open)
        for job in open_jobs:
            if self._finish(job, "cancelled"):
                job._emit("unavailable", reason)

    def _on_step(self, job: Job) -> None:
        seq = job.seq
        if job.finished:
            return
        if seq.status == "failed":
            if self._finish(job, "failed"):
                job._emit("error", seq.error)
            return
        if seq.status == "cancelled":
            if self._finish(job, "cancelled"):
                job._emit("cancelled", None)
            return
        text = final_prefix(seq.decoding, annotated=job.annotated)
        if job.stop_at is None and job.stops:
            hits = [(i, s) for i, s in ((text.find(s), s) for s in job.stops) if i >= 0]
            if hits:
                job.stop_at, job.stop_string = min(hits)
                seq.stop_requested = True  # the engine retires it before the next forward pass
        end = job.stop_at if job.stop_at is not None else len(text) - (0 if seq.status == "done" else _held_back(text, job.stops))
        if end > job.sent:
            job._emit("delta", text[job.sent : end])
            job.sent = end
        if seq.status == "done" and self._finish(job, "done"):
            job._emit("done", self._summary(job, text[:end]))

    def _finish(self, job: Job, status: str) -> bool:
        """Count a request as answered, once: False if it already was (the caller then emits nothing)."""
        with self._cond:
            if job.finished:
                return False
            job.finished = True
            self._open.discard(job)
            self._in_flight -= 1
            if status == "failed":
                self.failed += 1
            elif status == "cancelled":
                self.cancelled += 1
            else:
                self.completed += 1
            return True

    @staticmethod
    def _summary(job: Job, text: str) -> dict[str, Any]:
        decoding = job.decoding
        stats = job.seq.result.stats
        budget = any(t.trace.close_reason == "request_budget" for t in decoding.threads)
        return {
            "text": text,
            "finish_reason": "stop" if job.stop_at is not None or not budget else "length",
            "stop_reason": job.stop_string,
            "usage": {"prompt_tokens": len(decoding.prompt_ids), "completion_tokens": decoding.sampled,
                      "total_tokens": len(decoding.prompt_ids) + decoding.sampled},
            "pasta": {
                "mode": stats.mode, "steps": stats.steps, "threads": stats.threads,
                "critical_path": stats.critical_path, "theoretical_speedup": stats.theoretical_speedup,
                "tokens_per_thread": stats.tokens_per_thread, "wall_s": stats.wall_s,
                "cache_tokens": stats.cache_tokens, "warnings": stats.warnings,
                "annotated": job.seq.result.annotated,
            },
        }


