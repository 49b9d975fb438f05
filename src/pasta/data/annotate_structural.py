"""Rule-based annotation: list items and markdown sections become async chunks (offline, conservative).

This is also the APAR-like baseline: APAR forks at list items and paragraphs of hierarchical answers,
decided by structure, not meaning. Rules:

- fenced code blocks are opaque (a `# comment` in Python is not a heading, `- x` in YAML not a list);
- sections: when >= 2 sibling markdown headings at the top-most level exist, each section (heading +
  content up to the next heading of that level) becomes a chunk; a last section named like a
  conclusion ("Conclusion", "Summary", ...) stays in the main thread, after the sync, because it
  usually sums up the others;
- otherwise lists: every run of >= `min_items` top-level items (numbered or bulleted) where EVERY item
  has >= `min_words` words and none opens with a word that points back ("Then", "Next", "This", ...)
  becomes a group of chunks; nested lines belong to their item; procedures are skipped (a list
  introduced as "steps"/"instructions", an item that mentions "step N", or ends with ':' because its
  content follows outside it);
- text before a group stays in the main thread; `<sync/>` follows the group (before any text after it).

Text is never changed: `strip_tags(annotate_structural(text)) == text` exactly. Tags go at line
starts and before the newline that ends an item, so bodies hold whole lines. A response that already
contains tag-like text is returned unchanged (it cannot be annotated losslessly).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from pasta import lang
from pasta.data.finalize import (
    AnnotateStats,
    AnnotationRejected,
    AnnotationStore,
    FinalizeConfig,
    TokenCounter,
    approx_token_count,
    finalize_annotation,
    has_pasta_tags,
)
from pasta.data.sources import Example

__all__ = ["StructuralConfig", "annotate_structural", "annotate_structural_examples", "topic_from_text"]

# Words that make an item depend on the one before it (sequential procedures, back-references).
_DEPENDENT_OPENERS = frozenset(
    "then next after afterwards finally lastly this that these those it they subsequently".split()
)
_CONCLUSION_RE = re.compile(
    r"^\s*(?:in\s+)?(?:conclusion|summary|summing up|to sum up|final thoughts|overall|wrap[- ]?up|takeaways?|"
    r"key takeaways|tl;?dr|bottom line)\b",
    re.IGNORECASE,
)
# A list introduced as steps/instructions is a procedure: each step assumes the ones before it were done.
_PROCEDURE_INTRO_RE = re.compile(r"\b(?:steps?|instructions?|procedure|in (?:this|the following) order)\b",
                                 re.IGNORECASE)
_STEP_REF_RE = re.compile(r"\bsteps?\s*\d", re.IGNORECASE)
_FENCE_RE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
# Top-level item: up to 3 spaces, a bullet or a number, then a space.
_ITEM_RE = re.compile(r"^( {0,3})(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+\S")
_WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*")


@dataclass(frozen=True)
class StructuralConfig:
    """Rules of the structural annotator. The defaults are version 2 (`v1()` gives the first version's rules):

    - `max_chunks`: a list of more items is grouped into at most this many chunks of consecutive items (topic:
      the items' topics joined by "; "), a list of more than `max_items` is left alone, and an answer gets at most
      this many chunks in all (a later group that would exceed it stays in the main thread). Few, larger chunks
      teach a small model to sync: in version 1, lists of 8-10 chunks made "another promise" the likely next step.
    - `marker_in_main`: an item's list marker ("1. ", "- ") stays in the main thread, before its promise, so the
      main thread counts the items and a chunk need not guess its own number.
    - `distinct_topics`: a group whose topics repeat (case and punctuation aside) gets longer topics, or is left
      alone; the main thread only sees topics, and repeated topics taught it to repeat itself.
    """

    min_items: int = 2
    min_words: int = 8  # every item of a group must be at least this long: short items are not worth a thread
    max_topic_words: int = 6
    tokens_multiple: int = 10
    sections: bool = True
    lists: bool = True
    max_chunks: int | None = 6
    max_items: int | None = 18
    marker_in_main: bool = True
    distinct_topics: bool = True
    # Consecutive items are grouped so that a chunk holds about this many tokens (None: one item per chunk, grouped
    # only past max_chunks). A promise tag costs the main thread ~13 tokens: a 25-token item is not worth a thread.
    target_chunk_tokens: int | None = None
    grouped_topic_words: int | None = None  # words per item in a grouped chunk's topic (None: as long as fits)
    # Each topic of a group opens with its place and the group's size ("2/3 Exercise"): the main thread, which
    # never sees a chunk before `<sync/>`, can then tell from the topic it just wrote that the list is done.
    counted_topics: bool = False
    # Before a group's first chunk, the main thread writes one plain line naming the group's chunks ("Overview:
    # Sleep; Food; Walk."), so each topic it writes next is copied from text in view instead of recalled from the
    # last topic alone (r13: 13 of 22 repeated topics were a list's second item). The one rule that adds text.
    outline: bool = False

    def __post_init__(self) -> None:
        if self.min_items < 2:
            raise ValueError(f"min_items must be >= 2 (one chunk is nothing to parallelize), got {self.min_items}")
        if self.min_words < 1 or self.max_topic_words < 1 or self.tokens_multiple < 1:
            raise ValueError("min_words, max_topic_words and tokens_multiple must be >= 1")
        if self.max_chunks is not None and self.max_chunks < self.min_items:
            raise ValueError(f"max_chunks must be >= min_items ({self.min_items}), got {self.max_chunks}")
        if self.max_items is not None and self.max_items < self.min_items:
            raise ValueError(f"max_items must be >= min_items ({self.min_items}), got {self.max_items}")
        if self.target_chunk_tokens is not None and self.target_chunk_tokens < 1:
            raise ValueError(f"target_chunk_tokens must be >= 1, got {self.target_chunk_tokens}")

    @classmethod
    def v3(cls, **overrides) -> StructuralConfig:
        """Version 2, with items grouped into chunks of about 60 tokens and short topics (4 words; 3 per item in a
        group), so each promise pays for itself."""
        return cls(**{"target_chunk_tokens": 60, "max_topic_words": 4, "grouped_topic_words": 3, **overrides})

    @classmethod
    def v4(cls, **overrides) -> StructuralConfig:
        """Version 2 with counted topics ("1/3 Diet", "2/3 Exercise", "3/3 Sleep"): the stop decision after a
        promise becomes a local one (k == N) instead of a guess the main thread cannot make without seeing its
        chunks, which is what made earlier models repeat a topic until the token cap."""
        return cls(**{"counted_topics": True, **overrides})

    @classmethod
    def v5(cls, **overrides) -> StructuralConfig:
        """Version 4 with an outline line before each group ("Overview: Diet; Exercise; Sleep."): the answer the
        model learns is the original one plus that line, which it writes sequentially, where a small model lists
        distinct items well, and then copies topic by topic into its promises."""
        return cls(**{"counted_topics": True, "outline": True, **overrides})

    @classmethod
    def v1(cls, **overrides) -> StructuralConfig:
        """The first version's rules (one chunk per item, markers inside chunks, topics as they come)."""
        return cls(**{"max_chunks": None, "max_items": None, "marker_in_main": False, "distinct_topics": False,
                      **overrides})


@dataclass
class _Line:
    start: int  # offset of the first character
    end: int  # offset of the '\n' (or len(text) for the last line)
    text: str
    in_code: bool  # inside a fenced block, fences included


def _lines(text: str) -> list[_Line]:
    out: list[_Line] = []
    pos, in_code = 0, False
    for raw in text.split("\n"):
        end = pos + len(raw)
        fence = bool(_FENCE_RE.match(raw))
        out.append(_Line(pos, end, raw, in_code or fence))
        if fence:
            in_code = not in_code
        pos = end + 1
    return out


def topic_from_text(text: str, max_words: int = 6) -> str:
    """A short topic from a chunk's opening: a bold lead or a 'Title:' lead if short, else its first words."""
    first = text.strip().split("\n", 1)[0]
    first = re.sub(r"^ {0,3}(?:#{1,6}[ \t]+|[-*+\u2022][ \t]+|\d{1,3}[.)][ \t]+)", "", first)
    bold = re.match(r"^\s*(\*\*|__)(.+?)\1", first)
    # The first clause is usually the point of the item ("Exercise regularly, aiming for ...").
    lead = bold.group(2) if bold else re.split(r"[,;:.!?(\u2014]|\s[-\u2013]\s", first, maxsplit=1)[0]
    words = _WORD_RE.findall(lead)
    if not words or len(words) > max_words:
        words = _WORD_RE.findall(first)
    return " ".join(words[:max_words])


def _is_blank(line: _Line) -> bool:
    return not line.text.strip()


def _sections(lines: list[_Line]) -> list[tuple[int, int]]:
    """(first line, end line exclusive) per sibling section; [] when no level has >= 2 headings.

    The level is the shallowest one with two or more headings that no shallower heading interrupts
    (so a single '# Title' above '## A', '## B' does not hide the sections)."""
    heads = [(i, len(m.group(1))) for i, ln in enumerate(lines)
             if not ln.in_code and (m := _HEADING_RE.match(ln.text))]
    for level in sorted({lv for _, lv in heads}):
        starts = [i for i, lv in heads if lv == level]
        if len(starts) < 2 or any(lv < level and i > starts[0] for i, lv in heads):
            continue
        return [(s, starts[k + 1] if k + 1 < len(starts) else len(lines)) for k, s in enumerate(starts)]
    return []


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _item_indent(line: _Line) -> int | None:
    """Indentation of a list item's marker, or None when the line is not an item."""
    if line.in_code:
        return None
    m = _ITEM_RE.match(line.text)
    return len(m.group(1)) if m else None


def _lists(lines: list[_Line]) -> list[list[tuple[int, int]]]:
    """Runs of sibling items (same marker indentation); each item is (first line, end line exclusive).

    An item runs over: more-indented lines (nested lists, indented code), lazy continuation lines right
    after its text, and blank lines followed by a more-indented line. Trailing blank lines are excluded."""
    groups: list[list[tuple[int, int]]] = []
    n, i = len(lines), 0
    while i < n:
        indent = _item_indent(lines[i])
        if indent is None:
            i += 1
            continue
        items: list[tuple[int, int]] = []
        while True:
            j = i + 1
            while j < n:
                ln = lines[j]
                if _is_blank(ln):
                    k = j
                    while k < n and _is_blank(lines[k]):
                        k += 1
                    if k < n and _indent(lines[k].text) > indent and (_item_indent(lines[k]) or 99) > indent:
                        j = k
                        continue
                    break
                sub = _item_indent(ln)
                if sub is not None and sub <= indent:
                    break  # a sibling (or a shallower list)
                if ln.in_code:
                    # A fenced block belongs to the item when it is indented under it (or we are inside one).
                    if _indent(ln.text) > indent or lines[j - 1].in_code:
                        j += 1
                        continue
                    break
                if _HEADING_RE.match(ln.text):
                    break
                j += 1  # nested line or lazy continuation
            items.append((i, j))
            k = j
            while k < n and _is_blank(lines[k]):
                k += 1
            if k < n and _item_indent(lines[k]) == indent:
                i = k  # a loose list: blank lines between siblings keep it going
                continue
            break
        groups.append(items)
        i = j
    return groups


def _first_word(text: str) -> str:
    m = _WORD_RE.search(re.sub(r"^ {0,3}(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+", "", text))
    return m.group(0).lower() if m else ""


def annotate_structural(
    text: str,
    count_tokens: TokenCounter | None = None,
    config: StructuralConfig = StructuralConfig(),
) -> str:
    """Valid Pasta-Lang whose plain text is exactly `text` (with `config.outline`: `text` plus the outline lines);
    unchanged when nothing qualifies."""
    if not text.strip() or has_pasta_tags(text):
        return text
    inserted: list[tuple[int, str]] = []
    result = _insert_tags(text, count_tokens or approx_token_count, config, inserted)
    # Never hand back something that changed the answer or does not parse; unannotated is always valid.
    if lang.strip_tags(result) != _with_insertions(text, inserted) or not lang.is_valid(result):
        return text
    return result


def _with_insertions(text: str, inserted: list[tuple[int, str]]) -> str:
    out, last = [], 0
    for at, piece in inserted:
        out += [text[last:at], piece]
        last = at
    return "".join(out) + text[last:]


def _insert_tags(text: str, count: TokenCounter, config: StructuralConfig,
                 inserted: list[tuple[int, str]] | None = None) -> str:
    """The rules themselves (tests check their output directly, without the safety net above). Text the rules add
    (outline lines) is recorded in `inserted` as (offset in `text`, text)."""
    lines = _lines(text)

    def span_text(first: int, end: int) -> tuple[int, int]:
        return lines[first].start, lines[end - 1].end

    def trim_blank(first: int, end: int) -> int:
        while end > first + 1 and _is_blank(lines[end - 1]):
            end -= 1
        return end

    # Each group: a list of (start offset, end offset) bodies, then where its sync goes.
    groups: list[tuple[list[tuple[int, int]], int]] = []
    sections = _sections(lines) if config.sections else []
    if len(sections) >= config.min_items:
        if _CONCLUSION_RE.match(_HEADING_RE.match(lines[sections[-1][0]].text).group(2)):
            sections = sections[:-1]
        bodies = [span_text(s, trim_blank(s, e)) for s, e in sections]
        if len(bodies) >= config.min_items and all(
            len(_WORD_RE.findall(text[a:b])) >= config.min_words for a, b in bodies
        ):
            groups.append((bodies, bodies[-1][1]))
    if not groups and config.lists:
        for items in _lists(lines):
            if len(items) < config.min_items:
                continue
            bodies = [span_text(s, e) for s, e in items]
            item_texts = [text[a:b] for a, b in bodies]
            if any(len(_WORD_RE.findall(t)) < config.min_words for t in item_texts):
                continue
            if any(_first_word(t) in _DEPENDENT_OPENERS for t in item_texts[1:]):
                continue
            if any(t.rstrip().endswith(":") or _STEP_REF_RE.search(t) for t in item_texts):
                continue  # an item whose content follows outside it, or that points at another step
            intro = next((ln.text for ln in reversed(lines[: items[0][0]]) if not _is_blank(ln)), "")
            if _PROCEDURE_INTRO_RE.search(intro):
                continue
            if config.max_items is not None and len(items) > config.max_items:
                continue  # too long a list to fork without many chunks: left alone
            if config.marker_in_main:
                bodies = [(_MARKER_RE.match(text, a).end(), b) for a, b in bodies]
            groups.append((bodies, bodies[-1][1]))
    if not groups:
        return text

    out: list[str] = []
    last = 0
    total = 0
    for bodies, body_end in groups:
        chunks = _chunks_of(text, bodies, config, count)
        if chunks is None:
            continue
        if config.max_chunks is not None and total + len(chunks) > config.max_chunks:
            continue  # at most max_chunks per answer: later groups stay in the main thread
        total += len(chunks)
        if config.outline:
            line_start = text.rfind("\n", 0, chunks[0][0][0]) + 1
            line = lang.outline_line([topic for _, topic in chunks])
            out.append(text[last:line_start] + line)
            last = line_start
            if inserted is not None:
                inserted.append((line_start, line))
        if config.counted_topics:
            chunks = [(span, lang.counted_topic(topic, k + 1, len(chunks))) for k, (span, topic) in enumerate(chunks)]
        for (a, b), topic in chunks:
            body = text[a:b]
            tokens = lang.tokens_attr_from_count(count(body), config.tokens_multiple)
            out.append(text[last:a])
            out.append(lang.promise_tag(topic, tokens) + lang.ASYNC_OPEN + body + lang.ASYNC_CLOSE)
            last = b
        # The sync goes at the start of the next non-blank line (or the very end), before what comes next.
        m = re.compile(r"\S").search(text, body_end)
        sync_at = max(body_end, text.rfind("\n", 0, m.start()) + 1) if m else len(text)
        out.append(text[last:sync_at] + lang.SYNC)
        last = sync_at
    out.append(text[last:])
    return "".join(out)


_MARKER_RE = re.compile(r" {0,3}(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+")
_MAX_TOPIC_CHARS = 100


def _group(sizes: list[int], k: int) -> list[int]:
    """Split consecutive items into k groups of near-equal total size; returns each group's item count."""
    total, out, start = sum(sizes), [], 0
    for g in range(k):
        left = k - g
        if left == 1:
            out.append(len(sizes) - start)
            break
        goal, acc, end = (total - sum(sizes[:start])) / left, 0, start
        # At least one item per group, and leave at least one item for each later group.
        while end < len(sizes) - (left - 1) and (end == start or acc + sizes[end] / 2 <= goal):
            acc += sizes[end]
            end += 1
        out.append(end - start)
        start = end
    return out


def _chunks_of(text: str, bodies: list[tuple[int, int]], config: StructuralConfig, count: TokenCounter
               ) -> list[tuple[tuple[int, int], str]] | None:
    """The group's chunks as ((start, end), topic without a count): items grouped to at most `max_chunks` (and to about
    `target_chunk_tokens` each), topics made distinct (None: the group is left alone)."""
    if config.target_chunk_tokens is not None:
        sizes = [count(text[a:b]) for a, b in bodies]
        k = min(len(bodies), config.max_chunks or len(bodies), round(sum(sizes) / config.target_chunk_tokens))
        if k < config.min_items:
            return None  # too little text to be worth two threads
        counts = _group(sizes, k)
    else:
        size = 1 if config.max_chunks is None else -(-len(bodies) // config.max_chunks)
        counts = [min(size, len(bodies) - i) for i in range(0, len(bodies), size)]
    spans, i = [], 0
    for c in counts:
        spans.append(bodies[i : i + c])
        i += c

    def topics(longer: bool) -> list[str]:
        out = []
        for span in spans:
            parts = [(_opening_words(text[a:b], 2 * config.max_topic_words) if longer else
                      topic_from_text(text[a:b], config.max_topic_words)) or "part" for a, b in span]
            joined = "; ".join(parts)
            if len(span) > 1 and (config.grouped_topic_words or len(joined) > _MAX_TOPIC_CHARS):
                # A grouped topic stays a short summary: every topic word is a token the main thread must write.
                joined = "; ".join(" ".join(p.split()[: config.grouped_topic_words or 3]) for p in parts)
            out.append(joined)
        return out

    names = topics(longer=False)
    if config.distinct_topics and len({lang.topic_key(t) for t in names}) < len(names):
        names = topics(longer=True)
        if len({lang.topic_key(t) for t in names}) < len(names):
            return None
    return [((span[0][0], span[-1][1]), name) for span, name in zip(spans, names)]


def _opening_words(body: str, n: int) -> str:
    """The first n words of a chunk's first line (its marker and markdown emphasis left out)."""
    first = _MARKER_RE.sub("", body.strip().split("\n", 1)[0], count=1)
    return " ".join(_WORD_RE.findall(first)[:n])


def annotate_structural_examples(
    examples: Iterable[Example],
    out_path: str | Path,
    rejects_path: str | Path,
    *,
    count_tokens: TokenCounter | None = None,
    config: StructuralConfig = StructuralConfig(),
    progress: bool = True,
) -> AnnotateStats:
    """The file pipeline of the structural annotator: same rows, rejects and resume rules as annotate_llm.

    Unstructured responses are kept, unannotated (the model must also learn when not to fork)."""
    from tqdm.auto import tqdm

    count = count_tokens or approx_token_count
    finalize_cfg = FinalizeConfig(tokens_multiple=config.tokens_multiple)
    stats = AnnotateStats()
    with AnnotationStore(out_path, rejects_path) as store:
        for ex in tqdm(examples, desc="annotate", unit="ex", disable=not progress):
            stats.total += 1
            if ex.id in store.done:
                stats.skipped_done += 1
                continue
            try:
                raw = annotate_structural(ex.response, count, config)
                if config.outline:  # the answer to learn is the response with its outline lines
                    ex = replace(ex, response=lang.strip_tags(raw))
                # finalize re-checks what the rules produced, with the same rules as LLM annotations.
                annotated = finalize_annotation(ex.response, raw, count, finalize_cfg)
            except AnnotationRejected as rej:
                store.reject(ex, rej.reason, rej.detail, "structural")
                stats.reject(rej.reason)
                continue
            store.accept(ex, annotated, "structural")
            stats.accepted += 1
            stats.annotated += "<promise" in annotated
    return stats
