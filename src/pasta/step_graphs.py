"""Static decode steps: one forward pass per query-size bucket, on fixed buffers, replayed from CUDA graphs on a GPU.

On a GPU a small model's decode step is almost all launch overhead (issue 11: 16-18 ms per step for 135M and 1.07B
parameters alike, where the bandwidth floor at 1.07B is 0.45 ms). A CUDA graph replays the whole step's kernels in
one launch, but only over fixed shapes and fixed memory, so a step here is made static:

- the step's q tokens are padded to a bucket (1, 2, 4, 8, 16): a padded row repeats the last real row (same token,
  position, mask row and cache slot), so it writes the very same key/value to the same slot and adds nothing;
- attention reads the whole cache buffer (its capacity), not the prefix in use; the mask is False beyond the
  prefix, so the extra keys get zero weight;
- every input lives in a preallocated device buffer that each step overwrites; the graph is captured the first
  time a bucket is used (and again if the cache buffer was reallocated because it grew).

Prefill (more tokens than the largest bucket) and the step on which the cache grows run eagerly, as in
`ModelRunner`. With `graphs=False` (the default off CUDA) the same static path runs without capture: that is how
its padding and full-buffer attention are tested on CPU (tests/pasta/test_step_graphs.py, exact against the naive
oracle in fp32). On CUDA, `bench/gpu.py --graphs` measures it and checks it against the oracle; a capture that
fails (an operation in the model that synchronizes with the host) is reported there, and the runner falls back to
eager steps. Graphs are captured for one cache buffer at a time: batch-invariant serving (a cache per request)
would recapture for every request, so use it without `--cuda-graphs`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .runner import ModelRunner, call_model

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16)


@dataclass
class _StaticStep:
    """The fixed buffers of one bucket, and its captured graph."""

    input_ids: torch.Tensor  # [1, q]
    position_ids: torch.Tensor  # [1, q]
    mask: torch.Tensor  # [1, 1, q, capacity] bool
    key_positions: torch.Tensor  # [1, capacity]
    write_slots: torch.Tensor  # [q]
    graph: object | None = None
    logits: torch.Tensor | None = None  # the captured call's output buffer
    cache_key: tuple = ()


def _buffers_ready(cache) -> bool:
    """Every layer holds a key/value buffer of the cache's full capacity (not before the first pass, nor on the step
    where the cache grew: that step reallocates the buffers, eagerly)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(getattr(layer, "keys", None) is not None and layer.keys.shape[2] == cache.capacity
                                for layer in layers)


class StaticStepRunner(ModelRunner):
    """A `ModelRunner` whose decode steps run on fixed buffers, replayed from CUDA graphs when `graphs` is on."""

    def __init__(self, model: torch.nn.Module, *, buckets: tuple[int, ...] = BUCKETS, graphs: bool | None = None
                 ) -> None:
        super().__init__(model)
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"buckets must be distinct positive sizes in increasing order, got {buckets!r}")
        self.buckets = tuple(buckets)
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if self.graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device (this one is on {self.device})")
        self._steps: dict[tuple[int, int], _StaticStep] = {}
        self._pool = None
        self.capture_error: str | None = None  # set when a capture failed: every later step runs eagerly
        self.counts = {"static": 0, "eager": 0, "captures": 0}

    def bucket(self, q: int) -> int | None:
        return next((b for b in self.buckets if b >= q), None)

    @torch.inference_mode()
    def forward(self, token_ids, positions, visibility, *, key_positions=None, cache=None, logit_rows=None):
        q = len(token_ids)
        bucket = self.bucket(q)
        if (bucket is None or cache is None or key_positions is None or self.capture_error is not None
                or not _buffers_ready(cache)):
            self.counts["eager"] += 1
            return super().forward(token_ids, positions, visibility, key_positions=key_positions, cache=cache,
                                   logit_rows=logit_rows)
        step = self._fill(bucket, cache, token_ids, positions, visibility, key_positions)
        if self.graphs and self._graph_ready(step, cache):
            step.graph.replay()
            logits = step.logits
        else:
            logits = self._call(step, cache)
        self.counts["static"] += 1
        return self._rows(logits, q, logit_rows)

    @staticmethod
    def _rows(logits: torch.Tensor, q: int, logit_rows: list[int] | None) -> torch.Tensor:
        rows = list(range(q)) if logit_rows is None else list(logit_rows)
        return logits[0, rows].float()

    def _fill(self, bucket, cache, token_ids, positions, visibility, key_positions) -> _StaticStep:
        capacity = cache.capacity
        step = self._steps.get((bucket, capacity))
        if step is None:
            dev = self.device
            step = _StaticStep(
                input_ids=torch.zeros(1, bucket, dtype=torch.long, device=dev),
                position_ids=torch.zeros(1, bucket, dtype=torch.long, device=dev),
                mask=torch.zeros(1, 1, bucket, capacity, dtype=torch.bool, device=dev),
                key_positions=torch.zeros(1, capacity, dtype=torch.long, device=dev),
                write_slots=torch.zeros(bucket, dtype=torch.long, device=dev),
            )
            self._steps[(bucket, capacity)] = step
        q, kv = len(token_ids), visibility.shape[1]
        pad = bucket - q
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        slots = cache.write_slots.reshape(-1)
        # Padded rows repeat the last real row: the same key/value written to the same slot, logits never read.
        step.input_ids[0].copy_(torch.cat([ids, ids[-1:].expand(pad)]))
        step.position_ids[0].copy_(torch.cat([pos, pos[-1:].expand(pad)]))
        step.write_slots.copy_(torch.cat([slots, slots[-1:].expand(pad)]))
        rows = torch.zeros(bucket, capacity, dtype=torch.bool)
        rows[:q, :kv] = visibility
        rows[q:, :kv] = visibility[-1]
        step.mask[0, 0].copy_(rows)
        keys = torch.zeros(capacity, dtype=torch.long)
        keys[:kv] = key_positions.reshape(-1)
        step.key_positions[0].copy_(keys)
        cache.prepare(step.write_slots, capacity)  # attention reads the whole buffer; the mask hides what is unused
        return step

    def _call(self, step: _StaticStep, cache) -> torch.Tensor:
        return call_model(self.model, step.input_ids, step.position_ids, step.mask, key_positions=step.key_positions,
                          cache=cache, cache_argument=self._cache_argument).logits

    def _graph_ready(self, step: _StaticStep, cache) -> bool:
        """The step's graph, captured for this cache buffer (now, if needed); False when capture failed (recorded:
        every later step runs eagerly)."""
        key = (id(cache), cache.capacity, cache.layers[0].keys.data_ptr())
        if step.graph is not None and step.cache_key == key:
            return True
        try:
            self._capture(step, cache, key)
            return True
        except Exception as exc:  # e.g. a host synchronization inside the model: graphs are not possible
            self.capture_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed (%s); decoding eagerly from now on", self.capture_error)
            torch.cuda.synchronize()
            return False

    def _capture(self, step: _StaticStep, cache, key: tuple) -> None:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (workspaces, lazy allocations); writes the same K/V the replay does
            for _ in range(2):
                self._call(step, cache)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            step.logits = self._call(step, cache)
        step.graph, step.cache_key = graph, key
        self.counts["captures"] += 1
