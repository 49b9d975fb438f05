"""Who sees what, and at which position: the one place where PASTA's positions and visibility masks come from.

Tokens are identified by their *slot*: the order in which they enter the KV cache. The interpreter appends slots
as it decodes (threads interleaved); the training collator replays an annotated example through the same calls
(see `pasta.decoding.Decoding`), so training sees exactly what inference sees. Every consumer of a mask asks this
module for it: the engine for each step (`step_mask`), the naive oracle and the collator for a whole sequence
(`full_mask`); Skeleton-of-Thought lays out its points here too (`fork(..., reserve=False)`).

Rules (from the paper, Figure 1, made precise):
- Every token sees the prompt and the earlier tokens of its own thread.
- An async thread sees what the main thread saw at the last token of its promise tag, plus that token itself:
  the prompt, the main thread through its promise, and the bodies of chunks joined by an earlier `<sync/>`.
  It never sees another thread's body that was not joined before its promise.
- The main thread sees no async body before `<sync/>`. The token that completes `<sync/>` and every later main
  token see all chunks forked before that sync (their visibility is the union of the joined threads').
- Positions: the main thread counts up. A promise reserves `reserve_factor * tokens` position ids (default
  `default_tokens` when the attribute is missing, clamped to [1, max_reserve]; or `fixed_reserve` for every
  chunk when set) for its chunk, which starts
  right after the promise tag; the main thread continues after the reserved range. A chunk longer than its
  reservation simply runs on (its positions then overlap later main positions). The token that completes a
  sync continues at max(next main position, one past the last position of any joined chunk).

How masks are kept cheap: a thread's view changes only at its fork (the main thread's view, copied once) and, for
the main thread, at each sync (the union of the joined views). Between those *epochs* a thread only adds its own
tokens. So a slot's visibility row is `base[thread, epoch] | (slot_thread == thread)`, cut at the slot itself: the
layout stores one base vector per epoch (a handful per request), not one row per token, and appending a token is
O(1) Python work whatever the cache length. Rows are assembled with tensor operations when a step asks for them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MAIN = 0


@dataclass
class StepInputs:
    """The tokens of one forward pass of one request, in cache order: their request-local slots and position ids,
    and which of them need next-token logits. The mask comes from the request's `Layout.step_mask`."""

    token_ids: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    logit_rows: list[int] = field(default_factory=list)  # indices into token_ids whose next-token logits are wanted


@dataclass(frozen=True)
class LayoutConfig:
    reserve_factor: float = 2.0
    default_tokens: int = 64
    max_reserve: int = 4096
    fixed_reserve: int | None = None  # reserve this many positions for every chunk, whatever its `tokens` says

    def __post_init__(self) -> None:
        if not (self.reserve_factor > 0 and math.isfinite(self.reserve_factor)):
            raise ValueError(f"reserve_factor must be a positive number, got {self.reserve_factor!r}")
        if self.default_tokens < 1:
            raise ValueError(f"default_tokens must be >= 1, got {self.default_tokens}")
        if self.max_reserve < 1:
            raise ValueError(f"max_reserve must be >= 1, got {self.max_reserve}")
        if self.fixed_reserve is not None and self.fixed_reserve < 1:
            raise ValueError(f"fixed_reserve must be >= 1, got {self.fixed_reserve}")

    def reservation(self, tokens: int | None) -> int:
        if self.fixed_reserve is not None:
            return min(self.max_reserve, self.fixed_reserve)
        predicted = self.default_tokens if tokens is None else tokens
        return int(min(self.max_reserve, max(1, round(self.reserve_factor * predicted))))


@dataclass
class _Thread:
    next_position: int
    # What the thread sees besides its own tokens, one vector per epoch (the fork, then each sync for the main
    # thread); each is as long as the layout was when it was taken (later slots are never in a base).
    bases: list[torch.Tensor]
    slots: list[int] = field(default_factory=list)
    joined: bool = False


class Layout:
    """Incremental positions and visibility for one request (prompt, main thread, async threads)."""

    def __init__(self, prompt_length: int, config: LayoutConfig | None = None, capacity: int = 256) -> None:
        if prompt_length < 1:
            raise ValueError("a request needs at least one prompt token")
        self.config = config or LayoutConfig()
        self.positions: list[int] = list(range(prompt_length))
        self.prompt_length = prompt_length
        # Per slot, as tensors for vectorized masks (grown by doubling): owning thread and its epoch at append.
        capacity = max(capacity, prompt_length + 16)
        self._thread_of = torch.zeros(capacity, dtype=torch.long)
        self._epoch_of = torch.zeros(capacity, dtype=torch.long)
        # The prompt belongs to the main thread's view (its base) but not to its generated slots.
        self.threads: dict[int, _Thread] = {MAIN: _Thread(next_position=prompt_length,
                                                          bases=[torch.ones(prompt_length, dtype=torch.bool)])}
        self._thread_of[:prompt_length] = -1  # prompt slots: seen through the base only (causal among themselves)
        self._outstanding: list[int] = []  # forked, not yet joined

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def slot_thread(self) -> list[int]:
        """The thread of every slot (the prompt counts as the main thread's)."""
        return self._thread_of[: len(self.positions)].clamp(min=MAIN).tolist()

    # -- the three operations ---------------------------------------------------------------------------------
    def append(self, thread_id: int, count: int = 1) -> list[int]:
        """Append `count` tokens to a thread. Returns their slots."""
        thread = self.threads[thread_id]
        start = len(self.positions)
        end = start + count
        if end > self._thread_of.numel():
            self._grow(end)
        self._thread_of[start:end] = thread_id
        self._epoch_of[start:end] = len(thread.bases) - 1
        slots = list(range(start, end))
        self.positions.extend(range(thread.next_position, thread.next_position + count))
        thread.slots.extend(slots)
        thread.next_position += count
        return slots

    def truncate(self, thread_id: int, count: int) -> None:
        """Take back a thread's last `count` slots, which must be the layout's last (a draft the model rejected:
        the next tokens reuse the slots and positions)."""
        if count <= 0:
            return
        thread = self.threads[thread_id]
        start = len(self.positions) - count
        if thread.slots[-count:] != list(range(start, len(self.positions))):
            raise ValueError(f"truncate: the last {count} slots are not all thread {thread_id}'s")
        del self.positions[start:]
        del thread.slots[-count:]
        thread.next_position -= count

    def fork(self, tokens: int | None, *, reserve: bool = True) -> int:
        """Start a chunk after the main thread's latest token (the end of a promise tag). Returns its thread id.
        `reserve=False` reserves no positions in the main thread (Skeleton-of-Thought: independent branches that all
        continue from the same prefix)."""
        main = self.threads[MAIN]
        thread_id = len(self.threads)
        self.threads[thread_id] = _Thread(next_position=main.next_position, bases=[self.view(MAIN)])
        if reserve:
            main.next_position += self.config.reservation(tokens)
        self._outstanding.append(thread_id)
        return thread_id

    def join(self) -> list[int]:
        """`<sync/>`: the main thread's next token sees every outstanding chunk. Returns the joined thread ids."""
        main = self.threads[MAIN]
        joined = self._outstanding
        if joined:
            union = self.view(MAIN)
            for thread_id in joined:
                thread = self.threads[thread_id]
                union |= self.view(thread_id)
                main.next_position = max(main.next_position, thread.next_position)
                thread.joined = True
            main.bases.append(union)
        self._outstanding = []
        return joined

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._thread_of.numel())
        for name in ("_thread_of", "_epoch_of"):
            old = getattr(self, name)
            grown = torch.zeros(capacity, dtype=torch.long)
            grown[: old.numel()] = old
            setattr(self, name, grown)

    # -- views and masks --------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> list[int]:
        return list(self._outstanding)

    def view(self, thread_id: int) -> torch.Tensor:
        """What the thread's next token would see besides itself: bool over the slots so far."""
        n = len(self.positions)
        view = torch.zeros(n, dtype=torch.bool)
        base = self.threads[thread_id].bases[-1]
        view[: base.numel()] = base
        view |= self._thread_of[:n] == thread_id
        return view

    def rows(self, slots: list[int] | torch.Tensor, width: int | None = None) -> torch.Tensor:
        """Visibility rows of `slots` (bool [len(slots), width], default width = the layout's length): row i is
        what slot i attends to, itself included."""
        n = len(self.positions)
        width = n if width is None else width
        slots = torch.as_tensor(slots, dtype=torch.long)
        owners, epochs = self._thread_of[slots], self._epoch_of[slots]
        out = torch.zeros(len(slots), width, dtype=torch.bool)
        columns = torch.arange(width)
        kinds = torch.unique(torch.stack([owners, epochs], dim=1), dim=0) if len(slots) else []
        for owner, epoch in kinds.tolist() if len(slots) else []:
            group = (owners == owner) & (epochs == epoch)
            base = self.threads[max(owner, MAIN)].bases[epoch]
            row = torch.zeros(width, dtype=torch.bool)
            row[: min(width, base.numel())] = base[:width]
            if owner >= 0:
                row[: min(width, n)] |= self._thread_of[: min(width, n)] == owner
            out[group] = row
        return out & (columns[None, :] <= slots[:, None])  # causal: nothing after the slot itself

    def step_mask(self, inputs: StepInputs) -> torch.Tensor:
        """The [tokens, slots so far] visibility of one step's tokens (call it right after the step is laid out)."""
        return self.rows(inputs.slots, inputs.slots[-1] + 1)

    def full_mask(self) -> torch.Tensor:
        """[slots, slots] bool: row i = what slot i attends to (the prompt is causal)."""
        return self.rows(torch.arange(len(self.positions)))

    def position_tensor(self) -> torch.Tensor:
        return torch.tensor(self.positions, dtype=torch.long)
