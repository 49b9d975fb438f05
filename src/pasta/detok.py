"""Incremental detokenization: text deltas as tokens arrive, correct for byte-level BPE and SentencePiece
(a token's text depends on its neighbours; a partial UTF-8 character is held back until complete)."""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, context: int = 6) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # ids before this were already emitted as text
        self._context = context

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._read = len(self.ids)
            self._prefix = max(0, self._read - self._context)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the end of a thread)."""
        if self._read == len(self.ids):
            return ""
        prefix_text = self._decode(self.ids[self._prefix : self._read])
        new_text = self._decode(self.ids[self._prefix :])
        self._read = len(self.ids)
        return new_text[len(prefix_text) :]
