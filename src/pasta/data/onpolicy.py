"""On-policy self-distillation of a Pasta model (expert iteration): the model's own answers to training prompts,
decoded as users get them (greedy, runtime guards on), kept when they are clean enough to train on.

Why: the structural annotator's forked targets are ShareGPT answers (long lists, outlines a larger model wrote). The
135M default model starts outlines it cannot finish and repeats an item (`Overview: Grilling; Smoking; Smoking;`),
which the outline guard cuts (`Overview: Grilling; Smoking.`); then it tries one promise past the plan, which the
outline-done guard refuses with a forced `<sync/>`. The answer a user receives is then a clean Pasta-Lang answer in
the model's own words, stopped where it should have stopped. Fine-tuning on such answers (filtered: complete, no
malformed tag, little repetition, distinct chunks, a conclusion that does not copy a chunk) teaches the model to
stop there itself - the guard's correction becomes a training target (cf. RAFT / STaR-style expert iteration).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .distill import DistillStats, pending_prompts
from ..eval.answer_stats import answer_stats, near_duplicate, word_ngrams
from ..jsonl import append_jsonl, done_keys, jsonl_lines
from ..lang import Chunk, SyncMark, is_valid, outline_lines, to_structure, topic_key
from ..sampling import SamplingParams

log = logging.getLogger(__name__)

# Guards whose correction leaves a clean answer (the outline ends early; a refused promise past the plan is gone and
# the main thread syncs). Answers where any other guard fired are not trained on.
CORRECTING_GUARDS = ("outline_repeat", "outline_done")
NUMBERED_ITEM = re.compile(r"\n\s*\d+[.)] ")  # a numbered list item starting a line
# An answer that declines or stalls instead of answering ("I'm sorry, but as a chatbot I don't have the capability",
# "I'm ready to help. What's your question?"). Such answers finish early and repeat little, so the other filters keep
# them: 12 of the 47 plain answers round 2 kept on r17 were one, and the model trained on them refused more.
EVASIVE = re.compile(r"I'm sorry|I apologi[sz]e|\bas an? (?:AI|chatbot|language model)\b|I'm (?:ready|here) to (?:help|assist)"
                     r"|I (?:don't|do not) have the (?:capability|ability)|I'm (?:unable|not able) to|I can(?:no|')t (?:help|assist|provide)",
                     re.IGNORECASE)


@dataclass
class OnPolicyConfig:
    max_new_tokens: int = 512
    max_batch: int = 16  # requests decoding together (continuous batching)
    max_prompt_tokens: int = 256
    max_repetition: float = 0.25  # kept answers repeat at most this share of word 4-grams
    min_chunks: int = 2  # a kept forked answer has at least this many chunks (one chunk saves nothing)
    copy_ngram: int = 8  # the text after <sync/> may share no word n-gram this long with a chunk
    # Rejection sampling towards the targets (round 2): a guard-corrected answer is clean Pasta-Lang, but its outline
    # was cut short, so it teaches fewer, slower forks (round 1 on r16: geomean 1.25 vs 1.51 for answers no guard
    # touched); and a fork that saves little teaches forking where it does not pay.
    keep_guarded: bool = True  # False: an answer any guard corrected is not kept
    min_fork_speedup: float = 1.0  # a kept forked answer has at least this theoretical speedup (plain tokens / steps)
    # True: a chunk may not go on to a further numbered item ('...</async>' after '\n5. Python: ...'): the next item is
    # its own chunk's (r16's round: 15 of 66 clean fast forks did, the README's worked example too).
    one_item_per_chunk: bool = False
    keep_plain: bool = True  # False: only forked answers are kept (an earlier round's plain answers are already learnt)
    drop_evasive: bool = False  # True: an answer that declines or stalls in its first sentences (EVASIVE) is not kept
    # Best-of-n (RAFT with n > 1): `samples` answers per prompt at `temperature`/`top_p` (seeded per prompt and
    # sample), and with best_per_prompt at most one kept answer per prompt: its fastest kept fork, else a kept plain one.
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    best_per_prompt: bool = False

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_batch", "max_prompt_tokens", "min_chunks", "copy_ngram", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"max_repetition must be in [0, 1], got {self.max_repetition!r}")
        if not self.min_fork_speedup >= 1.0:
            raise ValueError(f"min_fork_speedup must be at least 1.0, got {self.min_fork_speedup!r}")
        if self.samples > 1 and not self.temperature > 0:
            raise ValueError(f"samples={self.samples} needs a temperature > 0 (greedy answers are all the same)")
        SamplingParams(self.temperature, self.top_p)  # validates both


def sample_id(prompt: str, sample: int, config: OnPolicyConfig) -> str:
    """A row's id: the prompt's (row_id) for a single answer per prompt, with the sample number for several."""
    return row_id(prompt) if config.samples == 1 else f"{row_id(prompt)}-s{sample}"


def _sampling(prompt: str, sample: int, config: OnPolicyConfig) -> SamplingParams:
    if config.temperature == 0:
        return SamplingParams()
    digest = hashlib.sha256(f"{config.seed}|{sample}|{prompt}".encode("utf-8")).digest()
    return SamplingParams(config.temperature, config.top_p, seed=int.from_bytes(digest[:4], "big") >> 1)


def evasive(text: str, head_chars: int = 300) -> bool:
    """Whether an answer declines or stalls within its first `head_chars` characters (see EVASIVE)."""
    return EVASIVE.search(text[:head_chars]) is not None


def row_id(prompt: str) -> str:
    return "onpolicy-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def copies_a_chunk(annotated: str, n: int = 8) -> bool:
    """The main thread's text after a `<sync/>` repeats a chunk (shares a word n-gram with a chunk's body): the
    default model sometimes restates the last chunk as its conclusion."""
    parts = to_structure(annotated).parts
    after_sync = ""
    seen_sync = False
    bodies = []
    for part in parts:
        if isinstance(part, SyncMark):
            seen_sync = True
        elif isinstance(part, Chunk):
            bodies.append(part.body)
        elif seen_sync:
            after_sync += part.text
    tail = set(word_ngrams(after_sync, n))
    return bool(tail) and any(tail.intersection(word_ngrams(body, n)) for body in bodies)


def outline_items(annotated: str) -> list[list[str]]:
    """The items of every outline line the main thread wrote (`Overview: Diet; Sleep.` -> ["Diet", "Sleep"])."""
    return [[item.strip() for item in items if item.strip()]
            for items in outline_lines(to_structure(annotated).main_thread_text())]


STRAY_SYNC_CLOSE = "</sync>"


def repaired(annotated: str) -> str:
    """The answer as the user got it: the interpreter drops a stray `</sync>` (no such tag; the default model closes
    its conclusion with one) from the answer but keeps it in the storage form. Training on the repaired text teaches
    the model to leave it out."""
    return annotated.replace(STRAY_SYNC_CLOSE, "")


def _is_stray_sync_warning(warning: str) -> bool:
    return f"'{STRAY_SYNC_CLOSE}' closes nothing" in warning


def keep_reason(row: dict, config: OnPolicyConfig = OnPolicyConfig()) -> str | None:
    """Why an answer row (as `generate` writes it) is not worth training on, or None when it is."""
    stats = row.get("stats") or {}
    annotated = row.get("annotated")
    if not isinstance(annotated, str) or not repaired(annotated).strip():
        return "empty"
    annotated = repaired(annotated)
    if stats.get("finish_reason") != "eos":
        return "truncated"
    if any(not _is_stray_sync_warning(w) for w in row.get("warnings", [])):
        return "malformed tag"
    if any(not g.startswith(CORRECTING_GUARDS) for g in stats.get("guards", [])):
        return "other guard"
    if stats.get("guards") and not config.keep_guarded:
        return "guard corrected"
    if not is_valid(annotated):
        return "invalid Pasta-Lang"
    if stats.get("repetition", 1.0) > config.max_repetition:
        return "repetitive"
    if config.drop_evasive and evasive(annotated):
        return "evasive"
    chunks = to_structure(annotated).chunks
    if chunks:
        if len(chunks) < config.min_chunks:
            return "one chunk"
        if stats.get("theoretical_speedup", 1.0) < config.min_fork_speedup:
            return "slow fork"
        if not stats.get("reaches_sync"):
            return "no sync"
        bodies = [c.body for c in chunks]
        if stats.get("duplicate_chunks") or any(near_duplicate(b, a) for i, b in enumerate(bodies)
                                                   for a in bodies[:i]):
            return "duplicate chunks"
        if config.one_item_per_chunk and any(NUMBERED_ITEM.search(body) for body in bodies):
            return "chunk writes a further item"
        if copies_a_chunk(annotated, config.copy_ngram):
            return "conclusion copies a chunk"
        outlines = outline_items(annotated)
        # The outline guard cuts an item repeated before a ';', not one repeated as the line's last item.
        if any(len({topic_key(i) for i in items}) < len(items) for items in outlines):
            return "outline repeats an item"
        if outlines and sum(len(items) for items in outlines) != len(chunks):
            return "outline and promises differ"
    elif not config.keep_plain:
        return "plain left out"
    return None


def generate(interp, examples: Iterable, out_path: str | Path, config: OnPolicyConfig = OnPolicyConfig(), *,
             progress: bool = True) -> DistillStats:
    """Answer every example's prompt with `interp`'s model (its adapter, decoding conventions and guards), greedy,
    `config.max_batch` requests at a time on one engine; append one row per answer to `out_path` (a rerun skips
    answered prompts). Rows: {id, prompt, source, annotated, text, warnings, stats (pasta.eval.AnswerStats)}."""
    from tqdm.auto import tqdm

    from ..decoding import DecodeLimits
    from ..engine import Engine, EngineConfig, Sequence

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys([out]) if out.is_file() else set()
    stats = DistillStats()
    todo = []
    for ex, ids in pending_prompts(examples, set(), row_id, interp.prompt_ids, config.max_prompt_tokens, stats):
        left = [k for k in range(config.samples) if sample_id(ex.prompt, k, config) not in done]
        stats.skipped_done += not left
        todo += [(ex, ids, k) for k in left]
    engine = Engine(interp.model, EngineConfig(max_batch=config.max_batch), runner=interp.runner)
    limits = DecodeLimits(max_new_tokens=config.max_new_tokens)
    bar = tqdm(total=len(todo), desc="on-policy", unit="answer", disable=not progress)
    pending = iter(todo)
    running: dict[int, tuple] = {}  # sequence id -> (example, sample number, sequence)

    def refill() -> None:
        while len(running) < config.max_batch:
            item = next(pending, None)
            if item is None:
                return
            ex, ids, k = item
            seq = engine.add(Sequence(interp.start(ids, limits=limits), sampling=_sampling(ex.prompt, k, config)))
            running[seq.id] = (ex, k, seq)

    refill()
    while running:
        engine.step()
        for key, (ex, k, seq) in list(running.items()):
            if not seq.finished:
                continue
            del running[key]
            bar.update(1)
            if seq.status != "done":
                log.warning("prompt %s: decoding %s (%s); not written", ex.id, seq.status, seq.error)
                continue
            result = seq.result
            row = {
                "id": sample_id(ex.prompt, k, config), "prompt": ex.prompt, "source": f"onpolicy:{ex.source}",
                "annotated": result.annotated, "text": result.text, "warnings": list(result.stats.warnings),
                "stats": answer_stats(result, interp.tokenizer).to_dict(),
            }
            if config.samples > 1:
                row["sample"] = k
            append_jsonl(out, row)
            stats.generated += 1
            stats.finished += result.stats.finish_reason == "eos"
        refill()
    bar.close()
    return stats


def kept_rows(path: str | Path, config: OnPolicyConfig = OnPolicyConfig()) -> tuple[list[dict], dict[str, int]]:
    """The answers of `path` worth training on, as {id, prompt, annotated, source} rows, and why the others were
    not (reason -> count)."""
    kept, reasons, ranks = [], {}, []  # ranks: (forks, plain-text speedup) of each kept answer
    for line_no, row in jsonl_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            log.warning("%s:%d: not an on-policy answer row; skipped", path, line_no)
            reasons["bad row"] = reasons.get("bad row", 0) + 1
            continue
        reason = keep_reason(row, config)
        if reason is None:
            kept.append({"id": row["id"], "prompt": row["prompt"], "annotated": repaired(row["annotated"]),
                         "source": row.get("source", "onpolicy")})
            forks = bool(to_structure(kept[-1]["annotated"]).chunks)
            ranks.append((forks, (row.get("stats") or {}).get("theoretical_speedup") or 1.0))
            reason = "kept (forked)" if forks else "kept (plain)"
        reasons[reason] = reasons.get(reason, 0) + 1
    if config.best_per_prompt:
        best: dict[str, int] = {}  # prompt -> index of its best kept answer (a fork beats a plain one, then speed)
        for i, row in enumerate(kept):
            j = best.get(row["prompt"])
            if j is None or ranks[i] > ranks[j]:
                best[row["prompt"]] = i
        chosen = set(best.values())
        for i in set(range(len(kept))) - chosen:
            reasons["kept (forked)" if ranks[i][0] else "kept (plain)"] -= 1
            reasons["not the prompt's best"] = reasons.get("not the prompt's best", 0) + 1
        kept = [row for i, row in enumerate(kept) if i in chosen]
    return kept, reasons


def guarded_fork_prompts(path: str | Path) -> list:
    """The prompts of `path` on which the model forked and a guard had to step in, as `Example`s (response empty).

    Rejection sampling alone drops these answers, so the model sees nothing about these prompts and keeps forking on
    them. A plain answer to the same prompt (`plain_fallback_rows`) is the target that says: do not fork here."""
    from .sources import Example

    examples, seen = [], set()
    for line_no, row in jsonl_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            log.warning("%s:%d: not an on-policy answer row; skipped", path, line_no)
            continue
        stats = row.get("stats") or {}
        if stats.get("promises", 0) > 0 and stats.get("guards") and row["prompt"] not in seen:
            seen.add(row["prompt"])
            examples.append(Example(id=row_id(row["prompt"]), prompt=row["prompt"], response="",
                                    source=row.get("source", "onpolicy")))
    return examples


def plain_fallback_rows(distilled_path: str | Path, max_repetition: float = 0.25,
                        drop_evasive: bool = False) -> list[dict]:
    """SFT rows {id, prompt, annotated, source} from plain answers (`pasta.data.distill` rows) to guarded-fork
    prompts: kept when they ended by EOS, repeat little, hold no Pasta-Lang tag and, with `drop_evasive`, do not
    decline or stall (16 of the 38 that row r19 trained on did); the text is the target as is."""
    from .distill import DistillConfig, kept_rows as distilled_kept
    from .finalize import has_pasta_tags

    rows = []
    for row in distilled_kept(distilled_path, DistillConfig(max_repetition=max_repetition)):
        text = row["response"].strip()
        if has_pasta_tags(text) or (drop_evasive and evasive(text)):
            continue
        rows.append({"id": "fallback-" + str(row["id"]).removeprefix("distill-"), "prompt": row["prompt"],
                     "annotated": text, "source": "plain-fallback:" + str(row.get("source"))})
    return rows
