"""Server settings, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..decoding import DecodeLimits


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing a model is an explicit choice
    port: int = 8000
    max_batch: int = 8  # requests decoded together in one forward pass per step (1 = one at a time)
    max_queue: int = 64  # requests waiting for a batch place; beyond this the server answers 429
    max_tokens_limit: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256
    max_prompt_tokens: int = 8192
    max_thread_tokens: int = 256  # per async chunk
    max_threads: int = 8  # async chunks of one request decoding at once
    outline_topics: bool | None = None  # DecodeLimits.outline_topics (None: as the model records)
    outline_terminated: bool | None = None  # DecodeLimits.outline_terminated (None: as the model records)
    outline_no_repeat: bool | None = None  # DecodeLimits.outline_no_repeat (None: as the model records)
    # Penalties for requests that leave them unset (DecodeLimits; None: as the model records).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    draft_promises: bool = True  # DecodeLimits.draft_promises
    draft_tokens: int | None = None  # DecodeLimits.draft_tokens (None: as the model records)
    sequential: bool = False  # default decoding mode; a request may override it
    served_model_name: str | None = None  # what /v1/models lists (default: the model's own name)
    prefill_chunk: int | None = 128  # prompt tokens per step while prefilling (None: a whole prompt in one step)
    batch_invariant: bool = False  # each request its own forward pass: answers independent of the batch, no speedup
    stuck_after_s: float = 120.0  # /health says "stuck" (503) when one engine step has run this long
    shutdown_timeout_s: float = 10.0  # SIGTERM: wait this long for open requests, then as long for the engine

    def __post_init__(self) -> None:
        if not (0 <= self.port <= 65535):
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_batch", "max_tokens_limit", "default_max_tokens", "max_prompt_tokens",
                     "max_thread_tokens", "max_threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.prefill_chunk is not None and (not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1):
            raise ValueError(f"prefill_chunk must be a positive integer or None, got {self.prefill_chunk!r}")
        for name in ("stuck_after_s", "shutdown_timeout_s"):
            if not isinstance(getattr(self, name), int | float) or not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        self.limits(1)  # DecodeLimits validates the penalties
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("default_max_tokens must be <= max_tokens_limit")

    def limits(self, max_tokens: int) -> DecodeLimits:
        """One request's budgets: its own `max_tokens`, this server's per-chunk and parallelism limits."""
        return DecodeLimits.from_options(self, max_new_tokens=max_tokens,
                                         max_thread_tokens=min(max_tokens, self.max_thread_tokens),
                                         max_threads=self.max_threads)
