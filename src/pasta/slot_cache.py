"""A slot-addressed KV cache shared by many requests: "paged attention by mask".

One key/value buffer per layer, indexed by *global slot*. Slots come in pages of `page_size`; each request owns
the pages it was given (a page table maps its request-local slots 0, 1, 2, ... to global slots) and returns them
when it finishes or is cancelled. A forward pass writes the step's tokens at their global slots (`index_copy_`)
and attends over the buffer up to the highest page in use; the attention mask decides what each query sees, so a
request's rows cover only its own pages and requests cannot see each other's keys by construction.

Why not one `DynamicCache` per request with the batch dimension: requests differ in length, so the batch would
need padding to the longest one, and a new request would need its own prefill pass. Here all requests' tokens
go into one sequence of one forward pass (batch 1), with no padding and no copying.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass(frozen=True)
class SlotCacheConfig:
    page_size: int = 64
    initial_pages: int = 16  # the buffer doubles when more are needed
    max_pages: int = 4096  # hard bound on KV memory: max_pages * page_size slots

    def __post_init__(self) -> None:
        for name in ("page_size", "initial_pages", "max_pages"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.initial_pages > self.max_pages:
            raise ValueError("initial_pages must be <= max_pages")


class OutOfPages(RuntimeError):
    """The KV cache has no free page left (max_pages reached)."""


class PagePool:
    """Free list of pages. The lowest free page is handed out first, so the slots in use stay packed at the
    start of the buffer and attention reads as little of it as possible."""

    def __init__(self, config: SlotCacheConfig) -> None:
        self.config = config
        self.capacity_pages = config.initial_pages
        self._free: list[int] = list(range(config.initial_pages))
        heapq.heapify(self._free)
        self._used: set[int] = set()

    @property
    def used(self) -> int:
        return len(self._used)

    @property
    def high_water(self) -> int:
        """Slots up to the end of the highest page in use (what attention must read)."""
        return (max(self._used) + 1) * self.config.page_size if self._used else 0

    def allocate(self) -> int:
        if not self._free:
            if self.capacity_pages >= self.config.max_pages:
                raise OutOfPages(f"KV cache full ({self.config.max_pages} pages of {self.config.page_size} slots)")
            grown = min(self.config.max_pages, self.capacity_pages * 2)
            for page in range(self.capacity_pages, grown):
                heapq.heappush(self._free, page)
            self.capacity_pages = grown
        page = heapq.heappop(self._free)
        self._used.add(page)
        return page

    def release(self, pages: list[int]) -> None:
        for page in pages:
            if page in self._used:
                self._used.remove(page)
                heapq.heappush(self._free, page)


class PageTable:
    """One request's pages: request-local slot -> global slot."""

    def __init__(self, pool: PagePool) -> None:
        self.pool = pool
        self.pages: list[int] = []
        self._map = torch.empty(0, dtype=torch.long)

    def ensure(self, local_slots: int) -> None:
        size = self.pool.config.page_size
        while len(self.pages) * size < local_slots:
            page = self.pool.allocate()
            self.pages.append(page)
            self._map = torch.cat([self._map, torch.arange(page * size, (page + 1) * size)])

    def global_slots(self, local: list[int] | torch.Tensor) -> torch.Tensor:
        return self._map[torch.as_tensor(local, dtype=torch.long)]

    def prefix(self, n: int) -> torch.Tensor:
        """Global slots of local slots 0..n-1."""
        return self._map[:n]

    def release(self) -> None:
        self.pool.release(self.pages)
        self.pages = []
        self._map = torch.empty(0, dtype=torch.long)


class _SlotLayer(CacheLayerMixin):
    """One layer's keys and values over all global slots; writes at the step's slots, returns the used prefix."""

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._allocate(key_states, value_states, self.owner.capacity)
        self.is_initialized = True

    def _allocate(self, key_states, value_states, capacity: int) -> None:
        b, h, _, d = key_states.shape
        keys = key_states.new_zeros(b, h, capacity, d)
        values = value_states.new_zeros(b, value_states.shape[1], capacity, value_states.shape[-1])
        if self.keys is not None:  # grown: keep what is there
            keys[:, :, : self.keys.shape[2]] = self.keys
            values[:, :, : self.values.shape[2]] = self.values
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        elif self.keys.shape[2] < self.owner.capacity:
            self._allocate(key_states, value_states, self.owner.capacity)
        index = self.owner.write_slots.to(key_states.device)
        self.keys.index_copy_(2, index, key_states)
        self.values.index_copy_(2, index, value_states)
        n = self.owner.kv_length
        return self.keys[:, :, :n], self.values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_length, 0

    def get_seq_length(self) -> int:
        return self.owner.kv_length

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """The shared cache. Before each forward pass the engine calls `prepare(write_slots, kv_length)`."""

    def __init__(self, num_layers: int, pool: PagePool) -> None:
        self.pool = pool
        self.write_slots = torch.empty(0, dtype=torch.long)
        self.kv_length = 0
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])

    @property
    def capacity(self) -> int:
        return self.pool.capacity_pages * self.pool.config.page_size

    def prepare(self, write_slots: torch.Tensor, kv_length: int) -> None:
        self.write_slots = write_slots
        self.kv_length = kv_length
