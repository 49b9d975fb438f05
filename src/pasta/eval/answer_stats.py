"""What one answer's Pasta-Lang actually did: the per-answer statistics behind every speed figure.

A speedup is only worth reporting over answers a user would accept, so each answer is described by:
- `complete`: the main thread ended by EOS before the request's token cap (a capped, looping answer is not);
- `promises` (forked chunks), `refused_promises` (refused by a runtime guard: gone from the answer, but written by
  the model), `distinct_topics`, `repeated_topics` (promises, refused ones included, whose topic repeats an
  earlier one, see `lang.topic_key`);
- `reaches_sync`: for answers with promises, every chunk finished and the main thread joined them (at a
  `<sync/>`, or at EOS);
- `duplicate_chunks`: chunks whose body is near-equal to an earlier chunk's (`near_duplicate`);
- `repetition`: the fraction of repeated word 4-grams in the plain text (`repetition_rate`);
- `guards`: the runtime guards that fired (`DecodeLimits`), `well_formed`: no tag was ignored, dropped or forced,
  and no tag-like text reached the user's answer (`leaked_tags` counts it: `<sync>`, `</ promise >`; the
  `</sync>` with which the first default model closed post-sync paragraphs is now a stray closing tag that the
  interpreter drops with a warning, see docs/pasta-lang.md);
- `empty_outline_items`: items of the main thread's outline lines with nothing in them (`Overview: Add;; Place.`),
  which the user reads and no guard sees (a model taught not to copy an item escaped to them: row r25), and
  `repeated_outline_items`: items that repeat an earlier item of their line and are left in the answer (the outline
  guard acts at a ';', so a repeat that ends the line with '.' passes: `Overview: Rake; Hoe; Rake.`);
- `plain_tokens` and `theoretical_speedup` = (plain tokens + 1) / forward steps: the steps a plain, sequential
  decoder needs for the same text (one per token, plus EOS) over the steps we took. Tags are not counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from difflib import SequenceMatcher

from ..lang import Sync, outline_lines, parse, to_structure, topic_key

__all__ = ["AnswerStats", "aggregate", "answer_stats", "duplicate_chunks", "empty_outline_items", "leaked_tags", "near_duplicate",
           "repeated_outline_items", "repetition_rate", "word_ngrams"]

_WORD_RE = re.compile(r"\w+(?:['\u2019]\w+)*")
# Warnings that mean a tag the model wrote had no effect or was removed: the Pasta-Lang was not well formed.
_MALFORMED = ("ignored", "dropped", "unusable tokens", "max_thread_tokens")
# Tag-like text left in a plain answer: the language reads it as text, a user sees markup.
_LEAKED_TAG_RE = re.compile(r"</?\s*(?:async|sync|promise)\b[^<>]{0,200}>", re.IGNORECASE)


def leaked_tags(text: str) -> int:
    """How many Pasta-Lang-like tags are left in a plain (tag-stripped) answer."""
    return len(_LEAKED_TAG_RE.findall(text))


def empty_outline_items(main_text: str) -> int:
    """Empty items in the outline lines of a main thread's text: `Overview: Add;; Place.` has one."""
    return sum(not item.strip() for items in outline_lines(main_text) for item in items)


def repeated_outline_items(main_text: str) -> int:
    """Items of the outline lines of a main thread's text that repeat an earlier item of the same line (`topic_key`):
    `Overview: Rake; Hoe; Rake.` has one. The outline guard drops a repeat it sees from the answer (a ';' after it),
    so what is left here is what it did not see - a repeat that ends the line with '.'."""
    repeats = 0
    for items in outline_lines(main_text):
        keys = [topic_key(item) for item in items if item.strip()]
        repeats += len(keys) - len(set(keys))
    return repeats


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD_RE.findall(text)]


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of `text`, casefolded, in order."""
    words = _words(text)
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repetition_rate(text: str, n: int = 4) -> float:
    """Fraction of the word n-grams of `text` that already occurred earlier in it (0 = no repeats; a loop -> 1)."""
    grams = word_ngrams(text, n)
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Two chunk bodies say nearly the same thing: word-level similarity ratio >= threshold (numbering ignored)."""
    wa, wb = _words(a), _words(b)
    wa = [w for w in wa if not w.isdigit()]
    wb = [w for w in wb if not w.isdigit()]
    if not wa or not wb:
        return wa == wb
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio() >= threshold


def duplicate_chunks(bodies: list[str]) -> int:
    """Chunks whose body is near-equal to an earlier chunk's (`near_duplicate`)."""
    return sum(any(near_duplicate(b, earlier) for earlier in bodies[:i]) for i, b in enumerate(bodies))


@dataclass
class AnswerStats:
    complete: bool
    finish_reason: str
    promises: int  # forked chunks
    refused_promises: int  # promises a runtime guard refused (not in the answer)
    distinct_topics: int
    repeated_topics: int
    reaches_sync: bool | None  # None: no promise
    duplicate_chunks: int
    repetition: float
    guards: list[str] = field(default_factory=list)
    well_formed: bool = True
    leaked_tags: int = 0
    plain_tokens: int = 0
    steps: int = 0
    theoretical_speedup: float = 1.0
    empty_outline_items: int = 0
    repeated_outline_items: int = 0  # outline items that repeat an earlier one of their line, left in the answer
    outline_blocked: int = 0  # outline bans that took the model's first choice (DecodeLimits.outline_no_repeat)

    def to_dict(self) -> dict:
        return asdict(self)


def answer_stats(result, tokenizer) -> AnswerStats:
    """Statistics of a `GenerationResult` (async or sequential decoding)."""
    stats = result.stats
    # The main thread's promises: a tag the model wrote inside a chunk was ignored (it stays in `annotated` as
    # text) and forks nothing, so it is not a promise.
    structure = to_structure(result.annotated)
    main_text = structure.main_thread_text()
    chunks = structure.chunks
    promises = [c for c in chunks if c.promise_raw]
    keys = [topic_key(c.topic) for c in promises]
    duplicates = duplicate_chunks([c.body for c in chunks])
    if promises:
        # Every chunk finished (none cut by a budget), and the main thread joined them: at a <sync/>, or at EOS.
        closed = all(t.close_reason in ("closed", "eos", "guard") for t in stats.timeline[1:])
        synced = any(isinstance(e, Sync) for e in parse(main_text))
        reaches_sync = closed and (synced or stats.finish_reason == "eos")
    else:
        reaches_sync = None
    plain_tokens = len(tokenizer.encode(result.text, add_special_tokens=False)) if result.text else 0
    guards = list(getattr(stats, "guards", []))
    # A refused promise is gone from the answer, but it is what the model wrote: it counts.
    refused = len(guards) if guards else 0
    refused_repeats = sum(g.startswith("repeated_topic") for g in guards)
    leaked = leaked_tags(result.text or "")
    well_formed = not guards and not leaked and not any(any(k in w for k in _MALFORMED) for w in stats.warnings)
    return AnswerStats(
        complete=stats.finish_reason == "eos",
        finish_reason=stats.finish_reason,
        promises=len(promises),
        refused_promises=refused,
        distinct_topics=len(set(keys)),
        repeated_topics=len(keys) - len(set(keys)) + refused_repeats,
        reaches_sync=reaches_sync,
        duplicate_chunks=duplicates,
        repetition=round(repetition_rate(result.text), 4),
        guards=guards,
        well_formed=well_formed,
        leaked_tags=leaked,
        plain_tokens=plain_tokens,
        steps=stats.steps,
        theoretical_speedup=(plain_tokens + 1) / max(1, stats.steps),
        empty_outline_items=empty_outline_items(main_text),
        repeated_outline_items=repeated_outline_items(main_text),
        outline_blocked=len(getattr(stats, "outline_blocked", [])),
    )



def _wilson(successes: int, n: int) -> list[float] | None:
    from .stats import wilson_interval

    return None if n == 0 else [round(x, 4) for x in wilson_interval(successes, n)]


def _share(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _geomean(values: list[float]) -> float | None:
    from .stats import geomean

    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return geomean(values) if values else None


def _charged(row: dict) -> float:
    stats = row["pasta"]
    return (stats["plain_tokens"] + 1) / max(1, stats["steps"] + row.get("drafted_plain", 0))


def _outline_count(row: dict, field: str, count) -> int | None:
    """A row's empty or repeated outline items: recorded, or counted from its annotated answer (rows from before the
    field), or None when it cannot tell."""
    if field in row["pasta"]:
        return row["pasta"][field]
    if isinstance(row.get("annotated"), str):
        return count(to_structure(row["annotated"]).main_thread_text())
    return None


def _blocked(row: dict) -> int:
    """A row's outline bans: recorded in its stats, or listed beside them (bench rows of 2026-12-06), else none."""
    if "outline_blocked" in row["pasta"]:
        return row["pasta"]["outline_blocked"]
    return len(row.get("outline_blocked") or [])


def aggregate(rows: list[dict]) -> dict:
    """Aggregates over per-prompt rows: {"id", "pasta": AnswerStats dict, "sequential_complete": bool | None,
    "wall_speedup": float | None, optional "original": {"complete", "repetition", "plain_tokens", "wall_s"},
    "wall_async_s", "nll_pasta", "nll_original"}.

    Speedups are geometric means over complete answers only (complete in both modes when the sequential decoding
    was run); truncated answers are counted apart and never enter a speedup."""
    n = len(rows)
    if not n:
        return {"prompts": 0}

    def complete(row: dict) -> bool:
        return bool(row["pasta"]["complete"]) and row.get("sequential_complete") is not False

    promised = [r for r in rows if r["pasta"]["promises"] > 0]
    done = [r for r in rows if complete(r)]
    done_promised = [r for r in done if r["pasta"]["promises"] > 0]
    # Every promise the model wrote, refused ones included (older rows have no refused_promises: 0).
    promises = sum(r["pasta"]["promises"] + r["pasta"].get("refused_promises", 0) for r in promised)
    guarded = sum(bool(r["pasta"]["guards"]) for r in promised)
    blocked = [_blocked(r) for r in promised]
    empties = [_outline_count(r, "empty_outline_items", empty_outline_items) for r in promised]  # None: cannot tell
    repeats = [_outline_count(r, "repeated_outline_items", repeated_outline_items) for r in promised]
    out: dict = {
        "prompts": n,
        "complete": _share(sum(bool(r["pasta"]["complete"]) for r in rows), n),
        "complete_sequential": _share(sum(bool(r.get("sequential_complete")) for r in rows),
                                      sum(r.get("sequential_complete") is not None for r in rows)),
        "complete_both": _share(len(done), n),
        "uses_promise": _share(len(promised), n),
        "well_formed": _share(sum(bool(r["pasta"]["well_formed"]) for r in rows), n),
        "guards_fired": _share(sum(bool(r["pasta"]["guards"]) for r in rows), n),
        "leaked_tags": _share(sum(bool(r["pasta"].get("leaked_tags")) for r in rows), n),
        "promise_answers": {
            "n": len(promised),
            "complete": _share(sum(bool(r["pasta"]["complete"]) for r in promised), len(promised)),
            "reaches_sync": _share(sum(bool(r["pasta"]["reaches_sync"]) for r in promised), len(promised)),
            "repeated_topics_share": _share(sum(r["pasta"]["repeated_topics"] for r in promised), promises),
            "duplicate_chunks_share": _share(sum(r["pasta"]["duplicate_chunks"] for r in promised), promises),
            "guards_fired": _share(guarded, len(promised)),
            # how far that share can move by chance on this many forking answers (Wilson, 95%)
            "guards_fired_ci95": _wilson(guarded, len(promised)),
            # where the outline ban (DecodeLimits.outline_no_repeat) took the model's first choice: the model would
            # have repeated an item; read beside the guards, and with them (a ban is a guard that acts earlier)
            "outline_blocked": _share(sum(map(bool, blocked)), len(promised)),
            "guards_or_outline_blocked": _share(sum(bool(r["pasta"]["guards"] or b) for r, b in zip(promised, blocked)),
                                                len(promised)),
            "mean_promises": _mean([r["pasta"]["promises"] for r in promised]),
            "mean_distinct_topics": _mean([r["pasta"]["distinct_topics"] for r in promised]),
            # forks of one chunk save nothing (an outline of one idea, most often with a guard after it)
            "single_chunk": _share(sum(r["pasta"]["promises"] == 1 for r in promised), len(promised)),
            # answers whose outline shows an empty item: a failure the guards do not see (None: rows cannot tell)
            "empty_outline_items": None if None in empties else _share(sum(map(bool, empties)), len(promised)),
            # ... and whose outline still repeats an item (one that ends the line with '.': the guard acts at ';')
            "repeated_outline_items": None if None in repeats else _share(sum(map(bool, repeats)), len(promised)),
        },
        "speedup": {
            "n_complete": len(done),
            "n_complete_promise": len(done_promised),
            "theoretical_geomean_complete": _geomean([r["pasta"]["theoretical_speedup"] for r in done]),
            "theoretical_geomean_complete_promise": _geomean([r["pasta"]["theoretical_speedup"] for r in done_promised]),
            "wall_geomean_complete": _geomean([r.get("wall_speedup") for r in done]),
            "wall_geomean_complete_promise": _geomean([r.get("wall_speedup") for r in done_promised]),
        },
        # The same with every plain-text token a promise draft confirmed (a list number) charged one forward pass, as
        # a decoder without drafts would spend (rows that record `drafted_plain`; bench/default_model.py).
        "speedup_drafted_plain_charged": {
            "theoretical_geomean_complete": _geomean([_charged(r) for r in done]),
            "theoretical_geomean_complete_promise": _geomean([_charged(r) for r in done_promised]),
        } if any("drafted_plain" in r for r in rows) else None,
        "truncated": {
            "n": sum(r["pasta"]["finish_reason"] == "length" for r in rows),
            "ids": [r["id"] for r in rows if r["pasta"]["finish_reason"] == "length"],
        },
        "repetition": {"pasta_mean": _mean([r["pasta"]["repetition"] for r in rows])},
        "mean_plain_tokens": {"pasta": _mean([r["pasta"]["plain_tokens"] for r in rows])},
    }
    originals = [r for r in rows if r.get("original")]
    if originals:
        out["complete_original"] = _share(sum(bool(r["original"]["complete"]) for r in originals), len(originals))
        out["repetition"]["original_mean"] = _mean([r["original"]["repetition"] for r in originals])
        out["mean_plain_tokens"]["original"] = _mean([r["original"]["plain_tokens"] for r in originals])
        both = [r for r in originals if complete(r) and r["original"]["complete"] and r.get("wall_async_s")]
        # The user's real alternative: the untrained model answering normally (its own answer, its own length).
        out["vs_original"] = {
            "n": len(both),
            "wall_ratio_geomean": _geomean([r["original"]["wall_s"] / r["wall_async_s"] for r in both]),
            "mean_wall_s_pasta": _mean([r["wall_async_s"] for r in both]),
            "mean_wall_s_original": _mean([r["original"]["wall_s"] for r in both]),
        }
    nll = [r for r in rows if r.get("nll_pasta") is not None and r.get("nll_original") is not None]
    if nll:
        out["nll_under_original"] = {"n": len(nll), "pasta_mean": _mean([r["nll_pasta"] for r in nll]),
                                     "original_mean": _mean([r["nll_original"] for r in nll])}
    return out
