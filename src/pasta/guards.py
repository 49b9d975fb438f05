"""The runtime guards' rules (`DecodeLimits`, docs/pasta-lang.md "Runtime guards"), written once for both drivers:
the local decoder (`pasta.decoding.Decoding`, token by token) and the remote backend (`pasta.backends.openai`, text
between stop strings). What a guard then does to the text - inject tokens, or send a new request - is the driver's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .lang import OUTLINE_PREFIX, Promise, counted_topic, escape_attr, last_outline, topic_count, topic_key

if TYPE_CHECKING:
    from .decoding import DecodeLimits

# Text that is only list numbering or bullets: written between two syncs, it does not make the second one an answer.
MARKER_ONLY = re.compile(r"[\s\d.)*+\-\u2022]*")
# A list marker at the end of the text ("\n7. ", "- "), which a refused promise would leave dangling.
TRAILING_MARKER = re.compile(r"(?:^|\n)[ \t]*((?:\d{1,3}[.)]|[-*+\u2022])[ \t]*)$")
# What stands for a promise in the main thread's text when the outline topics count the items already used.
PROMISE_MARK = "\0"


@dataclass
class PromiseGuards:
    """The main thread's guard bookkeeping: which promises to refuse, when a refusal ends the thread, when a
    `<sync/>` is a loop. The driver calls `on_text` for the main thread's plain text, `refusal` then `accept` or
    `refuse` for each promise, and `on_sync` for each `<sync/>`."""

    limits: DecodeLimits
    topics: set[str] = field(default_factory=set)
    promises: int = 0
    since_sync: int = 0
    finished_counts: set[int] = field(default_factory=set)  # totals N of counted lists that reached "N/N" since a sync
    refused_in_a_row: int = 0
    idle_sync: bool = False  # the main thread's last tag was a <sync/>, with no text since
    past_outline: bool = False  # the promise being opened comes after the outline's last item (outline_done)

    def refusal(self, promise: Promise) -> str | None:
        """The guard that refuses `promise` (its name), or None to accept it."""
        limits = self.limits
        if self.past_outline:
            self.past_outline = False
            return "outline_done"
        if limits.refuse_repeated_topics and topic_key(promise.topic) in self.topics:
            return "repeated_topic"
        if limits.refuse_count_overrun and (count := topic_count(promise.topic)) and count[1] in self.finished_counts:
            return "count_overrun"
        if self.promises >= limits.max_promises:
            return "max_promises"
        if self.since_sync >= limits.max_promises_per_sync:
            return "max_promises_per_sync"
        return None

    def accept(self, promise: Promise) -> None:
        self.topics.add(topic_key(promise.topic))
        if (count := topic_count(promise.topic)) and count[0] >= count[1]:
            self.finished_counts.add(count[1])
        self.promises += 1
        self.since_sync += 1
        self.refused_in_a_row = 0
        self.idle_sync = False

    def refuse(self) -> bool:
        """Count a refusal; True when it is the second with no accepted promise in between (the main thread ends),
        False when the main thread is to write `<sync/>` next."""
        self.refused_in_a_row += 1
        return self.refused_in_a_row >= 2

    def on_text(self, text: str) -> None:
        if not MARKER_ONLY.fullmatch(text):
            self.idle_sync = False

    def on_sync(self, *, outstanding: bool, guarded: bool = True) -> bool:
        """A `<sync/>` of the main thread. True when it is a loop (another sync with nothing outstanding and nothing
        but list numbering written since the last) and `guarded`: refuse it and end the main thread."""
        if guarded and not outstanding and self.idle_sync:
            return True
        self.idle_sync = True
        self.since_sync = 0
        self.finished_counts.clear()
        return False

    @staticmethod
    def guard_note(reason: str, raw: str, ended: bool) -> str:
        return f"{reason}: {raw}; " + ("main thread ended" if ended else "forced <sync/>")


def trailing_marker_start(text: str) -> int | None:
    """Where a list marker the main thread wrote for a refused promise begins at the end of `text` ("7. ", "- "),
    or None: the marker would dangle in the answer, so the driver drops it."""
    m = TRAILING_MARKER.search(text)
    return m.start(1) if m and m.group(1) else None


@dataclass(frozen=True)
class OutlineCut:
    """What the outline guard does instead of the ';' that ends an outline item: drop the last `drop` characters of
    the main thread's text and write `end` (and record `note` among the guards)."""

    note: str
    drop: int
    end: str


def outline_cut(line: str, before: str, limits: DecodeLimits) -> OutlineCut | None:
    """The outline guard (DecodeLimits.outline_topics), as the main thread ends an outline item with ';': `line` is
    its current line before the ';' is written, minus `before` (text written with the ';' ahead of it, as one token
    can carry both). None when the item may stand; else the cut: a repeated item is dropped and the line ended with
    '.', a line at `max_promises_per_sync` items is ended there."""
    if not line.startswith(OUTLINE_PREFIX):
        return None
    *earlier, item = (line[len(OUTLINE_PREFIX):] + before).split(";")
    seen = {topic_key(i) for i in earlier} - {""}
    terminated = bool(limits.outline_terminated)
    repeats = topic_key(item) in seen
    # '.'-ended, a ';' after the cap-th item asks for one more; terminated, every item ends with ';'
    too_long = len(earlier) + (0 if terminated else 1) >= limits.max_promises_per_sync
    if not (repeats or too_long):
        return None
    note = (f"outline_repeat: outline item {item.strip()!r} repeats; outline ended" if repeats
            else f"outline_long: outline reached {len(earlier) + 1} items; outline ended")
    if terminated:  # "Overview: Diet; Sleep; Sleep;" -> "Overview: Diet; Sleep;" + blank line (the ';' stays)
        return OutlineCut(note, len(line) - line.rindex(";") - 1, "\n\n")
    if repeats:  # "Overview: Diet; Sleep; Sleep;" -> "Overview: Diet; Sleep." + blank line
        return OutlineCut(note, len(line) - line.rindex(";"), ".\n\n")
    return OutlineCut(note, 0, before + ".\n\n")  # the cap-th item is kept, ended by '.'


def outline_topic_rest(since_sync: str, guard: bool) -> tuple[str, bool] | None:
    """Outline topics (DecodeLimits.outline_topics): the rest of the promise tag the main thread is opening, after
    '<promise topic="'. `since_sync` is its text since its last `<sync/>` with PROMISE_MARK for each promise written
    there. Returns ('j/M item_j" tokens="', False) for the j-th promise after an outline line (M: its distinct items),
    (the tag closed with its count alone, True) for a promise past the outline's last item when the outline guard
    is on, or None (the model writes the topic)."""
    found = last_outline(since_sync)
    if found is None:
        return None
    items, end = found
    distinct: dict[str, str] = {}
    for item in items:
        distinct.setdefault(topic_key(item), item)  # a repeated item is fed once
    names = list(distinct.values())
    j = since_sync.count(PROMISE_MARK, end) + 1
    if j <= len(names):
        return f'{counted_topic(escape_attr(names[j - 1]), j, len(names))}" tokens="', False
    if not guard:
        return None
    # Every item has its promise: a further one would repeat an item or invent one past the plan (on the report set,
    # 23 of 24 repeated topics were such promises, after an outline guard cut the list). The tag is closed with its
    # count alone and refused at once (guard outline_done, a forced <sync/>), instead of sampling a topic and a
    # token count only to refuse them.
    return f'{j}/{len(names)}" tokens="1"/>', True
