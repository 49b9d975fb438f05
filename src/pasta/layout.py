"""Who sees what, and at which position: the one place where PASTA's visibility rules are written.

Tokens are identified by their *slot*: the order in which they enter the KV cache. The interpreter appends slots
as it decodes (threads interleaved); the training collator replays an annotated example through the same calls
(see `pasta.interpreter.Decoding`), so training sees exactly what inference sees.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MAIN = 0


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
    visible: torch.Tensor  # bool over slots; grows with the layout
    next_position: int
    slots: list[int] = field(default_factory=list)
    joined: bool = False


class Layout:
    """Incremental positions and visibility for one request (prompt, main thread, async threads)."""

    def __init__(self, prompt_length: int, config: LayoutConfig | None = None, capacity: int = 256) -> None:
        if prompt_length < 1:
            raise ValueError("a request needs at least one prompt token")
        self.config = config or LayoutConfig()
        self._capacity = max(capacity, prompt_length + 16)
        self.positions: list[int] = list(range(prompt_length))
        self.slot_thread: list[int] = [MAIN] * prompt_length
        self.prompt_length = prompt_length
        visible = torch.zeros(self._capacity, dtype=torch.bool)
        visible[:prompt_length] = True
        # The prompt belongs to the main thread's view but not to its generated slots.
        self.threads: dict[int, _Thread] = {MAIN: _Thread(visible=visible, next_position=prompt_length)}
        self._outstanding: list[int] = []  # forked, not yet joined
        self._rows: dict[int, torch.Tensor] = {}  # slot -> what it attends to (kept for training and the oracle)

    # -- growth -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.positions)

    def _grow(self, needed: int) -> None:
        if needed <= self._capacity:
            return
        new_capacity = max(needed, self._capacity * 2)
        for thread in self.threads.values():
            grown = torch.zeros(new_capacity, dtype=torch.bool)
            grown[: self._capacity] = thread.visible
            thread.visible = grown
        self._capacity = new_capacity

    # -- the three operations ---------------------------------------------------------------------------------
    def append(self, thread_id: int, count: int = 1) -> list[tuple[int, torch.Tensor]]:
        """Append `count` tokens to a thread. Returns, per token, (slot, visibility row over slots[0..slot])."""
        thread = self.threads[thread_id]
        self._grow(len(self.positions) + count)
        rows = []
        for _ in range(count):
            slot = len(self.positions)
            self.positions.append(thread.next_position)
            self.slot_thread.append(thread_id)
            thread.next_position += 1
            thread.slots.append(slot)
            thread.visible[slot] = True
            row = thread.visible[: slot + 1].clone()
            self._rows[slot] = row
            rows.append((slot, row))
        return rows

    def fork(self, tokens: int | None) -> int:
        """Start a chunk after the main thread's latest token (the end of a promise tag). Returns its thread id."""
        main = self.threads[MAIN]
        thread_id = len(self.threads)
        self.threads[thread_id] = _Thread(visible=main.visible.clone(), next_position=main.next_position)
        main.next_position += self.config.reservation(tokens)
        self._outstanding.append(thread_id)
        return thread_id

    def join(self) -> list[int]:
        """`<sync/>`: the main thread's next token sees every outstanding chunk. Returns the joined thread ids."""
        main = self.threads[MAIN]
        joined = self._outstanding
        for thread_id in joined:
            thread = self.threads[thread_id]
            main.visible |= thread.visible
            main.next_position = max(main.next_position, thread.next_position)
            thread.joined = True
        self._outstanding = []
        return joined

    # -- views ------------------------------------------------------------------------------------------------
    @property
    def outstanding(self) -> list[int]:
        return list(self._outstanding)

    def full_mask(self) -> torch.Tensor:
        """[slots, slots] bool: row i = what slot i attends to (the prompt is causal)."""
        n = len(self.positions)
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[: self.prompt_length, : self.prompt_length] = torch.tril(
            torch.ones(self.prompt_length, self.prompt_length, dtype=torch.bool)
        )
        for slot, row in self._rows.items():
            mask[slot, : row.numel()] = row
        return mask

    def position_tensor(self) -> torch.Tensor:
        return torch.tensor(self.positions, dtype=torch.long)
