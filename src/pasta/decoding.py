"""One request's asynchronous decoding, as a state machine independent of any model.

`Decoding` decides, step by step, which tokens of which threads enter the KV cache next (forking at promises,
joining at syncs, honouring limits) and consumes the tokens sampled for them. The engine (`pasta.engine`),
the naive oracle (`pasta.reference`) and the training collator (`pasta.train.collator`, teacher-forced, no model)
all drive this same machine, so they agree on the layout by construction.

Robustness rules for malformed model output (also in docs/pasta-lang.md):
- A tag that is not valid where it appears (`</async>` or `<async>` in the main thread; a promise, `<sync/>` or a
  second `<async>` inside a chunk) has no effect: it stays in `annotated`, is dropped from `text`, and a warning
  records it. No text around it is lost.
- `<sync/>` with nothing outstanding is a no-op.
- A promise with a missing `tokens` reserves the default; an absurd one (<= 0 or over the maximum) is clamped
  to [1, max_reserve], with a warning.
- A chunk that never closes is closed at `max_thread_tokens` (warning); EOS inside a chunk closes it.
- EOS in the main thread ends the answer after the outstanding chunks finish (implicit sync at the end).
- At `max_new_tokens` for the whole request every thread stops where it is; all text so far is kept.
- A tag cut in half (by a budget, or by EOS once its name is written: `lang.is_cut_tag`) is dropped, with a warning.
- Promises beyond `max_threads` running chunks wait for a free slot. Their positions and visibility are fixed
  when the promise is read, so a waiting chunk decodes exactly as if it had started at once.
"""

from __future__ import annotations

import copy
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from .detok import IncrementalDetokenizer
from .forcing import encode_piece
from .lang import (
    ASYNC_CLOSE,
    ASYNC_OPEN,
    SYNC,
    AsyncClose,
    AsyncOpen,
    MAX_TOKENS,
    Promise,
    Recognizer,
    StrayClose,
    Sync,
    Text,
    is_cut_tag,
    render,
    topic_count,
)
from .guards import PROMISE_MARK, PromiseGuards, outline_cut, outline_topic_rest, trailing_marker_start
from .layout import MAIN, Layout, LayoutConfig, StepInputs
from .outline_bans import outline_copy_bans
from .penalties import WordPenalty, check_penalty
from .sampling import RandomStreams, SamplingParams, sample
from .results import GenerationResult, build_stats

Mode = Literal["async", "sequential"]


@dataclass(frozen=True)
class DecodeLimits:
    """Budgets and runtime guards of one request.

    Guards are a safety net for a model that writes runaway Pasta-Lang (docs/pasta-lang.md, "Runtime guards"). A
    promise is *refused* when its topic repeats an earlier promise's topic in the request (`refuse_repeated_topics`;
    a leading count "2/3 " is not part of a topic), when it continues a counted list that already reached its total
    since the last `<sync/>` ("4/3 ..." or "1/3 ..." after "3/3 ...", `refuse_count_overrun`),
    when the request already has `max_promises` promises, or when `max_promises_per_sync` promises are outstanding
    since the last `<sync/>`. A refused promise forks no chunk and is dropped from the answer, and the main thread
    is made to write `<sync/>` next (so it sees every chunk and can conclude). A second refusal with no accepted
    promise in between ends the main thread (the answer finishes once its chunks are done). Every firing is
    recorded in `RunStats.guards`. A `<sync/>` with nothing outstanding right after another one (nothing but list
    numbering written in between: a loop of syncs) ends the main thread too, and a promise written inside a chunk
    ends that chunk (`close_chunk_on_promise`). Teacher forcing is never guarded.
    """

    max_new_tokens: int = 1024  # sampled tokens of the whole request, all threads together
    max_thread_tokens: int = 512  # sampled tokens of one async chunk
    max_threads: int = 8  # async chunks decoding at the same time
    max_promises: int = 16  # promises per request
    max_promises_per_sync: int = 8  # promises outstanding before the main thread must sync
    refuse_repeated_topics: bool = True
    refuse_count_overrun: bool = True  # another ".../N" promise after "N/N" (before a sync) is refused
    close_chunk_on_promise: bool = True  # a promise written inside a chunk ends that chunk (else: ignored)
    # Jump-forward (as in SGLang): once the main thread has begun a promise tag ("<prom", " tokens"), the syntax that
    # must follow ('ise topic="', '="') is fed in the same forward pass instead of being sampled a token per step.
    # It is what the model writes anyway; it saves ~4 forward passes per promise on the main thread's path.
    jump_forward: bool = True
    # Outline topics (models trained on structural annotator version 5): when the main thread has written an outline
    # line since its last sync ("Overview: Diet; Sleep; Walk.") and opens its j-th promise after it, the topic
    # 'j/M item_j' and ' tokens="' are fed with the jump-forward of '<promise topic="' (M = the outline's items), so
    # the model writes only the token count. Such a model copies the outline anyway (r15: 49 of 53 topics were the
    # j-th item); where it would not have, the answer is the outline's, not the model's. Needs jump_forward.
    # Items the outline repeats are fed once (M counts distinct items). With it comes the outline guard: when the
    # model ends an outline item with ';' and that item repeats an earlier one, or the line already names
    # `max_promises_per_sync` items, the ';' is replaced by '.' and a blank line (the outline ends there) and a
    # repeated item is dropped from the answer (it stays in the KV cache) - an outline that loops otherwise runs to
    # the token cap (r15: 2 of 40 dev answers, 64 and 119 items). Counted in `guards` as outline_repeat/outline_long.
    # A promise opened after every item has its own is closed at once with its count alone ('3/2" tokens="1"/>')
    # and refused with a forced <sync/> (guard outline_done): it would repeat an item or go past the plan.
    # None: as the model was trained (`pasta_decoding.json` beside its adapter, see `resolved`); off when unknown.
    outline_topics: bool | None = None
    # Terminated outlines (`pasta.lang.terminated_outlines`): the model ends every outline item with ';' and the line
    # with a newline ("Overview: Diet; Sleep;"), so the outline guard keeps the ';' of the last item it lets stand and
    # adds only the blank line, and its length cap cuts the item one past `max_promises_per_sync` when that item is
    # written (a ';' after the last allowed item is no wish for another). None: as the model records; off when unknown.
    outline_terminated: bool | None = None
    # No repeated outline items (`pasta.outline_bans`): while the main thread writes an outline item that copies an
    # earlier item of the line token for token, the token that would complete the copy is banned (the outline's own
    # no_repeat_ngram_size), so the model names another item where it would have repeated one and the outline guard
    # has nothing to cut. Each ban that took the model's first choice away is counted in `RunStats.outline_blocked`.
    # None: as the model records; off when unknown. Not applied under teacher forcing or inside a promise draft.
    outline_no_repeat: bool | None = None
    # Presence and frequency penalties (OpenAI's semantics, in [-2, 2]) on the words a thread has sampled itself
    # (`pasta.penalties`: per thread, tag syntax, numbers and punctuation exempt). None: as the model records (0 when
    # unknown). Not applied under teacher forcing.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    # Promise drafts (speculative decoding with a draft from the answer's own structure): when the main thread starts
    # a new line inside a counted list that is not finished ("1/3 ..." was its last promise), the next promise line
    # is drafted from the previous one - its list number plus one, the same tag tokens, the next outline topic - and
    # the model checks the whole draft in one forward pass. Every drafted token the model would not have chosen
    # is thrown away with everything after it, so the answer is the one decoded without drafts (docs/pasta-lang.md,
    # "Promise drafts"); a list of promises costs the main thread about one pass per promise instead of ~9.
    draft_promises: bool = True
    # The token count drafted for a list's first promise (its later ones copy the previous line's): the count the
    # model habitually writes. None: as the model records (`draft_tokens` in pasta_decoding.json), else 0 = the
    # model writes the first count itself.
    draft_tokens: int | None = None

    @classmethod
    def from_options(cls, source, **budgets) -> DecodeLimits:
        """Limits with the given budgets and the decoding options (`DECODING_OPTIONS`) that `source` carries - an
        argparse namespace, an eval or serve config; an option it lacks keeps its default. The one place the CLI, the
        evaluation and the server turn their settings into limits, so a new option is added once."""
        return cls(**budgets, **{name: getattr(source, name) for name in DECODING_OPTIONS if hasattr(source, name)})

    def resolved(self, model_defaults: dict) -> DecodeLimits:
        """These limits with the fields left None taken from a model's recorded decoding conventions."""
        unknown = {"outline_topics": False, "outline_terminated": False, "outline_no_repeat": False,  # recorded by none
                   "presence_penalty": 0.0,
                   "frequency_penalty": 0.0, "draft_tokens": 0}
        return replace(self, **{name: type(fallback)(model_defaults.get(name, fallback))
                                for name, fallback in unknown.items() if getattr(self, name) is None})

    def __post_init__(self) -> None:
        check_penalty("presence_penalty", self.presence_penalty)
        check_penalty("frequency_penalty", self.frequency_penalty)
        if self.draft_tokens is not None and (not isinstance(self.draft_tokens, int) or isinstance(self.draft_tokens, bool)
                                              or not 0 <= self.draft_tokens <= MAX_TOKENS):
            raise ValueError(f"draft_tokens must be an integer in [0, {MAX_TOKENS}], got {self.draft_tokens!r}")
        for name in ("max_new_tokens", "max_thread_tokens", "max_threads", "max_promises", "max_promises_per_sync"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


DECODING_OPTIONS = ("outline_topics", "outline_terminated", "outline_no_repeat", "presence_penalty", "frequency_penalty",
                    "draft_promises", "draft_tokens")


@dataclass
class ThreadTrace:
    """Per-thread record: what it wrote and when (steps are forward passes, counted from 1 = prefill)."""

    id: int
    kind: Literal["main", "async"]
    topic: str | None = None
    predicted_tokens: int | None = None
    reserved: int = 0
    start_position: int = 0
    start_step: int | None = None
    end_step: int | None = None
    sampled: int = 0
    close_reason: str | None = None  # closed | eos | guard | budget | request_budget


@dataclass
class _Thread:
    trace: ThreadTrace
    layout_id: int
    detok: IncrementalDetokenizer
    recognizer: Recognizer = field(default_factory=Recognizer)
    events: list = field(default_factory=list)  # lang events, in order
    tokens: list[int] = field(default_factory=list)  # every token of the thread (forced + sampled)
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next opportunity
    state: Literal["queued", "running", "waiting", "done"] = "running"
    forks: list[Promise] = field(default_factory=list)  # promises completed by the pending token
    forced: list[int] | None = None  # teacher forcing: the tokens this thread must produce
    inject: list[int] = field(default_factory=list)  # a guard's tokens, taken instead of the next samples
    words: Counter = field(default_factory=Counter)  # sampled word tokens (WordPenalty)
    fed: list[bool] = field(default_factory=list)  # per token in `tokens`: fed by the interpreter, not sampled
    line_start: int = 0  # index in `tokens` where the current line began (after the last newline)
    draft: list[tuple[int, bool]] = field(default_factory=list)  # (token, fed) drafted after `pending` (main only)
    opened: bool = False
    closed: bool = False

    @property
    def kind(self) -> str:
        return self.trace.kind


class Decoding:
    def __init__(
        self,
        prompt_ids: list[int],
        tokenizer,
        *,
        eos_ids: set[int] | list[int],
        layout_config: LayoutConfig | None = None,
        limits: DecodeLimits | None = None,
        mode: Mode = "async",
        forced_main: list[int] | None = None,
        forced_chunks: list[list[int] | None] | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("empty prompt: a request needs at least one prompt token")
        if mode not in ("async", "sequential"):
            raise ValueError(f"mode must be 'async' or 'sequential', got {mode!r}")
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.eos_ids = set(eos_ids)
        self.limits = limits or DecodeLimits()
        self.mode = mode
        self.layout = Layout(len(prompt_ids), layout_config)
        self.async_open_ids = encode_piece(tokenizer, ASYNC_OPEN)
        self.threads: list[_Thread] = [
            _Thread(trace=ThreadTrace(id=0, kind="main", start_step=1), layout_id=MAIN,
                    detok=IncrementalDetokenizer(tokenizer), forced=forced_main)
        ]
        self._teacher = forced_main is not None
        self._forced_chunks = list(forced_chunks or [])
        self.steps = 0
        self.sampled = 0
        self.warnings: list[str] = []
        self.done = False
        self._prefilled = False
        self._prefill_at = 0  # prompt tokens already fed (chunked prefill)
        self._samplers: list[int] = []  # thread index per logit row of the last step
        self._main_markers: list[tuple[str, int, int]] = []  # (fork|sync, main pass ordinal, chunk index)
        self._main_passes = 0  # forward passes in which the main thread took tokens (its critical path)
        self._main_pass_step = -1
        # Promise drafts (DecodeLimits.draft_promises): the last accepted promise's line, as (tokens, fed flags, length
        # of the outline topic fed), its count since the last sync, and the draft under check.
        self._promise_line: tuple[list[int], list[bool], int] | None = None
        self._last_count: tuple[int, int] | None = None
        self._last_outline_fed = 0
        self._draft_start: int | None = None  # logit row of the main thread's pending token when a draft rides on it
        self._token_text: dict[int, str] = {}  # token -> its text alone (newlines, ';' and outline items read it)
        self.drafted = 0  # drafted tokens the model confirmed (sampled ones; the fed syntax among them not counted)
        self.draft_rejected = 0  # drafts cut short by a token the model chose otherwise
        self.last_draft_accepted = 0  # drafted tokens (fed syntax included) the last draft kept
        self.drafted_plain = 0  # of `drafted`, the plain text (a list number such as "2. "), not tag syntax
        self._draft_plain = 0  # leading plain-text tokens of the draft under check
        self.guards: list[str] = []  # runtime guards that fired, in order
        self.sync_ids = encode_piece(tokenizer, SYNC)
        self._jump_rules = _jump_rules(tokenizer) if self.limits.jump_forward and not self._teacher else []
        self.outline_topics_fed = 0  # promises whose topic was fed from an outline line (DecodeLimits.outline_topics)
        self._book = PromiseGuards(self.limits)  # the guards' bookkeeping (pasta.guards, shared with the remote backend)
        self._outline_guard = bool(self.limits.outline_topics) and not self._teacher
        presence, frequency = self.limits.presence_penalty or 0.0, self.limits.frequency_penalty or 0.0
        self._penalty = WordPenalty(tokenizer, presence, frequency) if (presence or frequency) and not self._teacher \
            else None
        self._no_repeat = bool(self.limits.outline_no_repeat) and not self._teacher
        self.outline_blocked: list[str] = []  # outline copies banned where the model would have written them
        self._blocked_step = -1

    @property
    def forced(self) -> bool:
        """Teacher forcing: some thread's tokens are given."""
        return any(t.forced is not None for t in self.threads)

    # -- stepping -------------------------------------------------------------------------------------------
    def next_inputs(self, max_prefill: int | None = None) -> StepInputs:
        """Choose and lay out the tokens of the next forward pass. `max_prefill`: feed a long prompt in pieces of at
        most this many tokens (chunked prefill, so one long prompt does not stall a server's other requests); the
        pieces before the last sample nothing (`advance([])`) and are not decoding steps."""
        if self.done:
            raise RuntimeError("decoding is finished")
        if not self._prefilled:
            n, start = len(self.prompt_ids), self._prefill_at
            end = n if max_prefill is None else min(n, start + max(1, max_prefill))
            self._prefill_at = end
            span = list(range(start, end))
            if end < n:
                self._samplers = []
                return StepInputs(self.prompt_ids[start:end], span, list(span), [])
            self._prefilled = True
            self.steps += 1
            self._samplers = [0]
            return StepInputs(self.prompt_ids[start:end], span, list(span), [end - start - 1])
        self.steps += 1
        inputs = StepInputs()
        self._samplers = []
        self._draft_start = None
        main = self.threads[0]
        if main.state == "waiting" and self._all_outstanding_done():
            # Join: the finished chunks' last tokens enter the cache first, so the main thread sees them whole.
            for thread in self._outstanding_threads():
                self._feed(thread, inputs, sample=False)
            self.layout.join()
            main.state = "running"
        main_runs = main.state == "running" and bool(main.pending) and self._main_may_run()
        if main_runs and not main.draft:
            self._feed(main, inputs, sample=True)
        for thread in self.threads[1:]:
            if thread.state == "queued" and self._may_start():
                thread.state = "running"
            if thread.state == "running" and thread.pending and self._async_may_run(inputs):
                self._feed(thread, inputs, sample=True)
        if main_runs and main.draft:
            # Last in the pass, so the slots of a draft the model rejects are the layout's last and can be taken back.
            self._feed(main, inputs, sample=True)
        if not inputs.token_ids:
            raise RuntimeError("decoding is stuck: no thread can run (this is a bug; please report it)")
        return inputs

    def _feed(self, thread: _Thread, inputs: StepInputs, *, sample: bool) -> None:
        draft = [token for token, _ in thread.draft]
        for slot in self.layout.append(thread.layout_id, len(thread.pending) + len(draft)):
            inputs.slots.append(slot)
            inputs.positions.append(self.layout.positions[slot])
        inputs.token_ids.extend(thread.pending + draft)
        thread.pending = []
        if thread.trace.start_step is None:
            thread.trace.start_step = self.steps
        if sample:
            first = len(inputs.token_ids) - 1 - len(draft)
            if draft:  # every drafted token's row too: row i predicts draft[i] (and the last one the next token)
                self._draft_start = len(self._samplers)
            inputs.logit_rows.extend(range(first, len(inputs.token_ids)))
            self._samplers.extend([self.threads.index(thread)] * (1 + len(draft)))
        self._fork_written(thread)

    def _fork_written(self, thread: _Thread) -> None:
        """Fork the chunks of the promises whose tags are now in the cache (their chunks' view is fixed here)."""
        for promise in thread.forks:
            self._fork(promise)
        thread.forks = []

    def _fork(self, promise: Promise) -> None:
        tokens = promise.tokens
        if tokens is None and "tokens" in promise.attrs:  # present but unreadable or out of range
            self.warnings.append(f"promise {promise.raw!r}: unusable tokens attribute; default reservation")
        layout_id = self.layout.fork(tokens)
        index = len(self.threads)
        if index - 1 < len(self._forced_chunks):
            forced = self._forced_chunks[index - 1]  # None: this chunk is sampled (only the main thread is forced)
        elif self._teacher:  # the teacher has no body for this promise: an empty chunk
            forced = list(self.async_open_ids) + encode_piece(self.tokenizer, ASYNC_CLOSE)
        else:
            forced = None
        thread = _Thread(
            trace=ThreadTrace(
                id=index, kind="async", topic=promise.topic, predicted_tokens=promise.tokens,
                reserved=self.layout.config.reservation(tokens),
                start_position=self.layout.threads[layout_id].next_position,
            ),
            layout_id=layout_id, detok=IncrementalDetokenizer(self.tokenizer), state="queued", forced=forced,
        )
        # The chunk's opening tag is forced (from the teacher when forcing, so both agree token for token).
        opening = forced[: len(self.async_open_ids)] if forced is not None else list(self.async_open_ids)
        thread.pending = list(opening)
        for token in opening:
            self._consume(thread, token, count=False)
        self.threads.append(thread)

    # -- scheduling rules --------------------------------------------------------------------------------------
    def _outstanding_threads(self) -> list[_Thread]:
        ids = set(self.layout.outstanding)
        return [t for t in self.threads[1:] if t.layout_id in ids]

    def _all_outstanding_done(self) -> bool:
        return all(t.state == "done" for t in self._outstanding_threads())

    def _main_may_run(self) -> bool:
        if self.mode == "async":
            return True
        return all(t.state == "done" for t in self.threads[1:])  # sequential: main waits for every chunk

    def _may_start(self) -> bool:
        running = sum(1 for t in self.threads[1:] if t.state == "running")
        limit = 1 if self.mode == "sequential" else self.limits.max_threads
        return running < limit

    def _async_may_run(self, inputs: StepInputs) -> bool:
        if self.mode == "async":
            return True
        return not inputs.logit_rows  # sequential: one sampling thread per forward pass

    # -- consuming samples ---------------------------------------------------------------------------------------
    def advance(self, sampled: list[int | None]) -> list[int | None]:
        """Give the tokens sampled for the rows of the last `next_inputs()` (in order; `choose` makes them). Returns
        the tokens taken (the teacher's under teacher forcing; None for a draft's rows after the one it failed at)."""
        taken: list[int | None] = []
        if len(sampled) != len(self._samplers):
            raise ValueError(f"expected {len(self._samplers)} sampled tokens, got {len(sampled)}")
        row = 0
        while row < len(sampled):
            index, token = self._samplers[row], sampled[row]
            thread = self.threads[index]
            if row == self._draft_start:
                count = 1 + len(thread.draft)
                token = self._accept_draft(thread, sampled[row : row + count])
                taken.extend(sampled[row : row + count - 1])
                row += count - 1  # the bonus row (the model's own next token) is handled below like any sample
                if token is None:  # the request stopped inside the draft
                    taken.append(None)
                    row += 1
                    continue
            if thread.inject:  # a guard writes this token instead of the model
                token = thread.inject.pop(0)
            elif thread.forced is not None:  # teacher forcing: the model's choice is replaced by the teacher's
                token = thread.forced[len(thread.tokens)] if len(thread.tokens) < len(thread.forced) else None
                if token is None:
                    token = next(iter(self.eos_ids))
            elif self._outline_guard and index == 0 and thread.state == "running":
                token = self._outline_cut(thread, token)
            taken.append(token)
            row += 1
            if thread.state == "done":  # stopped by the request budget earlier in this step
                continue
            self._take(thread, token)
            if self.sampled >= self.limits.max_new_tokens:
                self._stop_all("request_budget")
        if all(t.state == "done" for t in self.threads):
            self.done = True
        return taken

    @property
    def sampler_threads(self) -> list[int]:
        """Thread index of each logit row of the last step."""
        return list(self._samplers)

    @property
    def draft_rows(self) -> tuple[int, list[tuple[int, bool]]] | None:
        """(first row, drafted (token, fed) pairs) when the last step's main thread carried a draft: row first + i
        predicts draft[i], and row first + len(draft) the token after it."""
        if self._draft_start is None:
            return None
        return self._draft_start, list(self.threads[0].draft)

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """The logit rows of the last step with each thread's presence/frequency penalties applied (DecodeLimits;
        `logits` itself when there are none). The sampler chooses from these."""
        if (self._penalty is None and not self._no_repeat) or not self._samplers:
            return logits
        rows = [row if self._penalty is None else self._penalty.apply(row, self.threads[index].words)
                for row, index in zip(logits, self._samplers)]
        if self._no_repeat and 0 in self._samplers and self._draft_start is None:  # drafts are promise lines
            r = self._samplers.index(0)
            rows[r] = self._ban_outline_copy(self.threads[0], rows[r])
        return torch.stack(rows)

    def _text_of(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def _ban_outline_copy(self, thread: _Thread, row: torch.Tensor) -> torch.Tensor:
        """`row` with the tokens that would copy an earlier outline item banned (DecodeLimits.outline_no_repeat); a
        ban that takes away the model's first choice is recorded."""
        if thread.state != "running" or thread.inject or thread.recognizer.pending:
            return row
        banned = outline_copy_bans(thread.tokens[thread.line_start:], self._text_of)
        if not banned:
            return row
        first = int(row.argmax())
        if first in banned and self._blocked_step != self.steps:
            self._blocked_step = self.steps
            self.outline_blocked.append(f"{self._current_line(thread)!r} + {self._text_of(first)!r}")
        ids = torch.tensor(sorted(banned), dtype=torch.long)
        row = row.clone()
        row[ids] = float("-inf")
        return row

    def choose(self, logits: torch.Tensor, params: SamplingParams, streams: RandomStreams | None) -> list[int | None]:
        """The token of each logit row of the last step: penalties applied, each thread drawing from its own stream.
        A draft's rows are chosen one at a time and stop at the first choice that differs from the draft (later
        rows: None), so each stream makes exactly the draws it makes without drafts: the same answer either way."""
        draft = self.draft_rows
        if draft is None:
            return sample(self.penalize(logits), params, streams, self._samplers)
        first, tokens = draft
        rows = range(first, first + len(tokens) + 1)
        out: list[int | None] = [None] * len(self._samplers)
        others = [r for r in range(len(self._samplers)) if r not in rows]
        if others:
            chosen = sample(self.penalize(logits)[others], params, streams, [self._samplers[r] for r in others])
            for r, token in zip(others, chosen):
                out[r] = token
        words = Counter(self.threads[0].words)
        for i, r in enumerate(rows):
            if i < len(tokens) and tokens[i][1]:  # fed syntax: not the model's choice
                out[r] = tokens[i][0]
                continue
            row = logits[r] if self._penalty is None else self._penalty.apply(logits[r], words)
            out[r] = sample(row[None], params, streams, [0])[0]
            if i == len(tokens) or out[r] != tokens[i][0]:
                break
            if self._penalty is not None:
                self._penalty.count(words, out[r])
        return out

    def _take(self, thread: _Thread, token: int, *, in_cache: bool = False) -> list[int]:
        """Take one sampled token. `in_cache`: a drafted token the model confirmed, already in the KV cache (it is
        not fed again); returns the syntax jump-forward would feed after it (fed by the caller's draft)."""
        self.sampled += 1
        thread.trace.sampled += 1
        if thread.kind == "main" and self._main_pass_step != self.steps:  # the first main token of this pass
            self._main_pass_step = self.steps
            self._main_passes += 1
        if token in self.eos_ids:
            self._end_thread(thread, "eos")
            return []
        thread.tokens.append(token)
        thread.fed.append(False)
        if self._penalty is not None:
            self._penalty.count(thread.words, token)
        self._consume(thread, token, count=True)
        if thread.state == "done":
            return []
        if thread.kind == "async" and thread.trace.sampled >= self.limits.max_thread_tokens:
            thread.pending = [token]
            self.warnings.append(f"chunk {thread.trace.id} reached max_thread_tokens={self.limits.max_thread_tokens}; closed")
            self._end_thread(thread, "budget", keep_pending=True)
            return []
        if thread.state in ("running", "waiting"):
            jumped = self._jump_forward(thread) if thread.kind == "main" and self._jump_rules and not thread.inject \
                else []
            if in_cache:
                return jumped
            thread.pending = [token] + jumped
            if thread.kind == "main" and not jumped and self.limits.draft_promises and not self._teacher:
                thread.draft = self._promise_draft(thread)
        return []

    def _jump_forward(self, thread: _Thread) -> list[int]:
        """The tag syntax that must follow what the main thread just wrote, consumed here (only tokens that complete
        no tag, so no event fires: the forced tokens are read like sampled ones, but are not samples). The caller
        feeds them."""
        held = thread.recognizer.pending
        for rule in self._jump_rules:
            k = rule.begun(held, thread.tokens)
            if k:
                forced_ids = rule.ids[k:]
                if rule.opens_promise:
                    topic = self._outline_topic_ids(thread, rule) if self.limits.outline_topics else []
                    self._last_outline_fed = len(topic)
                    forced_ids = forced_ids + topic
                fed = []
                for forced in forced_ids:
                    self._consume(thread, forced, count=False)
                    fed.append(forced)
                    if thread.state == "done":  # a promise past the outline, refused twice in a row
                        break
                return fed
        return []

    # -- promise drafts (DecodeLimits.draft_promises) ---------------------------------------------------------------
    def _promise_draft(self, thread: _Thread) -> list[tuple[int, bool]]:
        """The next promise line, drafted when the main thread has just begun a line:
        - inside a counted list that is not finished ("1/3 ..." was its last promise), from the previous promise
          line: its list number plus one, its own tokens up to the topic, the next outline topic, the rest of its
          tag (the same token count);
        - right after an outline line (no promise since the last sync): "1. <promise topic=" and the first item
          (the model then writes the token count).
        The syntax jump-forward would feed is found by running the drafted tokens through copies of the thread's
        detokenizer and tag recognizer, so the draft feeds exactly what decoding without it would. [] when there is
        nothing to draft from."""
        if thread.inject or thread.forks or thread.recognizer.pending or not self._ends_line(thread.tokens[-1]):
            return []
        tail: list[int] = []
        if self._last_count is not None:
            j, total = self._last_count
            if j >= total or self._promise_line is None:
                return []
            tokens, fed, topic_fed = self._promise_line
            digits = 0
            while digits < len(tokens) and not fed[digits] and self.tokenizer.decode(tokens[: digits + 1]).isdigit():
                digits += 1
            if not digits or True not in fed:
                return []
            first_fed = fed.index(True)
            run_end = first_fed
            while run_end < len(fed) and fed[run_end]:
                run_end += 1
            number = int(self.tokenizer.decode(tokens[:digits])) + 1
            prefix = encode_piece(self.tokenizer, str(number)) + tokens[digits:first_fed]
            if topic_fed and True not in fed[run_end:]:
                tail = tokens[run_end:]  # the token count and the tag's end, as the model wrote them last time
        elif self._book.since_sync == 0 and self.limits.outline_topics and self._opening_rule is not None:
            rule = self._opening_rule
            prefix = [t for piece in ("1", ".", " ") for t in encode_piece(self.tokenizer, piece)] + rule.ids[: rule.commits]
            if self.limits.draft_tokens:
                tail = encode_piece(self.tokenizer, f'{self.limits.draft_tokens}"/>')
        else:
            return []
        fed_ids = self._draft_syntax(thread, prefix)
        if fed_ids is None:
            return []
        syntax, topic = fed_ids
        if self._last_count is None and not topic:
            return []  # no outline to take the first topic from: nothing worth drafting
        draft = [(t, False) for t in prefix] + [(t, True) for t in syntax + topic]
        written = len(self._opening_rule.ids) - len(syntax)  # tokens of '<promise topic="' the prefix ends with
        self._draft_plain = len(prefix) - written  # the list number before them
        return draft + [(t, False) for t in tail] if topic else draft

    @property
    def _opening_rule(self) -> _JumpRule | None:
        return next((r for r in self._jump_rules if r.opens_promise), None)

    def _draft_syntax(self, thread: _Thread, prefix: list[int]) -> tuple[list[int], list[int]] | None:
        """(syntax, outline topic) that jump-forward feeds once the main thread has written `prefix`, and only then
        (None when it would feed earlier, not at all, something other than a promise's opening, or a promise past
        the outline)."""
        recognizer, detok = copy.copy(thread.recognizer), copy.copy(thread.detok)
        detok.ids = list(detok.ids)
        tokens = list(thread.tokens)
        for n, token in enumerate(prefix, 1):
            tokens.append(token)
            if any(not isinstance(event, Text) for event in recognizer.feed(detok.push(token))):
                return None  # the prefix would complete a tag
            for rule in self._jump_rules:
                k = rule.begun(recognizer.pending, tokens)
                if not k:
                    continue
                if n < len(prefix) or not rule.opens_promise:
                    return None
                topic, past = self._outline_rest(thread, rule) if self.limits.outline_topics else ([], False)
                return None if past else (rule.ids[k:], topic)
        return None

    def _ends_line(self, token: int) -> bool:
        return self._text_of(token).endswith("\n")

    def _accept_draft(self, thread: _Thread, chosen: list[int | None]) -> int | None:
        """Take the drafted tokens the model confirmed (`chosen[i]` is its choice at the row that predicts draft[i])
        and give the slots of the rest back. Returns the model's own token after them (the bonus row), or None when
        the request stopped inside the draft."""
        draft, thread.draft = thread.draft, []
        accepted = 0
        while accepted < len(draft) and (draft[accepted][1] or chosen[accepted] == draft[accepted][0]):
            accepted += 1
        if accepted < len(draft):
            self.draft_rejected += 1
        self.last_draft_accepted = accepted
        self.drafted_plain += min(accepted, self._draft_plain)  # the plain tokens lead the draft
        self.layout.truncate(thread.layout_id, len(draft) - accepted)
        i = 0
        while i < accepted:
            token, fed = draft[i]
            if fed:
                raise RuntimeError(f"draft feeds {token} where jump-forward would not (this is a bug; please report it)")
            jumped = self._take(thread, token, in_cache=True)
            self.drafted += 1
            i += 1
            if jumped != [t for t, _ in draft[i : i + len(jumped)]]:
                raise RuntimeError("draft and jump-forward disagree (this is a bug; please report it)")
            i += len(jumped)
            self._fork_written(thread)  # a promise the draft completed is already in the cache: it forks now
            out_of_budget = self.sampled >= self.limits.max_new_tokens
            if out_of_budget or thread.state == "done":
                self.layout.truncate(thread.layout_id, accepted - i)  # the confirmed tokens not taken
                if out_of_budget:
                    self._stop_all("request_budget")
                return None
        return chosen[accepted]

    def _outline_topic_ids(self, thread: _Thread, opening: _JumpRule) -> list[int]:
        """Tokens of 'j/M item_j" tokens="' for the promise the main thread is opening, when an outline line since
        its last sync names a j-th item; [] otherwise (or when the tokenizer would split the tag differently)."""
        ids, past = self._outline_rest(thread, opening)
        if past:
            self._book.past_outline = True
        elif ids:
            self.outline_topics_fed += 1
        return ids

    def _outline_rest(self, thread: _Thread, opening: _JumpRule) -> tuple[list[int], bool]:
        """(the tokens `_outline_topic_ids` feeds, whether they close a promise past the outline), without effects."""
        last_sync = max((i for i, e in enumerate(thread.events) if isinstance(e, Sync)), default=-1)
        text = []
        for event in thread.events[last_sync + 1 :]:
            if isinstance(event, Text):
                text.append(event.text)
            elif isinstance(event, (Promise, _Refused)) and event.raw.startswith("<promise"):
                text.append(PROMISE_MARK)  # a promise written after the outline: one item used
        found = outline_topic_rest("".join(text), self._outline_guard)
        if found is None:
            return [], False
        rest, past = found
        ids = encode_piece(self.tokenizer, rest)
        if encode_piece(self.tokenizer, opening.texts[-1] + rest) != opening.ids + ids:
            return [], False
        return ids, past

    def _outline_cut(self, thread: _Thread, token: int) -> int:
        """The outline guard (DecodeLimits.outline_topics, `pasta.guards.outline_cut`): `token` as sampled, or the first
        token of what the guard writes instead (the rest injected) when it ends an outline item that repeats an earlier
        one or is one item too many."""
        text = self._text_of(token)
        before = text[: text.index(";")] if ";" in text else None  # the token's text before its ';'
        if before is None or thread.recognizer.pending:
            return token
        cut = outline_cut(self._current_line(thread), before, self.limits)
        if cut is None:
            return token
        self._drop_text_tail(thread, cut.drop)
        self.guards.append(cut.note)
        ids = encode_piece(self.tokenizer, cut.end)
        thread.inject = ids[1:]
        return ids[0]

    @staticmethod
    def _current_line(thread: _Thread) -> str:
        """The main thread's plain text since its last newline (or tag)."""
        tail = ""
        for event in reversed(thread.events):
            if not isinstance(event, Text):
                break
            tail = event.text + tail
            if "\n" in event.text:
                break
        return tail[tail.rfind("\n") + 1 :]

    @staticmethod
    def _drop_text_tail(thread: _Thread, n: int) -> None:
        """Drop the last `n` characters of the thread's text from the answer (they stay in the KV cache)."""
        while n > 0 and thread.events and isinstance(thread.events[-1], Text):
            text = thread.events.pop().text
            if len(text) > n:
                thread.events.append(Text(text[: len(text) - n]))
            n -= len(text)

    def _consume(self, thread: _Thread, token: int, *, count: bool) -> None:
        """Detokenize one token and act on the tags it completes."""
        if not count:
            thread.tokens.append(token)
            thread.fed.append(True)
        if self._ends_line(token):
            thread.line_start = len(thread.tokens)
        for event in thread.recognizer.feed(thread.detok.push(token)):
            self._on_event(thread, event, token)

    def _on_event(self, thread: _Thread, event, token: int) -> None:
        thread.events.append(event)
        if isinstance(event, Text):
            if thread.kind == "main":
                self._book.on_text(event.text)
            return
        if isinstance(event, StrayClose):  # "</sync>": markup that means nothing; the user must not see it
            self._ignore(thread, event, "closes nothing (Pasta-Lang has no such tag); dropped from the answer")
            return
        if thread.kind == "main":
            if isinstance(event, Promise):
                refusal = None if self._teacher else self._book.refusal(event)
                if refusal is not None:
                    self._refuse(thread, event, refusal)
                    return
                self._book.accept(event)
                thread.forks.append(event)
                self._main_markers.append(("fork", self._main_passes, len(self.threads) + len(thread.forks) - 1))
                self._last_count = topic_count(event.topic)
                start = thread.line_start
                self._promise_line = (thread.tokens[start:], thread.fed[start:], self._last_outline_fed)
                self._last_outline_fed = 0
                return
            if isinstance(event, Sync):
                outstanding = bool(self.layout.outstanding or thread.forks)
                if self._book.on_sync(outstanding=outstanding, guarded=not self._teacher):
                    # <sync/> again with nothing to wait for and nothing written since: a loop, not an answer.
                    thread.events[-1] = _Refused(event.raw)
                    self.guards.append("idle_sync: <sync/> repeated with nothing outstanding; main thread ended")
                    self._end_thread(thread, "guard")
                    return
                thread.state = "waiting"
                self._main_markers.append(("sync", self._main_passes, 0))
                self._last_count = None
                return
            self._ignore(thread, event, "is not valid in the main thread")
            return
        if isinstance(event, AsyncOpen) and not thread.opened:
            thread.opened = True
            return
        if isinstance(event, AsyncClose) and not thread.closed:
            thread.closed = True
            self._end_thread(thread, "closed", keep_pending=True)
            thread.pending = [token]
            return
        if thread.closed:
            self._ignore(thread, event, "comes after the chunk's </async>")
        elif isinstance(event, Promise) and self.limits.close_chunk_on_promise and not self._teacher:
            # A chunk that starts promising has lost its place (it writes the main thread's part): it ends here.
            thread.events[-1] = _Refused(event.raw)
            self.guards.append(f"chunk_promise: chunk {thread.trace.id} wrote {event.raw}; chunk closed")
            self._end_thread(thread, "guard", keep_pending=True)
            thread.pending = [token]
        else:
            self._ignore(thread, event, "is not valid inside a chunk")

    # -- runtime guards (DecodeLimits) ------------------------------------------------------------------------
    def _refuse(self, thread: _Thread, promise: Promise, reason: str) -> None:
        """No chunk for this promise: its tag leaves the answer, and the main thread syncs (or, refused twice in a
        row, ends)."""
        thread.events[-1] = _Refused(promise.raw)
        self._trim_list_marker(thread)
        ended = self._book.refuse()
        self.guards.append(PromiseGuards.guard_note(reason, promise.raw, ended))
        if ended:
            self._end_thread(thread, "guard")
        else:
            thread.inject = list(self.sync_ids)

    def _trim_list_marker(self, thread: _Thread) -> None:
        """A list marker the main thread wrote for the refused promise ("7. ", "- ") would dangle in the answer:
        drop it from the text (it stays in the KV cache; the next tokens are the guard's)."""
        k = len(thread.events) - 1
        tail = ""
        while k > 0 and isinstance(thread.events[k - 1], Text):
            k -= 1
            tail = thread.events[k].text + tail
        start = trailing_marker_start(tail)
        if start is None:
            return
        keep = tail[:start]
        thread.events[k : len(thread.events) - 1] = [Text(keep)] if keep else []

    def _ignore(self, thread: _Thread, event, why: str) -> None:
        thread.events[-1] = _Ignored(event.raw)
        self.warnings.append(f"thread {thread.trace.id}: tag {event.raw!r} {why}; ignored")

    def _end_thread(self, thread: _Thread, reason: str, keep_pending: bool = False) -> None:
        if thread.state == "done":
            return
        thread.state = "done"
        thread.trace.close_reason = reason
        thread.trace.end_step = self.steps
        if not keep_pending:
            thread.pending = []
        thread.draft = []
        for event in thread.recognizer.feed(thread.detok.flush()):
            thread.events.append(event if isinstance(event, Text) else _Ignored(event.raw))
        cut = thread.recognizer.pending
        by_budget = reason in ("budget", "request_budget")
        if cut and (by_budget or is_cut_tag(cut)):
            # A tag the budget (or EOS, once the tag is named) cut in half is markup, not content: dropped from `text`
            # and `annotated` (so the storage form stays valid), and recorded in the warnings.
            thread.recognizer = Recognizer()
            self.warnings.append(f"thread {thread.trace.id}: unfinished tag {cut!r} cut by "
                                 f"{'the budget' if by_budget else reason}; dropped from text")
        for event in thread.recognizer.flush():
            thread.events.append(event if isinstance(event, Text) else _Ignored(event.raw))
        if thread.kind == "main":
            thread.forks = []

    def _stop_all(self, reason: str) -> None:
        if all(t.state == "done" for t in self.threads):
            return
        for thread in self.threads:
            if thread.state != "done":
                for promise in thread.forks:
                    self.warnings.append(f"promise {promise.raw!r} read as the request stopped: no chunk; dropped")
                thread.forks = []
                self._end_thread(thread, reason)
        self.warnings.append(f"request reached max_new_tokens={self.limits.max_new_tokens}; stopped")

    # -- results --------------------------------------------------------------------------------------------------
    @property
    def finish_reason(self) -> str | None:
        """eos (the model ended its answer), length (the request's token cap), guard (a runtime guard ended it);
        None while decoding."""
        if not self.done:
            return None
        if any(t.trace.close_reason == "request_budget" for t in self.threads):
            return "length"
        return "guard" if self.threads[0].trace.close_reason == "guard" else "eos"

    def chunk_text(self, thread: _Thread) -> tuple[str, str]:
        """(annotated "<async>...</async>", plain body) of a chunk; a missing close tag is restored."""
        annotated = render(e if not isinstance(e, _Ignored) else Text(e.raw)
                           for e in thread.events if not isinstance(e, _Refused))
        if not thread.closed:
            annotated += ASYNC_CLOSE
        plain = "".join(e.text for e in thread.events if isinstance(e, Text))
        return annotated, plain

    def stitch(self) -> tuple[str, str]:
        """(annotated storage form, plain answer in reading order)."""
        annotated: list[str] = []
        plain: list[str] = []
        chunks = iter(self.threads[1:])
        for event in self.threads[0].events:
            if isinstance(event, Text):
                annotated.append(event.text)
                plain.append(event.text)
            elif isinstance(event, _Refused):
                continue  # a guard refused this promise: no chunk, and no trace in the answer
            elif isinstance(event, _Ignored):
                annotated.append(event.raw)
            elif isinstance(event, Promise):
                chunk = next(chunks, None)
                if chunk is not None:  # None: the request stopped before this promise could fork (warned)
                    a, p = self.chunk_text(chunk)
                    annotated.append(event.raw + a)
                    plain.append(p)
            else:  # Sync
                annotated.append(event.raw)
        return "".join(annotated), "".join(plain)

    def result(self, wall_s: float) -> GenerationResult:
        """The answer (both forms) and its statistics; the KV cache holds exactly the laid-out slots."""
        annotated, text = self.stitch()
        return GenerationResult(text=text, annotated=annotated, stats=build_stats(self, wall_s, len(self.layout)))

    def critical_path(self) -> int:
        """Forward passes an ideal schedule (unlimited threads, no waiting for slots) needs: main's k-th token
        costs one step; a chunk decodes from the step after its promise; a sync waits for the slowest chunk."""
        t, previous, outstanding_end, all_end = 0, 0, 0, 0
        for kind, ordinal, index in self._main_markers:
            t += ordinal - previous
            previous = ordinal
            if kind == "fork":
                if index >= len(self.threads):  # the request ended before the chunk was created: it costs nothing
                    continue
                end = t + self.threads[index].trace.sampled
                outstanding_end = max(outstanding_end, end)
                all_end = max(all_end, end)
            else:
                t = max(t, outstanding_end)
                outstanding_end = 0
        t += self._main_passes - previous
        return max(t, all_end, 1)


@dataclass(frozen=True)
class _JumpRule:
    """A piece of tag syntax whose rest is fixed once its first tokens are written: `ids` are its tokens, `texts[k]`
    the text of the first k, `commits` the fewest first tokens that commit to the piece ("<" alone could still open
    <sync/> or <async>), `before` what the held (unfinished) tag text must be just before the piece."""

    ids: list[int]
    texts: list[str]
    commits: int
    before: re.Pattern
    opens_promise: bool = False  # the '<promise topic="' rule (an outline topic may follow it)

    def begun(self, held: str, tokens: list[int]) -> int:
        """k when the thread has written exactly the piece's first k tokens (and they commit to it), else 0."""
        for k in range(len(self.ids) - 1, self.commits - 1, -1):
            text = self.texts[k]
            if held.endswith(text) and self.before.fullmatch(held[: len(held) - len(text)]) \
                    and tokens[-k:] == self.ids[:k]:
                return k
        return 0


def _jump_rules(tokenizer) -> list[_JumpRule]:
    """`<promise topic="` once "<p" is written (no other tag starts so), and ` tokens="` right after a promise's
    closed topic. A tokenizer that splits a piece differently inside a whole tag gets no rule for it: then nothing
    is forced and decoding is as without jump-forward."""
    rules = []
    whole = encode_piece(tokenizer, '<promise topic="x" tokens="10"/>')
    for piece, before, min_text in (('<promise topic="', "", "<p"), (' tokens="', r'<promise topic="[^"]*"', " tok")):
        ids = encode_piece(tokenizer, piece)
        if not any(whole[i : i + len(ids)] == ids for i in range(len(whole))):
            continue
        texts = [tokenizer.decode(ids[:k]) for k in range(len(ids) + 1)]
        if texts[-1] != piece:
            continue
        commits = next(k for k, text in enumerate(texts) if text.startswith(min_text))
        rules.append(_JumpRule(ids, texts, max(1, commits), re.compile(before), opens_promise=not before))
    return rules


class _Ignored:
    """A tag that had no effect (kept in `annotated`, dropped from `text`)."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw


class _Refused(_Ignored):
    """A promise refused by a runtime guard: no chunk, dropped from `text` and `annotated` (recorded in guards)."""

    __slots__ = ()
