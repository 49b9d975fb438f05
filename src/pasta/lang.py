"""Pasta-Lang: the annotation language of PASTA (learned asynchronous decoding).

A response marks independent chunks with three tags:

* ``<promise topic="..." tokens="N"/>`` -- emitted by the main thread, a placeholder for a chunk;
* ``<async>`` ... ``</async>``        -- the body of one chunk, decoded by its own thread;
* ``<sync/>``                          -- the main thread waits for every outstanding chunk.

Storage form (training data, final answers): each ``<async>body</async>`` sits right after its
promise tag, so removing every tag gives the plain answer in reading order.

This module is pure Python (no torch): a streaming tag recognizer for text that arrives token by
token, a parser/renderer, a structured view of a storage-form response, and a validator.
See docs/pasta-lang.md for the grammar and the rules.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

__all__ = [
    "ASYNC_CLOSE",
    "ASYNC_OPEN",
    "SYNC",
    "counted_topic",
    "topic_count",
    "OUTLINE_PREFIX",
    "outline_line",
    "last_outline",
    "outline_lines",
    "terminated_outlines",
    "has_terminated_outline",
    "is_outlined",
    "TAG_NAMES",
    "KNOWN_ATTRS",
    "MAX_TAG_LEN",
    "MAX_TOKENS",
    "Text",
    "Promise",
    "AsyncOpen",
    "AsyncClose",
    "Sync",
    "StrayClose",
    "topic_key",
    "Event",
    "Recognizer",
    "is_cut_tag",
    "parse",
    "render",
    "strip_tags",
    "escape_attr",
    "unescape_attr",
    "promise_tag",
    "tokens_attr_from_count",
    "MainText",
    "Chunk",
    "SyncMark",
    "Part",
    "AnnotatedResponse",
    "to_structure",
    "Issue",
    "ISSUE_CODES",
    "validate",
    "is_valid",
    "PastaSyntaxError",
]

ASYNC_OPEN = "<async>"
ASYNC_CLOSE = "</async>"
SYNC = "<sync/>"
TAG_NAMES = ("promise", "async", "sync")
KNOWN_ATTRS = ("topic", "tokens")

# A candidate tag longer than this is not a tag: bounds what the streaming recognizer holds back.
MAX_TAG_LEN = 512
# `tokens` above this is absurd for one chunk (and would blow up a position-id reservation).
MAX_TOKENS = 100_000


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Promise:
    """A ``<promise .../>`` tag. ``raw`` is the exact source text; the rest is derived from it.

    ``topic`` is None when missing or blank; ``tokens`` is None when missing or not a valid count
    (non-integer, <= 0, > MAX_TOKENS) -- the raw string stays in ``attrs``.
    """

    topic: str | None
    tokens: int | None
    raw: str
    # dict is unhashable: leave it out of the hash (raw determines it anyway).
    attrs: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def self_closing(self) -> bool:
        return self.raw.endswith("/>")


@dataclass(frozen=True)
class AsyncOpen:
    raw: str = ASYNC_OPEN


@dataclass(frozen=True)
class AsyncClose:
    raw: str = ASYNC_CLOSE


@dataclass(frozen=True)
class Sync:
    raw: str = SYNC


@dataclass(frozen=True)
class StrayClose:
    """``</sync>``, ``</sync/>`` or ``</promise>``: a closing tag Pasta-Lang does not have. Models write it (the
    first default model ended a post-sync paragraph with ``</sync>`` in 11 of 100 answers); read as text it would
    reach the user, so it is a tag that means nothing: dropped from the plain answer, reported by the validator and
    by the interpreter's warnings."""

    raw: str


Event = Text | Promise | AsyncOpen | AsyncClose | Sync | StrayClose
Tag = Promise | AsyncOpen | AsyncClose | Sync | StrayClose


# --------------------------------------------------------------------------------------------
# Attribute values
# --------------------------------------------------------------------------------------------

_ENTITY_RE = re.compile(r"&(quot|amp|lt|gt|apos|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'"}


def escape_attr(value: str) -> str:
    """Escape a value for a double- or single-quoted attribute. Newlines are escaped too because
    the recognizer does not accept a raw newline inside a value (it fails fast on broken tags)."""
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def unescape_attr(value: str) -> str:
    """Inverse of escape_attr; also decimal/hex character references. Unknown entities stay."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in _NAMED:
            return _NAMED[name]
        try:
            code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
            return chr(code)
        except (ValueError, OverflowError):
            return m.group(0)

    return _ENTITY_RE.sub(sub, value)


_INT_RE = re.compile(r"[0-9]+")


def _parse_tokens(value: str | None) -> int | None:
    """A valid `tokens` value: decimal digits (surrounding spaces tolerated), 1..MAX_TOKENS."""
    if value is None:
        return None
    v = value.strip()
    if not _INT_RE.fullmatch(v):
        return None
    n = int(v)
    return n if 0 < n <= MAX_TOKENS else None


_TOPIC_WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*")


_TOPIC_COUNT_RE = re.compile(r"^\s*(\d{1,3})\s*/\s*(\d{1,3})\s+(?=\S)")


def counted_topic(topic: str, index: int, total: int) -> str:
    """A topic that says its place in its list: ``counted_topic("Exercise", 2, 3) == "2/3 Exercise"``."""
    if not 1 <= index <= total:
        raise ValueError(f"a counted topic needs 1 <= index <= total, got {index}/{total}")
    return f"{index}/{total} {topic}"


def topic_count(topic: str | None) -> tuple[int, int] | None:
    """(index, total) of a counted topic ("2/3 Exercise" -> (2, 3)); None for a topic without a count."""
    m = _TOPIC_COUNT_RE.match(topic or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def topic_key(topic: str | None) -> str:
    """Topics that differ only in case, punctuation, spacing or a leading count ("2/3 ") are the same topic (runtime
    guards, statistics): "1/3 Diet" and "2/3 Diet" repeat a topic."""
    text = topic or ""
    m = _TOPIC_COUNT_RE.match(text)
    if m:
        text = text[m.end():]
    return " ".join(w.casefold() for w in _TOPIC_WORD_RE.findall(text))


# An outline line (structural annotator version 5): one plain main-thread line naming the items of the list that
# follows, "Overview: Diet; Exercise; Sleep.", whose promises then copy them ("1/3 Diet", ...).
OUTLINE_PREFIX = "Overview: "
_OUTLINE_RE = re.compile(r"^" + re.escape(OUTLINE_PREFIX) + r"(.+?)\.?[ \t]*\n", re.MULTILINE)


def outline_line(items: list[str]) -> str:
    """``outline_line(["Diet", "Sleep"]) == "Overview: Diet; Sleep.\\n\\n"``."""
    return OUTLINE_PREFIX + "; ".join(items) + ".\n\n"


# Terminated outlines: every item ends with ';' and the line with a newline ("Overview: Diet; Sleep; Walk;"). In the
# '.'-ended form the decision to stop falls on the separator after the last item (';' or '.'), where the model cannot
# yet see what the next item would be: r17 gives ';' a median 0.92 of the two where the item it then writes repeats
# an earlier one, 0.97 where a new one follows (docs/training.md, "Terminated outlines"). Terminated, the decision
# falls on the next item's first token, where ending (a newline) competes with each candidate item itself, a copy
# included.
_DOT_ENDED_OUTLINE_RE = re.compile(r"^(" + re.escape(OUTLINE_PREFIX) + r"[^\n]*?)\.([ \t]*)$", re.MULTILINE)


def terminated_outlines(text: str) -> str:
    """`text` with each '.'-ended outline line ended by ';' instead: "Overview: Diet; Sleep." -> "Overview: Diet;
    Sleep;" (the rest of the text unchanged)."""
    return _DOT_ENDED_OUTLINE_RE.sub(r"\1;\2", text)


def last_outline(text: str) -> tuple[list[str], int] | None:
    """(items, end offset) of the last complete outline line in `text` (ended by a newline), or None."""
    found = None
    for m in _OUTLINE_RE.finditer(text):
        found = m
    if found is None:
        return None
    items = [item.strip() for item in found.group(1).split(";")]
    return [item for item in items if item], found.end()


def outline_lines(main_text: str) -> list[list[str]]:
    """The items of each outline line of a main thread's text, as written (unstripped, empty ones kept): the mark that
    ends the line (`.`, or `;` in a terminated outline, `Overview: Add; Place;`) ends the last item, not a new one.
    The one splitter of the answer statistics and the on-policy filters."""
    found = []
    for line in main_text.splitlines():
        if line.startswith(OUTLINE_PREFIX):
            body = line[len(OUTLINE_PREFIX):].rstrip()
            found.append((body[:-1] if body.endswith((".", ";")) else body).split(";"))
    return found


def is_outlined(annotated: str) -> bool:
    """An outline line followed, later in the answer, by a promise (an answer written by annotator version 5)."""
    first = _OUTLINE_RE.search(annotated)
    return first is not None and "<promise" in annotated[first.end():]


def has_terminated_outline(annotated: str) -> bool:
    """The answer's first outline line ends its last item with ';' ("Overview: Diet; Sleep;")."""
    first = _OUTLINE_RE.search(annotated)
    return first is not None and first.group(1).rstrip().endswith(";")


def promise_tag(topic: str, tokens: int | None = None) -> str:
    """Canonical rendering: ``<promise topic="..." tokens="N"/>`` (tokens omitted when None)."""
    if tokens is None:
        return f'<promise topic="{escape_attr(topic)}"/>'
    return f'<promise topic="{escape_attr(topic)}" tokens="{int(tokens)}"/>'


def tokens_attr_from_count(n: int, multiple: int = 10) -> int:
    """The `tokens` attribute for a body of `n` real tokens: round up to a multiple, min `multiple`.
    (The paper's predictions are coarse, e.g. multiples of 10.)"""
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    if n <= multiple:
        return multiple
    return -(-n // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Tag matching (the single source of truth for what is a tag)
# --------------------------------------------------------------------------------------------

_WS = " \t\r\n"
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | frozenset("0123456789-.:")
# Unquoted values (lenient: tokens=20) stop at these.
_UNQUOTED_STOP = frozenset(_WS + "\"'<>=`/")


class _Need(Exception):
    """The candidate ran off the end of the available text: more text could decide it."""


_COMPLETE, _NO, _PARTIAL = 0, 1, 2


class _Cursor:
    __slots__ = ("s", "i")

    def __init__(self, s: str, i: int) -> None:
        self.s, self.i = s, i

    def peek(self) -> str:
        if self.i >= len(self.s):
            raise _Need
        return self.s[self.i]

    def literal(self, lit: str) -> bool:
        for ch in lit:
            if self.peek() != ch:
                return False
            self.i += 1
        return True

    def skip_ws(self) -> None:
        while self.peek() in _WS:
            self.i += 1


def _scan_promise(c: _Cursor) -> list[tuple[str, str]] | None:
    """After "<promise": attributes then "/>" or ">". Returns the (name, raw value) pairs, or None
    when the text cannot be a promise tag. Raises _Need when it still could be one."""
    if c.peek() not in _WS and c.peek() not in "/>":
        return None  # "<promises", "<promise-x": not our tag
    attrs: list[tuple[str, str]] = []
    while True:
        c.skip_ws()
        ch = c.peek()
        if ch == ">":
            c.i += 1
            return attrs
        if ch == "/":
            c.i += 1
            if c.peek() != ">":
                return None
            c.i += 1
            return attrs
        if ch not in _NAME_START:
            return None
        start = c.i
        while c.peek() in _NAME_CHARS:
            c.i += 1
        name = c.s[start : c.i]
        c.skip_ws()
        if c.peek() != "=":
            return None  # no bare boolean attributes
        c.i += 1
        c.skip_ws()
        q = c.peek()
        if q in "\"'":
            c.i += 1
            start = c.i
            while (ch := c.peek()) != q:
                # A raw '<' or newline inside a value means the "tag" was prose: fail fast so the
                # streamer releases it instead of holding up to MAX_TAG_LEN characters.
                if ch in "<\n":
                    return None
                c.i += 1
            value = c.s[start : c.i]
            c.i += 1
        else:
            start = c.i
            while c.peek() not in _UNQUOTED_STOP:
                c.i += 1
            if c.i == start:
                return None
            value = c.s[start : c.i]
        attrs.append((name, value))


def _match_tag(buf: str, p: int, final: bool) -> tuple[int, Tag | None, int]:
    """Decide whether a tag starts at buf[p] (which is '<').

    Returns (_COMPLETE, tag, end), (_NO, None, p) or (_PARTIAL, None, p). The decision depends only
    on buf[p:p+MAX_TAG_LEN] and on whether more text may follow, which makes the streaming
    recognizer's output independent of how the text is split (a tag is never longer than
    MAX_TAG_LEN, and tags are prefix-free: each ends at a fixed '>').
    """
    window = buf[p : p + MAX_TAG_LEN]
    c = _Cursor(window, 1)
    try:
        ch = c.peek()
        tag: Tag | None = None
        if ch == "p":
            if c.literal("promise"):
                pairs = _scan_promise(c)
                if pairs is not None:
                    tag = _make_promise(window[: c.i], pairs)
        elif ch == "a":
            if c.literal("async"):
                c.skip_ws()
                if c.peek() == ">":
                    c.i += 1
                    tag = AsyncOpen(window[: c.i])
        elif ch == "/":
            c.i += 1
            name = c.peek()
            if name == "a" and c.literal("async"):
                c.skip_ws()
                if c.peek() == ">":
                    c.i += 1
                    tag = AsyncClose(window[: c.i])
            elif (name == "s" and c.literal("sync")) or (name == "p" and c.literal("promise")):
                c.skip_ws()
                if c.peek() == "/" and name == "s":  # "</sync/>": both slashes, still no such tag
                    c.i += 1
                if c.peek() == ">":
                    c.i += 1
                    tag = StrayClose(window[: c.i])
        elif ch == "s":
            if c.literal("sync"):
                c.skip_ws()
                if c.literal("/>"):
                    tag = Sync(window[: c.i])
        if tag is None:
            return _NO, None, p
        return _COMPLETE, tag, p + c.i
    except _Need:
        # Could still become a tag -- unless the text has ended or the tag would be too long.
        if final or len(buf) - p >= MAX_TAG_LEN:
            return _NO, None, p
        return _PARTIAL, None, p


def _make_promise(raw: str, pairs: list[tuple[str, str]]) -> Promise:
    attrs: dict[str, str] = {}
    for name, value in pairs:
        attrs.setdefault(name, unescape_attr(value))  # first occurrence wins (as in HTML)
    topic = attrs.get("topic")
    if topic is not None and not topic.strip():
        topic = None
    return Promise(topic=topic, tokens=_parse_tokens(attrs.get("tokens")), raw=raw, attrs=attrs)


def _raw_attr_pairs(raw: str) -> list[tuple[str, str]]:
    """Attribute pairs of a promise's raw text, duplicates included (for the validator)."""
    c = _Cursor(raw, len("<promise"))
    pairs = _scan_promise(c)
    assert pairs is not None
    return [(n, unescape_attr(v)) for n, v in pairs]


# --------------------------------------------------------------------------------------------
# Streaming recognizer
# --------------------------------------------------------------------------------------------


_TAG_NAMES = ("<promise", "<sync", "<async", "</async")


def is_cut_tag(held: str) -> bool:
    """Text a `Recognizer` still holds at the end of a stream that is a Pasta-Lang tag cut short: it names the tag
    (`<promise topic="a`), or is at least five characters of its name (`<prom`, `</asy`). Markup the stream ended
    inside, never content. A shorter hold (`<`, `<p`, `</a`) may be text (`a < b`, HTML) and is kept."""
    return held.startswith(_TAG_NAMES) or (len(held) >= 5 and any(name.startswith(held) for name in _TAG_NAMES))


class Recognizer:
    """Turns text arriving in arbitrary pieces into Text and tag events.

    Holding rule: text streams out at once, except the suffix starting at the first '<' that could
    still begin a tag given more text; that suffix (at most MAX_TAG_LEN - 1 characters) is held in
    `pending` until it completes a tag or can no longer be one, then it is emitted as a tag or as
    Text. flush() ends the stream and releases whatever is held as Text.

    Guarantees: the concatenation of every event's text/raw equals the concatenation of the input;
    after merging adjacent Text events, the events do not depend on how the input was split;
    no empty Text is ever emitted.
    """

    def __init__(self) -> None:
        self._buf = ""

    @property
    def pending(self) -> str:
        """Text currently held back because it could still become a tag."""
        return self._buf

    def feed(self, text: str) -> list[Event]:
        if not text:
            return []
        self._buf += text
        return self._run(final=False)

    def flush(self) -> list[Event]:
        return self._run(final=True)

    def _run(self, final: bool) -> list[Event]:
        buf = self._buf
        events: list[Event] = []
        i = 0  # start of text not yet emitted
        j = 0  # where to look for the next '<'
        while True:
            p = buf.find("<", j)
            if p < 0:
                break
            status, tag, end = _match_tag(buf, p, final)
            if status == _NO:
                j = p + 1  # that '<' is plain text
                continue
            if p > i:
                events.append(Text(buf[i:p]))
            if status == _PARTIAL:
                self._buf = buf[p:]
                return events
            assert tag is not None
            events.append(tag)
            i = j = end
        if i < len(buf):
            events.append(Text(buf[i:]))
        self._buf = ""
        return events


# --------------------------------------------------------------------------------------------
# Whole-text helpers
# --------------------------------------------------------------------------------------------


def _merge_text(events: Iterable[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        if isinstance(e, Text):
            if not e.text:
                continue
            if out and isinstance(out[-1], Text):
                out[-1] = Text(out[-1].text + e.text)  # type: ignore[union-attr]
                continue
        out.append(e)
    return out


def parse(text: str) -> list[Event]:
    """All events of a complete text, adjacent Text merged."""
    r = Recognizer()
    return _merge_text(r.feed(text) + r.flush())


def _event_text(e: Event) -> str:
    return e.text if isinstance(e, Text) else e.raw


def render(events: Iterable[Event]) -> str:
    """Inverse of parse: concatenation of Text.text and each tag's raw text."""
    return "".join(_event_text(e) for e in events)


def _parse_with_offsets(text: str) -> Iterator[tuple[int, Event]]:
    off = 0
    for e in parse(text):
        yield off, e
        off += len(_event_text(e))


def strip_tags(text: str) -> str:
    """The plain answer in reading order: every tag dropped, all text (async bodies too) kept."""
    return "".join(e.text for e in parse(text) if isinstance(e, Text))


# --------------------------------------------------------------------------------------------
# Structured form of a storage-form response
# --------------------------------------------------------------------------------------------


@dataclass
class MainText:
    """Text written by the main thread."""

    text: str

    def to_storage(self) -> str:
        return self.text


@dataclass
class Chunk:
    """One promise and its async body.

    For malformed input (non-strict to_structure) the raw fields keep the text lossless:
    promise_raw == "" for an <async> with no promise before it, open_raw == "" for a promise with
    no body, close_raw == "" for a body never closed. Tags nested inside a body stay in `body`
    as text.
    """

    topic: str | None
    tokens: int | None
    body: str
    promise_raw: str
    open_raw: str = ASYNC_OPEN
    close_raw: str = ASYNC_CLOSE
    promise: Promise | None = None

    @property
    def has_body(self) -> bool:
        return bool(self.open_raw)

    def to_storage(self) -> str:
        return self.promise_raw + self.open_raw + self.body + self.close_raw


@dataclass
class SyncMark:
    raw: str = SYNC

    def to_storage(self) -> str:
        return self.raw


Part = MainText | Chunk | SyncMark


@dataclass
class AnnotatedResponse:
    """An ordered list of parts: main text pieces, promise+chunk pairs, sync markers."""

    parts: list[Part] = field(default_factory=list)

    @property
    def chunks(self) -> list[Chunk]:
        return [p for p in self.parts if isinstance(p, Chunk)]

    def main_thread_pieces(self) -> Iterator[str]:
        """The main thread's output in generation order: main text, promise tags, sync tags."""
        for p in self.parts:
            if isinstance(p, MainText):
                yield p.text
            elif isinstance(p, Chunk):
                if p.promise_raw:
                    yield p.promise_raw
            else:
                yield p.raw

    def main_thread_text(self) -> str:
        """What the main thread generates: everything except async bodies (and their tags)."""
        return "".join(self.main_thread_pieces())

    def chunk_prefix(self, index: int) -> str:
        """The response part of async thread `index`'s prefix: the main thread's text up to and
        including that chunk's promise tag, and, for chunks after a <sync/>, the earlier
        (synced) bodies in place -- i.e. the storage text before this chunk's <async>, minus the
        bodies still outstanding at that point."""
        target = self.chunks[index]
        out: list[str] = []
        outstanding: set[int] = set()  # positions in `out` of bodies not synced yet
        for p in self.parts:
            if isinstance(p, MainText):
                out.append(p.text)
            elif isinstance(p, SyncMark):
                out.append(p.raw)
                outstanding.clear()
            else:
                out.append(p.promise_raw)
                if p is target:
                    # Threads never see each other's bodies before a sync.
                    return "".join(s for k, s in enumerate(out) if k not in outstanding)
                outstanding.add(len(out))
                out.append(p.open_raw + p.body + p.close_raw)
        raise IndexError(index)  # pragma: no cover - target is always found

    def plain_text(self) -> str:
        return strip_tags(self.to_storage())

    def to_storage(self) -> str:
        return "".join(p.to_storage() for p in self.parts)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

# code -> (severity, what it means). Stable: tests, data filters and docs refer to these codes.
ISSUE_CODES: dict[str, tuple[str, str]] = {
    "stray-async-close": ("error", "</async> with no open <async>"),
    "async-without-promise": ("error", "<async> not immediately after a promise tag"),
    "promise-without-body": ("error", "promise not immediately followed by <async>...</async>"),
    "nested-promise": ("error", "promise tag inside an async body"),
    "nested-async": ("error", "<async> inside an async body"),
    "sync-in-async": ("error", "<sync/> inside an async body"),
    "unclosed-async": ("error", "<async> never closed by </async>"),
    "missing-topic": ("error", "promise without a topic attribute"),
    "empty-topic": ("error", "promise with an empty topic"),
    "bad-tokens": ("error", "tokens is not a decimal integer"),
    "tokens-out-of-range": ("error", f"tokens <= 0 or > {MAX_TOKENS}"),
    "stray-close": ("error", "a closing tag Pasta-Lang does not have (</sync>, </sync/>, </promise>)"),
    "malformed-tag": ("error", "text that looks like a Pasta-Lang tag but does not parse as one"),
    "missing-tokens": ("warning", "promise without a tokens attribute"),
    "unknown-attr": ("warning", "promise attribute other than topic/tokens"),
    "duplicate-attr": ("warning", "attribute given twice (the first one counts)"),
    "promise-not-self-closed": ("warning", "promise closed with '>' instead of '/>'"),
    "sync-nothing-outstanding": ("warning", "<sync/> with no promise since the previous sync"),
}


@dataclass(frozen=True)
class Issue:
    code: str
    message: str  # "line L, column C: what"
    offset: int  # 0-based character offset of the offending text
    line: int  # 1-based
    column: int  # 1-based
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.severity} [{self.code}] {self.message}"


class PastaSyntaxError(ValueError):
    """Raised by to_structure(strict=True); `.issue` is the first error."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(str(issue))
        self.issue = issue


# Tag-like prose that did not parse (e.g. "<sync>", '<promise topic="x" tokens=>').
_TAGLIKE_RE = re.compile(r"</?(?:promise|async|sync)(?![A-Za-z0-9_\-.:])")


def _short(raw: str, limit: int = 60) -> str:
    return raw if len(raw) <= limit else raw[: limit - 3] + "..."


class _Analyzer:
    """One walk over the events builds the structure and the issues, so they always agree."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._nl = [i for i, ch in enumerate(text) if ch == "\n"]
        self.issues: list[Issue] = []
        self.parts: list[Part] = []
        self._run()
        self.issues.sort(key=lambda x: x.offset)  # stable: same-offset issues keep walk order

    def _loc(self, offset: int) -> tuple[int, int]:
        k = bisect.bisect_left(self._nl, offset)  # newlines strictly before offset
        line_start = self._nl[k - 1] + 1 if k else 0
        return k + 1, offset - line_start + 1

    def issue(self, code: str, offset: int, what: str) -> None:
        line, col = self._loc(offset)
        self.issues.append(
            Issue(code, f"line {line}, column {col}: {what}", offset, line, col, ISSUE_CODES[code][0])
        )

    def _main(self, s: str) -> None:
        if self.parts and isinstance(self.parts[-1], MainText):
            self.parts[-1].text += s
        else:
            self.parts.append(MainText(s))

    def _check_promise(self, off: int, pr: Promise) -> None:
        pairs = _raw_attr_pairs(pr.raw)
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                self.issue("duplicate-attr", off, f"attribute {name!r} given twice in {_short(pr.raw)}")
            seen.add(name)
            if name not in KNOWN_ATTRS:
                self.issue("unknown-attr", off, f"unknown attribute {name!r} in {_short(pr.raw)}")
        if "topic" not in pr.attrs:
            self.issue("missing-topic", off, f"promise without a topic: {_short(pr.raw)}")
        elif pr.topic is None:
            self.issue("empty-topic", off, f"promise with an empty topic: {_short(pr.raw)}")
        tok = pr.attrs.get("tokens")
        if tok is None:
            self.issue("missing-tokens", off, f"promise without tokens: {_short(pr.raw)}")
        elif not _INT_RE.fullmatch(tok.strip()):
            self.issue("bad-tokens", off, f"tokens={tok!r} is not a decimal integer")
        elif pr.tokens is None:
            self.issue("tokens-out-of-range", off, f"tokens={tok!r} is not in 1..{MAX_TOKENS}")
        if not pr.self_closing:
            self.issue("promise-not-self-closed", off, f"promise closed with '>' not '/>': {_short(pr.raw)}")

    def _run(self) -> None:
        waiting: tuple[int, Chunk] | None = None  # promise just emitted, its <async> must follow
        body: tuple[int, Chunk] | None = None  # open async body: (offset of <async>, chunk)
        outstanding = 0  # promises since the last sync

        def no_body() -> None:
            nonlocal waiting
            if waiting is not None:
                off, ch = waiting
                self.issue(
                    "promise-without-body",
                    off,
                    f"{_short(ch.promise_raw)} is not immediately followed by <async>...</async>",
                )
                ch.open_raw = ch.close_raw = ""
                waiting = None

        for off, e in _parse_with_offsets(self.text):
            if body is not None:
                chunk = body[1]
                if isinstance(e, AsyncClose):
                    chunk.close_raw = e.raw
                    body = None
                    continue
                if isinstance(e, Text):
                    for m in _TAGLIKE_RE.finditer(e.text):
                        self.issue("malformed-tag", off + m.start(), f"{m.group(0)!r} does not parse as a tag")
                elif isinstance(e, Promise):
                    self.issue("nested-promise", off, f"promise {_short(e.raw)} inside an async body (no nesting)")
                elif isinstance(e, AsyncOpen):
                    self.issue("nested-async", off, f"{e.raw} inside an async body (no nesting)")
                elif isinstance(e, Sync):
                    self.issue("sync-in-async", off, f"{e.raw} inside an async body")
                elif isinstance(e, StrayClose):
                    self.issue("stray-close", off, f"{e.raw} closes nothing (Pasta-Lang has no such tag)")
                chunk.body += _event_text(e)  # nested tags stay as body text
                continue

            if isinstance(e, Text):
                no_body()
                for m in _TAGLIKE_RE.finditer(e.text):
                    self.issue("malformed-tag", off + m.start(), f"{m.group(0)!r} does not parse as a tag")
                self._main(e.text)
            elif isinstance(e, Promise):
                no_body()
                self._check_promise(off, e)
                chunk = Chunk(e.topic, e.tokens, "", e.raw, "", "", e)
                self.parts.append(chunk)
                waiting = (off, chunk)
                outstanding += 1
            elif isinstance(e, AsyncOpen):
                if waiting is not None:
                    chunk = waiting[1]
                    waiting = None
                else:
                    self.issue("async-without-promise", off, f"{e.raw} not immediately after a promise tag")
                    chunk = Chunk(None, None, "", "", "", "", None)
                    self.parts.append(chunk)
                chunk.open_raw = e.raw
                body = (off, chunk)
            elif isinstance(e, AsyncClose):
                no_body()
                self.issue("stray-async-close", off, f"{e.raw} with no open <async>")
                self._main(e.raw)
            elif isinstance(e, StrayClose):
                self.issue("stray-close", off, f"{e.raw} closes nothing (Pasta-Lang has no such tag)")
                self._main(e.raw)  # kept, so the structure stays lossless; plain text drops it like any tag
            else:  # Sync
                no_body()
                if outstanding == 0:
                    self.issue("sync-nothing-outstanding", off, f"{e.raw} with no promise since the previous sync")
                outstanding = 0
                self.parts.append(SyncMark(e.raw))
        no_body()
        if body is not None:
            self.issue("unclosed-async", body[0], f"{body[1].open_raw} never closed by </async>")


def to_structure(text: str, strict: bool = False) -> AnnotatedResponse:
    """Structure of a storage-form response. Lossless for any input: to_storage() returns `text`.
    strict=True raises PastaSyntaxError on the first error (warnings are ignored)."""
    a = _Analyzer(text)
    if strict:
        for iss in a.issues:
            if iss.severity == "error":
                raise PastaSyntaxError(iss)
    return AnnotatedResponse(a.parts)


def validate(text: str) -> list[Issue]:
    """Every issue (errors and warnings) of a storage-form response, in text order."""
    return _Analyzer(text).issues


def is_valid(text: str) -> bool:
    """True when validate() reports no error (warnings are allowed)."""
    return all(i.severity != "error" for i in validate(text))
