"""Token form of an annotated response, thread by thread: what each thread would generate.

Tags are tokenized apart from the text around them, so tag boundaries are token boundaries; the training
collator and teacher-forced decoding both use this one function, so they agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

from .lang import ASYNC_CLOSE, ASYNC_OPEN, Chunk, to_structure


@dataclass
class ForcedProgram:
    main: list[int]  # main-thread tokens (text, promise and sync tags), ending with EOS when `eos_id` was given
    chunks: list[list[int]]  # per promise, in order: tokens of "<async>" + body + "</async>"


def encode_piece(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


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
