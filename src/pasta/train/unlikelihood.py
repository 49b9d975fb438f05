"""Unlikelihood on repeated outline items (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training").

What is left of the default model's guard firings is one failure: an outline that names an item twice
(`Overview: Head; Tail; Tail;`), which the outline guard has to cut (docs/training.md). Cross-entropy on good
outlines never shows the model that copy; preference pairs moved whole answers and taught "end outlines early"
instead (rows r21-r23). Token-level unlikelihood pushes down exactly the copying token, -log(1 - p(token)), and
leaves the rest of the distribution to cross-entropy:

- in a training answer's outline, at each token of item j whose tokens so far copy the start of an earlier item i,
  item i's next token is a negative candidate (unless it is the target itself: "The Beatles; The Rolling Stones"
  may share "The", not "Beatles");
- at the start of each item, the separator tokens (`;`, `.`): an empty item (`Grill;; Store`, `Place;;;;.`) is
  never right, and without this it is where a model taught not to copy escapes to (row r25);
- in the model's own failures (the rejected side of an `outline_repeat` correction pair, cut where the guard
  stepped in), every token of the final, repeated item is a negative, with no cross-entropy on that answer.

Negatives are token ids per label slot of the main thread (`pasta.train.collator.layout_example`).
"""

from __future__ import annotations

import functools
import re

import torch

from ..detok import IncrementalDetokenizer
from ..lang import OUTLINE_PREFIX

_OUTLINE_START = re.compile(r"^" + re.escape(OUTLINE_PREFIX), re.MULTILINE)


def token_pieces(tokenizer, token_ids: list[int]) -> list[str]:
    """The text each token adds, in order (a token that ends inside a character adds "" and the next one the rest)."""
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(t) for t in token_ids]
    if pieces:
        pieces[-1] += detok.flush()
    return pieces


def outline_items(pieces: list[str]) -> list[list[list[int] | None]]:
    """Per outline line in the text the pieces make: per item, the indexes of the tokens that spell it (the item's
    leading space included), or None where a token straddles the item's edge (a separator merged into a word).
    An unfinished last line (no newline yet) counts: its last item is what has been written of it."""
    starts, offset = [], 0
    for piece in pieces:
        starts.append(offset)
        offset += len(piece)
    text = "".join(pieces)
    outlines = []
    for match in _OUTLINE_START.finditer(text):
        line_end = text.find("\n", match.end())
        line_end = len(text) if line_end < 0 else line_end
        body_start = match.end() - 1  # the space after "Overview:" belongs to the first item's first token
        cuts = [body_start] + [i + 1 for i in range(match.end(), line_end) if text[i] == ";"]
        ends = [c - 1 for c in cuts[1:]] + [_item_end(text, body_start, line_end)]
        if line_end == len(text) and cuts[-1] >= ends[-1] and len(cuts) > 1:
            cuts, ends = cuts[:-1], ends[:-1]  # "...; Tail;" cut after a separator: no last item begun yet
        outlines.append([_tokens_between(starts, pieces, start, end) for start, end in zip(cuts, ends)])
    return outlines


def _item_end(text: str, start: int, line_end: int) -> int:
    end = line_end
    while end > start and text[end - 1] in " \t":
        end -= 1
    if end > start and text[end - 1] == ".":
        end -= 1
    return end


def _tokens_between(starts: list[int], pieces: list[str], start: int, end: int) -> list[int] | None:
    # a token that adds "" (the first bytes of a character) belongs where its character does: at or after it
    inside = [t for t, s in enumerate(starts) if start <= s and (s + len(pieces[t]) <= end if pieces[t] else s < end)]
    spelled = [t for t in inside if pieces[t]]
    if not spelled or starts[inside[0]] != start or starts[spelled[-1]] + len(pieces[spelled[-1]]) != end:
        return None
    return inside


@functools.lru_cache(maxsize=8)
def separator_tokens(tokenizer) -> frozenset[int]:
    """Ids of the tokens made only of outline separators (`;`, ` ;`, `.`, `...`): what an empty item starts with.
    Found by decoding the vocabulary once per tokenizer (cached; it holds the tokenizer, so an id is never reused)."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else tokenizer.vocab_size
    found = set()
    for token_id in range(size):
        text = tokenizer.decode([token_id]).strip()
        if text and set(text) <= {";", "."}:
            found.add(token_id)
    return frozenset(found)


def copy_negatives(token_ids: list[int], pieces: list[str],
                   separators: frozenset[int] = frozenset()) -> dict[int, list[int]]:
    """Negative candidates for a good answer: {token index: ids}. At a token of item j whose item-so-far equals the
    start of an earlier item i of the same outline, item i's next token, unless it is the target; at each item's
    first token, the `separators` too (an empty item), unless one is the target."""
    negatives: dict[int, set[int]] = {}
    for items in outline_items(pieces):
        spelled = [None if item is None else [token_ids[t] for t in item] for item in items]
        for j, item in enumerate(items):
            if item is None:
                continue
            empty = separators - {token_ids[item[0]]}
            if empty:
                negatives.setdefault(item[0], set()).update(empty)
            for k, t in enumerate(item):
                for earlier in spelled[:j]:
                    if earlier is not None and len(earlier) > k and earlier[:k] == spelled[j][:k] \
                            and earlier[k] != token_ids[t]:
                        negatives.setdefault(t, set()).add(earlier[k])
    return {t: sorted(ids) for t, ids in negatives.items()}


def repeat_negatives(token_ids: list[int], pieces: list[str]) -> dict[int, list[int]]:
    """Negative candidates for a model's own failure: every token of the last outline's last item when that item
    repeats an earlier one of its line (each token is its own negative). Empty when it does not."""
    outlines = outline_items(pieces)
    if not outlines or not outlines[-1] or outlines[-1][-1] is None:
        return {}
    *earlier, last = outlines[-1]
    spelled = [token_ids[t] for t in last]
    if not any(item is not None and [token_ids[t] for t in item] == spelled for item in earlier):
        return {}
    return {t: [token_ids[t]] for t in last}


def unlikelihood_loss(logits: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(candidate)) over the negative candidates; `negatives` is [B, n, K] token ids, -1 = none.
    0 (with a gradient path) when the batch has none."""
    rows = (negatives >= 0).any(-1)
    if not rows.any():
        return logits.sum() * 0.0
    candidates = negatives[rows]  # [m, K]: only the few slots with candidates get a softmax
    valid = candidates >= 0
    logp = torch.log_softmax(logits[rows].float(), dim=-1).gather(-1, candidates.clamp(min=0))
    # log(1 - p) from log p, stably; clamped so that a candidate at p ~ 1 stays finite
    one_minus = torch.log((-torch.expm1(logp)).clamp(min=1e-5))
    return -(one_minus * valid).sum() / valid.sum()
