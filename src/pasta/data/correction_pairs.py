"""Preference pairs from guard corrections: what the model wrote against what the guard made of it.

When the outline guard steps in (`DecodeLimits.outline_topics`), the answer row keeps the corrected text, and the
guard's message says what the model did:

- ``outline_repeat: outline item 'Tail' repeats; outline ended`` - the model went on ``Overview: Head; Tail; Tail;``
  and the guard ended the line at ``Overview: Head; Tail.``;
- ``outline_done: <promise topic="3/2" tokens="1"/>; forced <sync/>`` - after the outline's last item had its
  promise, the model opened another one (``\\n3. <promise``) and the guard wrote ``<sync/>`` instead.

Most of what the guards still correct after such a round is an outline of one idea (``Overview: Pan-fried;
Pan-fried;``, cut to ``Overview: Pan-fried.``, then a 1/1 promise and a second one refused): a fork of one chunk,
which saves nothing even when no guard fires. For those (`one_item`), `chosen` is the same answer in plain text
(the outline line left out, the chunk's text in place: the model's own words) and `rejected` is the answer cut just
after ``Overview:``, the decision to fork at all.

Supervised training on the corrected answers alone did not teach the model to stop (r17 was trained on 149 of them
and still needs a guard on 0.37 of its forks). A pair gives the missing negative: `chosen` is the corrected answer,
`rejected` the same text cut at the guard with the model's own continuation in its place, up to the first token
where the two differ and a little beyond. The rejected side is `rejected_truncated`: it has no end of answer, so
training must not label an EOS after it (`pasta.train.collator.layout_example(end_with_eos=False)`). The shared
prefix has the same log-probability on both sides, so a DPO/IPO margin falls on the decision the guard corrected.

With `cut_chosen` the chosen side is cut too, at the end of the line where the two part (`chosen_truncated`): a
sequence-level margin is otherwise met by raising the probability of the whole corrected answer a little, and the
decision itself barely moves (one_item pairs, r22: p('Overview') 0.997 -> 0.991 where the plain answer goes on,
scripts/pair_margins.py). Cut, the two sides differ only at the decision and the few tokens after it.

Pairs are written in TRL's shape (`prompt`, `chosen`, `rejected`) for `pasta train pref --pairs`.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from dataclasses import dataclass

from ..lang import OUTLINE_PREFIX, Chunk, SyncMark, strip_tags, to_structure, topic_count, topic_key
from .onpolicy import CORRECTING_GUARDS, OnPolicyConfig, copies_a_chunk, keep_reason, repaired

_REPEAT_RE = re.compile(r"^outline_repeat: outline item (?P<item>'.*'|\".*\") repeats")
_DONE_RE = re.compile(r'^outline_done: <promise topic="(?P<j>\d+)/(?P<m>\d+)"')
_OUTLINE_LINE_RE = re.compile("^" + re.escape(OUTLINE_PREFIX) + ".*", re.MULTILINE)  # an outline line, to its end
_MARKER_RE = re.compile(r"(?:^|\n)(?P<marker>\d+[.)]|[-*])[ \t]*$")  # the list marker before the last promise


@dataclass(frozen=True)
class CorrectionPair:
    id: str
    prompt: str
    kind: str  # outline_repeat | outline_done | one_item
    chosen: str
    rejected: str

    chosen_truncated: bool = False

    def to_row(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "kind": self.kind, "chosen": self.chosen,
                "rejected": self.rejected, "chosen_truncated": self.chosen_truncated, "rejected_truncated": True}

    def cut(self) -> CorrectionPair:
        """This pair with the chosen side cut at the end of the line where the two sides part (the whole of a tag
        that line ends in kept; a line that runs to the end of the answer is kept whole, untruncated)."""
        parted = len(os.path.commonprefix([self.chosen, self.rejected]))
        end = self.chosen.find("\n", parted + 1)
        if end < 0:
            return self
        tag_open = self.chosen.rfind("<", parted, end)
        if tag_open >= 0 and self.chosen.find(">", tag_open, end) < 0:  # a tag spans the newline: keep it whole
            close = self.chosen.find(">", end)
            end = close + 1 if close >= 0 else len(self.chosen)
        if end >= len(self.chosen):
            return self
        return dataclasses.replace(self, chosen=self.chosen[:end], chosen_truncated=True)


def repeat_rejected(chosen: str, item: str) -> str | None:
    """The answer as the model wrote it up to the repeated outline item: the first outline line whose items hold a
    spelling of `item` (by `topic_key`), cut before its final '.', with '; item;' appended. None when no line fits."""
    key = topic_key(item)
    for m in _OUTLINE_LINE_RE.finditer(chosen):
        line = m.group().rstrip()
        if not line.endswith("."):
            continue
        items = line[len(OUTLINE_PREFIX):-1].split(";")
        if key and key in {topic_key(i) for i in items}:
            return chosen[: m.start() + len(line) - 1] + "; " + item + ";"
    return None


def done_rejected(chosen: str, index: int, total: int) -> str | None:
    """The answer as the model wrote it up to the promise past the outline: cut at the `<sync/>` the guard forced
    after the chunk of the outline's last promise ('total/total ...'), with the next list marker (or the opening of
    a tag) in its place. None when the text does not show where."""
    parts = to_structure(chosen).parts
    offset = 0
    last_promise_text = None  # main-thread text just before the last promise (its line: the list marker)
    before = ""
    seen_last = False
    between = ""
    for part in parts:
        raw = part.to_storage()
        if isinstance(part, Chunk):
            if topic_count(part.topic) == (total, total):
                seen_last = True
                last_promise_text = before
                between = ""
        elif isinstance(part, SyncMark):
            if seen_last:
                if between.strip():
                    return None  # text between the chunk and the sync: not a bare forced sync
                marker = _MARKER_RE.search(last_promise_text or "")
                if marker is None:
                    # no list marker: the model opened the tag right away ("\n<prom" vs "\n<sync/>")
                    return chosen[:offset] + "<prom" if chosen[:offset].endswith("\n") else None
                mark = marker.group("marker")
                nxt = f"{index}{mark[-1]}" if mark[0].isdigit() else mark
                return chosen[:offset] + nxt
            before = ""
        else:
            before += raw
            if seen_last:
                between += raw
        offset += len(raw)
    return None


def one_item_pair(row: dict, config: OnPolicyConfig) -> tuple[CorrectionPair | None, str | None]:
    """(pair, why none) for an answer that forked one chunk after an outline line: the plain answer against the
    answer cut after ``Overview:``."""
    annotated = repaired(row["annotated"])
    outline = _OUTLINE_LINE_RE.search(annotated)
    first_promise = annotated.find("<promise")
    if outline is None or first_promise < 0 or outline.end() > first_promise:  # the line must end before the fork
        return None, "one chunk without an outline"
    at, line_end = outline.span()
    if copies_a_chunk(annotated, config.copy_ngram):  # the plain text would say the item twice
        return None, "conclusion copies a chunk"
    chosen = strip_tags(annotated[:at] + annotated[line_end:].lstrip("\n"))
    stats = row.get("stats") or {}
    plain = {**row, "annotated": chosen, "stats": {**stats, "guards": []}}
    reason = keep_reason(plain, config)  # the plain answer must be worth training on (ended by EOS, repeats little)
    if reason is not None:
        return None, reason
    return CorrectionPair(f"{row['id']}-one", row["prompt"], "one_item", chosen,
                          annotated[: at + len(OUTLINE_PREFIX.rstrip())]), None


def correction_pairs(row: dict, config: OnPolicyConfig | None = None) -> tuple[list[CorrectionPair], str | None]:
    """(pairs, why none) for one on-policy answer row (`pasta.data.onpolicy.generate`'s shape). The corrected answer
    must be one worth training on (`keep_reason` with guard-corrected answers kept); one pair per kind at most (the
    first firing of each)."""
    config = config or OnPolicyConfig(keep_guarded=True)
    guards = (row.get("stats") or {}).get("guards") or []
    if len(to_structure(repaired(row.get("annotated") or "")).chunks) == 1:
        if any(not g.startswith(CORRECTING_GUARDS) for g in guards):
            return [], "other guard"
        pair, why = one_item_pair(row, config)
        return ([pair], None) if pair else ([], why)
    if not guards:
        return [], "no guard"
    reason = keep_reason(row, config)
    if reason is not None:
        return [], reason
    chosen = repaired(row["annotated"])
    pairs: list[CorrectionPair] = []
    kinds = set()
    for guard in guards:
        if (m := _REPEAT_RE.match(guard)) and "outline_repeat" not in kinds:
            kinds.add("outline_repeat")
            rejected = repeat_rejected(chosen, ast.literal_eval(m.group("item")))
            if rejected:
                pairs.append(CorrectionPair(f"{row['id']}-repeat", row["prompt"], "outline_repeat", chosen, rejected))
        elif (m := _DONE_RE.match(guard)) and "outline_done" not in kinds:
            kinds.add("outline_done")
            rejected = done_rejected(chosen, int(m.group("j")), int(m.group("m")))
            if rejected:
                pairs.append(CorrectionPair(f"{row['id']}-done", row["prompt"], "outline_done", chosen, rejected))
    return pairs, None if pairs else "guard not located in the text"
