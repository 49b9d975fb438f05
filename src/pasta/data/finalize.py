"""Checks and normalizes one annotation against the response it annotates (shared by every annotator).

An annotation is accepted only when it is well-formed Pasta-Lang, removing its tags gives back the
original response (whitespace may differ), and every promise has a topic and a non-empty body. The
result is then made exact and canonical:

- tags are re-projected onto the ORIGINAL text, so `strip_tags(result) == original` byte for byte
  (an LLM often rewraps blank lines; the training target must not drift from the plain answer);
- every `tokens` attribute is rewritten from the body's real token count (rounded up with
  `tokens_attr_from_count`), so the model learns to predict lengths, not to copy an annotator's guess;
- whitespace at the edges of a body moves out to the main thread (bodies start and end with text);
- a `<sync/>` with nothing outstanding is dropped;
- tags are rendered in canonical form (`<promise topic=".." tokens="N"/>`, `<async>`, `</async>`, `<sync/>`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pasta import lang
from pasta.jsonl import done_keys, open_append

__all__ = [
    "REJECT_REASONS",
    "AnnotationRejected",
    "FinalizeConfig",
    "TokenCounter",
    "approx_token_count",
    "hf_token_counter",
    "load_token_counter",
    "has_pasta_tags",
    "finalize_annotation",
    "AnnotateStats",
    "AnnotationStore",
]

TokenCounter = Callable[[str], int]

# reason -> meaning. Stable strings: they appear in rejects files and in docs/data.md.
REJECT_REASONS: dict[str, str] = {
    "source_has_tags": "the original response already contains Pasta-Lang tags or tag-like text",
    "empty_output": "the annotator returned nothing",
    "malformed_tags": "the annotation is not well-formed Pasta-Lang (lang.validate reported an error)",
    "empty_topic": "a promise has a missing or empty topic",
    "text_changed": "removing the tags does not give back the original response (up to whitespace)",
    "empty_chunk": "an async body is empty or whitespace only",
    "topic_too_long": "a topic is longer than the configured limit (it should summarise, not copy)",
    "truncated": "the annotator stopped at its token limit (finish_reason=length)",
    "api_error": "the annotator's server failed for good (after retries)",
}


class AnnotationRejected(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REJECT_REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class FinalizeConfig:
    tokens_multiple: int = 10  # `tokens` is rounded up to a multiple of this (coarse, as in the paper)
    max_topic_chars: int = 120

    def __post_init__(self) -> None:
        if self.tokens_multiple <= 0:
            raise ValueError(f"tokens_multiple must be > 0, got {self.tokens_multiple}")
        if self.max_topic_chars <= 0:
            raise ValueError(f"max_topic_chars must be > 0, got {self.max_topic_chars}")


# ---- token counting --------------------------------------------------------------------------------

_APPROX_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Tokenizer-free estimate: words and punctuation marks each count once.

    Closer to a BPE count than a whitespace split (which misses punctuation) and needs no model."""
    return len(_APPROX_TOKEN_RE.findall(text))


def hf_token_counter(tokenizer: object) -> TokenCounter:
    """A counter from a Hugging Face tokenizer (no BOS/EOS: only the body's own tokens)."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]

    return count


def load_token_counter(name_or_path: str | None) -> TokenCounter:
    """None -> approx_token_count; otherwise a Hugging Face tokenizer from a local folder or .gguf file.

    'default' means the embedded model's tokenizer (via pasta.models when available)."""
    if not name_or_path:
        return approx_token_count
    try:  # the project's loader knows the embedded model and GGUF files
        from pasta.models import load_tokenizer
    except ImportError:
        load_tokenizer = None
    if load_tokenizer is not None:
        return hf_token_counter(load_tokenizer(name_or_path))
    from transformers import AutoTokenizer

    return hf_token_counter(AutoTokenizer.from_pretrained(name_or_path))


# ---- checks ----------------------------------------------------------------------------------------

_TAGLIKE_RE = re.compile(r"</?(?:promise|async|sync)(?![A-Za-z0-9_\-.:])")


def has_pasta_tags(text: str) -> bool:
    """True when `text` holds a tag or tag-like text: such a response cannot be annotated losslessly."""
    return any(not isinstance(e, lang.Text) for e in lang.parse(text)) or bool(_TAGLIKE_RE.search(text))


def _unwrap_fence(annotated: str, original: str) -> str:
    # Chat models like to wrap the whole answer in ``` fences; drop them unless the original has them.
    s = annotated.strip()
    if s.startswith("```") and s.endswith("```") and not original.lstrip().startswith("```"):
        first_nl = s.find("\n")
        if first_nl != -1 and len(s) > first_nl + 3:
            return s[first_nl + 1 : -3]
    return annotated


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"word {i}: annotation has {' '.join(a[i:i + 6])!r}, original has {' '.join(b[i:i + 6])!r}"
    if len(a) > len(b):
        return f"annotation adds {' '.join(a[len(b):len(b) + 6])!r} after the original's last word"
    return f"annotation stops at word {len(a)}; original continues with {' '.join(b[len(a):len(a) + 6])!r}"


def _project_tags(events: list[lang.Event], original: str) -> str:
    """Insert the annotation's tags into `original` at the matching places.

    Precondition: the annotation's plain text equals `original` up to whitespace. A tag sits between
    the k-th and (k+1)-th non-space characters in both texts. Where the whitespace run has the same
    length in both, the tag keeps its exact place; otherwise the annotator's spacing means nothing, and
    closing tags cling to the text before them, opening tags (and <sync/>) to the text after them."""
    plain_parts: list[str] = []
    tags: list[tuple[int, lang.Event]] = []
    pos = 0
    for e in events:
        if isinstance(e, lang.Text):
            plain_parts.append(e.text)
            pos += len(e.text)
        else:
            tags.append((pos, e))
    plain = "".join(plain_parts)
    nw_plain = [i for i, c in enumerate(plain) if not c.isspace()]
    nw_orig = [i for i, c in enumerate(original) if not c.isspace()]
    assert len(nw_plain) == len(nw_orig)

    def gap(nw: list[int], text: str, k: int) -> tuple[int, int]:
        start = nw[k - 1] + 1 if k > 0 else 0
        end = nw[k] if k < len(nw) else len(text)
        return start, end

    out: list[str] = []
    last = 0
    for p, tag in tags:
        k = bisect.bisect_left(nw_plain, p)  # non-space characters before the tag
        q, r = gap(nw_plain, plain, k)
        start, end = gap(nw_orig, original, k)
        before, after, width = p - q, r - p, end - start
        if before + after == width:
            target = start + before
        elif isinstance(tag, lang.AsyncClose):
            target = start
        else:
            target = end
        target = max(target, last)  # keep the tags' order
        out.append(original[last:target])
        out.append(tag.raw)
        last = target
    out.append(original[last:])
    return "".join(out)


def _trim_bodies(structure: lang.AnnotatedResponse) -> lang.AnnotatedResponse:
    """Whitespace at the edges of a body moves out to the main thread: bodies start and end with text,
    whichever way the annotator spaced its tags (plain text unchanged)."""
    parts: list[lang.Part] = []
    for part in structure.parts:
        if isinstance(part, lang.Chunk) and part.body.strip():
            body = part.body
            lead, trail = body[: len(body) - len(body.lstrip())], body[len(body.rstrip()):]
            part.body = body.strip()
            if lead:
                parts.append(lang.MainText(lead))
            parts.append(part)
            if trail:
                parts.append(lang.MainText(trail))
        else:
            parts.append(part)
    return lang.AnnotatedResponse(parts)


def finalize_annotation(
    original: str,
    annotated: str,
    count_tokens: TokenCounter = approx_token_count,
    config: FinalizeConfig = FinalizeConfig(),
) -> str:
    """The canonical, exact annotation of `original`, or AnnotationRejected(reason, detail).

    An annotation without any promise is accepted: "nothing here is independent" is a valid answer."""
    if has_pasta_tags(original):
        raise AnnotationRejected("source_has_tags", "the response itself contains <promise>/<async>/<sync> text")
    annotated = _unwrap_fence(annotated, original)
    if not annotated.strip():
        raise AnnotationRejected("empty_output")

    errors = [i for i in lang.validate(annotated) if i.severity == "error"]
    topic_errors = [i for i in errors if i.code in ("missing-topic", "empty-topic")]
    if topic_errors:
        raise AnnotationRejected("empty_topic", str(topic_errors[0]))
    if errors:
        raise AnnotationRejected("malformed_tags", "; ".join(str(i) for i in errors[:3]))

    events = lang.parse(annotated)
    plain = "".join(e.text for e in events if isinstance(e, lang.Text))
    plain_words, original_words = plain.split(), original.split()
    if plain_words != original_words:
        raise AnnotationRejected("text_changed", _first_difference(plain_words, original_words))

    structure = lang.to_structure(_project_tags(events, original), strict=True)
    outstanding = 0
    kept: list[lang.Part] = []
    for part in structure.parts:
        if isinstance(part, lang.SyncMark) and outstanding == 0:
            continue  # a sync with nothing to wait for only costs a token
        kept.append(part)
        if isinstance(part, lang.Chunk):
            outstanding += 1
            topic = " ".join((part.topic or "").split())
            if not topic:
                raise AnnotationRejected("empty_topic", f"promise {part.promise_raw!r}")
            if len(topic) > config.max_topic_chars:
                raise AnnotationRejected("topic_too_long", f"{len(topic)} > {config.max_topic_chars} chars: {topic[:60]!r}...")
            if not part.body.strip():
                raise AnnotationRejected("empty_chunk", f"body of promise {part.promise_raw!r} is blank")
            tokens = lang.tokens_attr_from_count(count_tokens(part.body.strip()), config.tokens_multiple)
            part.promise_raw = lang.promise_tag(topic, tokens)
            part.open_raw, part.close_raw = lang.ASYNC_OPEN, lang.ASYNC_CLOSE
        elif isinstance(part, lang.SyncMark):
            part.raw = lang.SYNC
            outstanding = 0
    result = _trim_bodies(lang.AnnotatedResponse(kept)).to_storage()
    # Guards against a bug here silently corrupting training data.
    assert lang.strip_tags(result) == original, "finalize changed the text"
    assert lang.is_valid(result), lang.validate(result)
    return result


# ---- output files -----------------------------------------------------------------------------------


@dataclass
class AnnotateStats:
    total: int = 0  # examples offered
    skipped_done: int = 0  # already in the output or rejects file (resume)
    accepted: int = 0
    annotated: int = 0  # accepted with at least one promise
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.reasons.items())) or "none"
        return (f"{self.accepted} accepted ({self.annotated} with chunks), {self.rejected} rejected "
                f"[{reasons}], {self.skipped_done} already done, of {self.total}")


def _read_jsonl_ids(path: Path, retry_reasons: frozenset[str] = frozenset()) -> set[str]:
    return done_keys([path], "id", where=lambda row: row.get("reason") not in retry_reasons)


class AnnotationStore:
    """Append-only, resumable output: accepted rows go to `out_path`, rejects to `rejects_path`.

    An id in either file counts as done, except rejects whose reason is in `retry_reasons` (by default
    server failures, which deserve another try). Each row is flushed as it is written, so an interrupted
    run loses at most the line being written."""

    def __init__(self, out_path: str | Path, rejects_path: str | Path,
                 retry_reasons: frozenset[str] = frozenset({"api_error"})) -> None:
        self.out_path, self.rejects_path = Path(out_path), Path(rejects_path)
        if self.out_path.resolve() == self.rejects_path.resolve():
            raise ValueError("the output and rejects files must differ")
        self.done = _read_jsonl_ids(self.out_path) | _read_jsonl_ids(self.rejects_path, retry_reasons)
        self._out: TextIO | None = None
        self._rej: TextIO | None = None

    def __enter__(self) -> AnnotationStore:
        self._out = open_append(self.out_path)
        self._rej = open_append(self.rejects_path)
        return self

    def __exit__(self, *exc: object) -> None:
        for f in (self._out, self._rej):
            if f is not None:
                f.close()
        self._out = self._rej = None

    def accept(self, example: Any, annotated: str, annotator: str) -> None:
        row = {"id": example.id, "prompt": example.prompt, "response": example.response,
               "annotated": annotated, "source": example.source, "annotator": annotator}
        self._write(self._out, row)
        self.done.add(example.id)

    def reject(self, example: Any, reason: str, detail: str, annotator: str, raw: str | None = None) -> None:
        row = {"id": example.id, "source": example.source, "annotator": annotator, "reason": reason,
               "detail": detail, "raw": raw}
        self._write(self._rej, row)
        self.done.add(example.id)

    @staticmethod
    def _write(f: TextIO | None, row: dict[str, Any]) -> None:
        if f is None:
            raise RuntimeError("AnnotationStore used outside `with`")
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
