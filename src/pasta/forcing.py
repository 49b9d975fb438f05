"""Token form of an annotated response, thread by thread: what each thread would generate.

Tags are tokenized apart from the text around them, so tag boundaries are token boundaries; the training
collator and teacher-forced decoding both use this one function, so they agree token for token.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from .lang import ASYNC_CLOSE, ASYNC_OPEN, Chunk, to_structure


@dataclass
class ForcedProgram:
    main: list[int]  # main-thread tokens (text, promise and sync tags), ending with EOS when `eos_id` was given
    chunks: list[list[int]]  # per promise, in order: tokens of "<async>" + body + "</async>"


def encode_piece(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as it appears in the middle of a thread. SentencePiece/Metaspace tokenizers (Llama 2,
    Mistral, Gemma style) add a dummy prefix space to every `encode` call, so encoding pieces apart would put a
    space before every tag and body; for those the piece is encoded after an anchor whose tokens are dropped."""
    if not text:
        return []
    if not _adds_prefix_space(tokenizer):
        return tokenizer.encode(text, add_special_tokens=False)
    for anchor in _ANCHORS:
        anchor_ids = tokenizer.encode(anchor, add_special_tokens=False)
        ids = tokenizer.encode(anchor + text, add_special_tokens=False)
        if ids[: len(anchor_ids)] == anchor_ids and _decode(tokenizer, ids) == _decode(tokenizer, anchor_ids) + text:
            return ids[len(anchor_ids):]
    raise ValueError(f"cannot encode {text[:40]!r} without a dummy prefix space with this tokenizer")


# Characters that rarely merge with what follows; the first one that splits cleanly is used.
_ANCHORS = ("\n", "\u00a7", "a", "\u3002")
_PREFIX_SPACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _adds_prefix_space(tokenizer) -> bool:
    """Whether `encode` prepends a space: "a" and "b" encoded apart decode to "a b" (or " a b")."""
    try:
        return _PREFIX_SPACE[tokenizer]
    except (KeyError, TypeError):
        pass
    a, b = (tokenizer.encode(t, add_special_tokens=False) for t in ("a", "b"))
    adds = _decode(tokenizer, a + b) != "ab"
    try:
        _PREFIX_SPACE[tokenizer] = adds
    except TypeError:  # not weak-referenceable: no cache
        pass
    return adds


def async_open_ids(tokenizer) -> list[int]:
    return encode_piece(tokenizer, ASYNC_OPEN)


def forced_program(tokenizer, annotated: str, eos_id: int | None = None) -> ForcedProgram:
    """Split a storage-form annotated response into per-thread token lists (lenient: malformed input is laid out
    the way the interpreter would read it)."""
    structure = to_structure(annotated)
    main: list[int] = []
    for piece in structure.main_thread_pieces():
        main.extend(encode_piece(tokenizer, piece))
    chunks: list[list[int]] = []
    for chunk in structure.chunks:
        if not chunk.promise_raw:  # an <async> with no promise: the interpreter would never start it
            continue
        chunks.append(_chunk_tokens(tokenizer, chunk))
    if eos_id is not None:
        main.append(eos_id)
    return ForcedProgram(main=main, chunks=chunks)


def _chunk_tokens(tokenizer, chunk: Chunk) -> list[int]:
    return (
        encode_piece(tokenizer, ASYNC_OPEN)
        + encode_piece(tokenizer, chunk.body)
        + encode_piece(tokenizer, chunk.close_raw or ASYNC_CLOSE)
    )
