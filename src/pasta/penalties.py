"""Presence and frequency penalties (OpenAI's semantics) over the words each thread has written itself.

logit[t] -= presence_penalty * [count[t] > 0] + frequency_penalty * count[t], where count[t] is how often token t
was *sampled* by the same thread. Two choices make them fit Pasta-Lang:
- Per thread: a chunk is penalised for what it wrote, not for its siblings' text, and the main thread for its own
  text. A thread's counts are then the same in sequential and asynchronous decoding, so both modes still write the
  same answer.
- Words only: a token counts when its text has a letter and it is not part of a tag's syntax. Tags, list numbers,
  punctuation and whitespace recur in every well-formed answer (`<promise`, `</async>`, "\\n2. "); penalising them
  would discourage the language itself. Tokens that jump-forward feeds (tag syntax, outline topics) are not
  samples and do not count.

A small model that loops names the same outline item twice ("Overview: Cash is finite; Cash is not reliable; Cash
is not reliable.") and restates sentences; a presence penalty on its words is the standard remedy (the OpenAI API's
presence_penalty, Hugging Face's repetition_penalty).
"""

from __future__ import annotations

import math
import weakref
from collections import Counter

import torch

from .forcing import encode_piece

# OpenAI's accepted range for both penalties.
PENALTY_RANGE = (-2.0, 2.0)
_TAG_PIECES = ('<promise topic="', '" tokens="', '"/>', '<async>', '</async>', '<sync/>', ' <promise', '\n<sync/>')
_TAG_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_penalty(name: str, value: float | None) -> None:
    """ValueError unless `value` is None or a finite number in PENALTY_RANGE."""
    if value is None:
        return
    low, high = PENALTY_RANGE
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def tag_syntax_ids(tokenizer) -> frozenset[int]:
    """Token ids that spell Pasta-Lang tag syntax with this tokenizer (never penalised)."""
    try:
        return _TAG_IDS[tokenizer]
    except (KeyError, TypeError):
        pass
    ids = frozenset(i for piece in _TAG_PIECES for i in encode_piece(tokenizer, piece))
    try:
        _TAG_IDS[tokenizer] = ids
    except TypeError:  # not weak-referenceable: no cache
        pass
    return ids


class WordPenalty:
    """One request's penalties; `count` what a thread samples, `apply` to that thread's next logits."""

    def __init__(self, tokenizer, presence: float, frequency: float) -> None:
        check_penalty("presence_penalty", presence)
        check_penalty("frequency_penalty", frequency)
        self.tokenizer = tokenizer
        self.presence = float(presence)
        self.frequency = float(frequency)
        self._tags = tag_syntax_ids(tokenizer)
        self._is_word: dict[int, bool] = {}

    def is_word(self, token: int) -> bool:
        known = self._is_word.get(token)
        if known is None:
            text = self.tokenizer.decode([token])
            known = token not in self._tags and any(c.isalpha() for c in text)
            self._is_word[token] = known
        return known

    def count(self, words: Counter, token: int) -> None:
        """Record one sampled token of a thread (words only)."""
        if self.is_word(token):
            words[token] += 1

    def apply(self, row: torch.Tensor, words: Counter) -> torch.Tensor:
        """The thread's logits [vocab] with its penalties subtracted (a new tensor when anything changes)."""
        if not words:
            return row
        ids = torch.tensor(list(words), dtype=torch.long)
        counts = torch.tensor(list(words.values()), dtype=torch.float32)
        row = row.clone()
        row[ids] -= (self.presence + self.frequency * counts).to(row.dtype)
        return row
