"""No repeated outline items: the token that would make the item being written an exact copy of an earlier one.

A small model that writes an outline line ("Overview: Billy Joel; Billy Joel.") often names an item twice - the
commonest way the shipped model needs its outline guard (r17: 10 of its 16 guarded forks on AlpacaEval 0-99). The
guard can only cut the outline once the copy is written. This is the preventive form, the outline's own
`no_repeat_ngram_size` (Hugging Face's generate) with the earlier items for n-grams: the token that would complete
a copy of an earlier item is banned, so the model takes its next choice there ("Billy Joel; Billy" + " Joel"
banned -> " Idol"). Only the completing token: a ban on every token that continues a shared prefix ("Use a map"
after "Use a calculator", "Step 2" after "Step 1") turned sound items into odd ones on the development set
("Use an online", "Step  2"), and an item that extends an earlier one ("Peanut Butter and Honey") stays possible
up to the copy's last token.

Model-free: token ids in, token ids out, so the oracle tests need no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .lang import OUTLINE_PREFIX

_HEAD = OUTLINE_PREFIX.rstrip()  # "Overview:" - the space before the first item belongs to its first token


def outline_items(line: Sequence[int], text_of: Callable[[int], str]) -> list[list[int]] | None:
    """The items of an outline line being written, as token ids (the last one the item in progress; a ';' token ends
    an item and belongs to none, unless it carries text of the item before its ';'), or None when `line` (the
    tokens since the last newline) is not an outline line."""
    head, text = 0, ""
    while head < len(line) and len(text) < len(_HEAD):
        text += text_of(line[head])
        head += 1
    if not text.startswith(_HEAD):
        return None
    items: list[list[int]] = [[]]
    if text[len(_HEAD):].strip():  # the prefix's last token carries the first item's start (": Billy")
        items[-1].append(line[head - 1])
    for token in line[head:]:
        piece = text_of(token)
        if ";" in piece:
            if piece[: piece.index(";")].strip():
                items[-1].append(token)
            items.append([])
        else:
            items[-1].append(token)
    return items


def outline_copy_bans(line: Sequence[int], text_of: Callable[[int], str]) -> set[int]:
    """The tokens that would complete an exact copy of an earlier item of the outline line `line` (empty when it is
    not an outline line, or has ended)."""
    items = outline_items(line, text_of)
    if not items or len(items) < 2:
        return set()
    *earlier, current = items
    if current and "." in text_of(current[-1]):  # the outline has ended ("Overview: A; B.")
        return set()
    n = len(current)
    return {item[n] for item in earlier if len(item) == n + 1 and item[:n] == current}
