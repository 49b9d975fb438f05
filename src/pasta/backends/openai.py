"""The remote backend: asynchronous decoding driven through any OpenAI-compatible `/v1/completions` endpoint
(vLLM, SGLang, llama.cpp server, or `pasta serve --sequential`).

    from pasta.backends.openai import RemoteConfig, RemoteInterpreter
    remote = RemoteInterpreter(RemoteConfig(base_url="http://127.0.0.1:8000/v1"))
    print(remote.generate("Give three tips for staying healthy.").text)

How: the main thread is one completion request that stops at "/>" (the end of `<promise .../>` and `<sync/>`).
At a promise, a chunk request starts at once, concurrently: prompt + main text through the promise + "<async>",
stopping at "</async>"; the main thread goes on in a new request that does not include the chunk (as in the
layout: the main thread sees no chunk before `<sync/>`). At `<sync/>` the outstanding chunks are awaited and
their text is spliced in after their promises, so later requests read them. The engine's own continuous batching
runs the concurrent requests together and its prefix cache reuses the shared prompt.

The runtime guards (`DecodeLimits`, written once in `pasta.guards`) act on that text as the local decoder's act on
tokens: a refused promise leaves the answer and the main thread continues after a `<sync/>`; a chunk that writes a
promise (chunk requests stop at "/>" too) is closed. For a model trained on outlines (`outline_topics`) the main
thread also stops at ";" (the outline guard) and at '<promise topic="' (the topic is fed from the outline line); the
server must then say which stop string matched (vLLM, SGLang, pasta serve). What the model read stays in the
prompt of later requests even where a guard drops it from the answer, as it stays in the local KV cache.

Cost model, honestly: every continuation is a new request whose prompt is the whole text so far. With a prefix
cache (vLLM `--enable-prefix-caching`, SGLang's radix cache) the shared part is a cache hit, but spliced chunk
text at a sync is *re-read* (prefilled) by the main thread, and without a prefix cache every continuation
re-reads everything. A text API cannot reserve position ids, so chunks and the text after them sit at ordinary
consecutive positions once spliced; a model trained with position reservation sees a slightly different layout
than the local interpreter gives it. The local interpreter (`pasta.interpreter`, `pasta serve`) has neither cost.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..chat import prompt_text as chat_prompt_text
from ..cli_options import adapter_from_args
from ..decoding import DecodeLimits, ThreadTrace
from ..guards import PROMISE_MARK, PromiseGuards, outline_cut, outline_topic_rest, trailing_marker_start
from ..lang import (
    ASYNC_CLOSE, ASYNC_OPEN, SYNC, Promise, Recognizer, StrayClose, Sync, Text, is_cut_tag, parse,
)
from ..openai_client import OpenAIClient
from ..results import GenerationResult, RunStats
from ..settings import DecodeSettings

TAG_END = "/>"
OUTLINE_SEP = ";"  # ends an outline item: where the outline guard looks
PROMISE_OPEN = '<promise topic="'  # where outline topics are fed
# Servers (`owned_by` in /v1/models) whose completions say which stop string matched: vLLM and pasta serve
# (`stop_reason`), SGLang (`matched_stop`).
STOP_REPORTING_SERVERS = ("vllm", "sglang", "pasta")
# Decoding options that act on single tokens inside the local decoder: a text API cannot honour them.
LOCAL_ONLY = ("presence_penalty", "frequency_penalty", "outline_no_repeat")


@dataclass(frozen=True)
class RemoteConfig(DecodeSettings):
    base_url: str
    model: str | None = None  # default: the first id the server lists
    api_key: str | None = None
    max_new_tokens: int = 1024  # all requests of one answer together
    max_thread_tokens: int = 512
    max_threads: int = 8  # chunks in flight at once
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    timeout: float = 300.0
    tokenizer: str | None = None  # a local tokenizer folder whose chat template formats chat prompts
    # Runtime guards (DecodeLimits; all of them apply, as in local decoding): the promise caps, and the outline
    # conventions of a model trained on outlines (outline topics and the outline guard, terminated outlines).
    max_promises: int = 16
    max_promises_per_sync: int = 8
    outline_topics: bool = False
    outline_terminated: bool = False
    guards: bool = True  # False: the text as the model writes it, no guard and no outline stops (for comparison)

    def __post_init__(self) -> None:
        self.validate_decode_settings()

    @property
    def limits(self) -> DecodeLimits:
        return replace(super().limits, max_promises=self.max_promises, max_promises_per_sync=self.max_promises_per_sync)


@dataclass
class RemoteStats:
    """What the remote path costs (in `RunStats.remote`): requests sent, prompt tokens re-sent, concurrency."""

    requests: int = 0
    prompt_tokens: int = 0  # prompt tokens sent, all requests: what the engine had to read (or find cached)
    peak_concurrency: int = 0


# The remote backend returns the interpreter's own result type (text, annotated, RunStats with `remote` set).
RemoteResult = GenerationResult


@dataclass
class _Piece:
    """A piece of the main thread: `raw` as the model wrote it or was fed it (what later requests read), `out` what
    the answer keeps of it (None: all of it; a guard's refused tag or cut outline item keeps less), and for an
    accepted promise its chunk."""

    raw: str
    kind: str = "text"  # text | promise | refused (a promise or sync a guard refused) | sync
    out: str | None = None
    chunk: asyncio.Task | None = None
    joined: bool = False
    topic: str | None = None
    predicted: int | None = None
    tokens: int = 0  # completion tokens of its chunk
    close_reason: str | None = None  # how its chunk ended, as the local decoder says it (`ThreadTrace.close_reason`)

    @property
    def shown(self) -> str:
        return self.raw if self.out is None else self.out


class RemoteInterpreter:
    def __init__(self, config: RemoteConfig, client: OpenAIClient | None = None, *, template=None) -> None:
        """`template`: the tokenizer of `config.tokenizer`, when the caller has it loaded already."""
        self.config = config
        self.client = client or OpenAIClient(config.base_url, config.api_key, timeout=config.timeout)
        self._model: str | None = config.model
        self._extra: dict[str, Any] | None = None
        self._template = template
        self.reports_stop = False  # the server says which stop string ended a completion (set by _discover)

    # -- public API ---------------------------------------------------------------------------------------------
    def generate(self, prompt: str | list[dict], *, mode: str = "async", chat: bool = True) -> GenerationResult:
        return asyncio.run(self.agenerate(prompt, mode=mode, chat=chat))

    async def agenerate(self, prompt: str | list[dict], *, mode: str = "async", chat: bool = True) -> GenerationResult:
        if mode not in ("async", "sequential"):
            raise ValueError(f"mode must be 'async' or 'sequential', got {mode!r}")
        try:
            await self._discover()
            run = _Run(self, self.prompt_text(prompt, chat=chat), mode)
            if chat and not self.config.tokenizer:
                # Met against llama.cpp: a chat model then reads a transcript it was never trained on.
                run.warnings.append("no tokenizer given: the prompt is a plain 'role: text' transcript, not "
                                          "the model's chat template (pass --tokenizer MODEL_DIR)")
            return await run.run()
        finally:
            await self.client.aclose()

    def prompt_text(self, prompt: str | list[dict], *, chat: bool = True) -> str:
        """The raw prompt: the chat template of `config.tokenizer` when given, else a plain transcript."""
        if isinstance(prompt, str) and not chat:
            return prompt
        if self.config.tokenizer and self._template is None:
            from ..models import load_tokenizer

            self._template = load_tokenizer(self.config.tokenizer)  # a folder, a .gguf, or 'default'
        return chat_prompt_text(self._template, prompt)  # `pasta.chat`: the template, or the transcript fallback

    # -- requests -----------------------------------------------------------------------------------------------
    async def _discover(self) -> None:
        if self._extra is not None:
            return
        response = await self.client.arequest("GET", "models")
        data = response.get("data") or []
        if self._model is None:
            if not data:
                raise ValueError(f"{self.config.base_url} lists no model; pass a model name")
            self._model = data[0].get("id")
        # A Pasta server interprets tags itself; ask it for the text as written (with tags) instead.
        pasta = any(m.get("owned_by") == "pasta" for m in data)
        self.reports_stop = any(m.get("owned_by") in STOP_REPORTING_SERVERS for m in data)
        self._extra = {"pasta": {"annotated": True, "mode": "sequential"}} if pasta else {}

    async def complete(self, prompt: str, *, stops: list[str], max_tokens: int) -> tuple[str, str | None, dict]:
        """One completion. Returns (text, the stop string that ended it or None, usage)."""
        c = self.config
        response = await self.client.acompletions(
            prompt, self._model, max_tokens=max_tokens, stop=list(stops), temperature=c.temperature, top_p=c.top_p,
            seed=c.seed, **self._extra,
        )
        choice = response["choices"][0]
        text = choice.get("text") or ""
        stopped = choice.get("finish_reason") == "stop"
        # vLLM and pasta serve say which stop string matched (`stop_reason`), SGLang too (`matched_stop`); for servers
        # that do not, a stop is taken to be "/>" when the text + "/>" ends in a tag, else the first other stop
        # string (EOS and "</async>" both end a chunk; outline stops are asked only of servers that report).
        reported = next((key for key in ("stop_reason", "matched_stop") if key in choice), None)
        if reported is not None:  # None (or a token id) there means EOS or a stop token, not one of our strings
            reason = choice[reported]
            hit = reason if isinstance(reason, str) and reason in stops else None
        elif not stopped:
            hit = None
        elif TAG_END in stops and _ends_with_tag(text + TAG_END):
            hit = TAG_END
        else:
            hit = next((s for s in stops if s != TAG_END), None)
        return text, hit, response.get("usage") or {}


def _ends_with_tag(text: str) -> bool:
    events = parse(text)
    return bool(events) and isinstance(events[-1], (Promise, Sync))


class _Run:
    """One answer: the main thread's loop, its chunk tasks, the runtime guards (`pasta.guards`, the local decoder's
    rules applied to text between stop strings), and the bookkeeping."""

    def __init__(self, owner: RemoteInterpreter, prompt: str, mode: str) -> None:
        self.owner = owner
        self.config = owner.config
        self.limits = owner.config.limits
        self.prompt = prompt
        self.mode = mode
        self.pieces: list[_Piece] = []
        self.stats = RemoteStats()
        self.warnings: list[str] = []
        self.guards: list[str] = []
        self.book = PromiseGuards(self.limits)
        self.topics_fed = 0
        self.tokens = 0  # completion tokens, all requests
        self.main_tokens = 0
        self.main_ended_by_guard = False
        self.prompt_length = 0  # the first request's prompt tokens: the user's prompt
        # The main thread's requests, forks and syncs in order: the critical path (steps an engine decoding every
        # chunk concurrently needs) follows from them and the token counts.
        self.schedule: list[tuple[str, Any]] = []
        self.budget = self.config.max_new_tokens
        self._active = 0
        self._slots = asyncio.Semaphore(self.config.max_threads)
        # Outline topics and the outline guard act where the model ends an outline item (';') and opens a promise:
        # two more stop strings, asked only of a server that says which stop string matched.
        self.guarded = self.config.guards
        self.outline = bool(self.limits.outline_topics) and self.guarded
        if self.outline and not owner.reports_stop:
            self.outline = False
            self.warnings.append("outline topics and the outline guard are off: this server does not say which stop "
                                 "string matched (vLLM, SGLang and pasta serve do)")
        self.main_stops = [TAG_END, OUTLINE_SEP, PROMISE_OPEN] if self.outline else [TAG_END]

    def view(self) -> str:
        """What the main thread reads now: its own text, with chunks only where joined."""
        out = [self.prompt]
        for piece in self.pieces:
            out.append(piece.raw)
            if piece.joined and piece.chunk is not None:
                out.append(ASYNC_OPEN + piece.chunk.result() + ASYNC_CLOSE)
        return "".join(out)

    async def request(self, prompt: str, stops: list[str], max_tokens: int) -> tuple[str, str | None, int]:
        self._active += 1
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, self._active)
        try:
            text, hit, usage = await self.owner.complete(prompt, stops=stops, max_tokens=max_tokens)
        finally:
            self._active -= 1
        tokens = int(usage.get("completion_tokens") or 0)
        if not self.stats.requests:
            self.prompt_length = int(usage.get("prompt_tokens") or 0)
        self.stats.requests += 1
        self.tokens += tokens
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.budget -= tokens
        return text, hit, tokens

    async def chunk(self, piece: _Piece, context: str, index: int) -> str:
        """Chunk `index` (1-based, in promise order): requests until its `</async>` (or EOS, or its budget). A tag
        it writes is read as the local decoder reads it: a promise ends the chunk (guard chunk_promise), any other
        stays in the storage form only (a warning) and the chunk goes on."""
        body = ""
        async with self._slots:
            while True:
                limit = min(self.config.max_thread_tokens - piece.tokens, self.budget)
                if limit <= 0:
                    self.warnings.append(f"chunk {index} reached its token budget; closed")
                    piece.close_reason = self._budget_reason(piece)
                    return body
                text, hit, n = await self.request(context + ASYNC_OPEN + body, [ASYNC_CLOSE, TAG_END], limit)
                piece.tokens += n
                if hit != TAG_END:
                    if hit is None:
                        self.warnings.append(f"a chunk ended without {ASYNC_CLOSE} (EOS or token limit)")
                        by_budget = piece.tokens >= self.config.max_thread_tokens or self.budget <= 0
                        piece.close_reason = self._budget_reason(piece) if by_budget else "eos"
                        text = self._drop_cut_tag(body + text, index, by_budget)[len(body):]
                    else:
                        piece.close_reason = "closed"
                    self._ignore_tags(text, index)
                    return body + text
                tag = parse(text + TAG_END)[-1]
                if isinstance(tag, Promise) and self.limits.close_chunk_on_promise and self.guarded:
                    text = text[: len(text) + len(TAG_END) - len(tag.raw)]
                    self._ignore_tags(text, index)
                    self.guards.append(f"chunk_promise: chunk {index} wrote {tag.raw}; chunk closed")
                    piece.close_reason = "guard"
                    return body + text
                self._ignore_tags(text + TAG_END, index)  # a '/>' that ends no tag is the chunk's text
                body += text + TAG_END

    def _budget_reason(self, piece: _Piece) -> str:
        """A chunk cut by a budget: its own (`budget`) or the request's (`request_budget`), as the local decoder
        says."""
        return "budget" if piece.tokens >= self.config.max_thread_tokens else "request_budget"

    async def join(self) -> None:
        for piece in self.pieces:
            if piece.chunk is not None and not piece.joined:
                await piece.chunk
                piece.joined = True

    async def run(self) -> GenerationResult:
        started = time.perf_counter()
        try:
            await self._main()
            await self.join()  # the end of the answer is an implicit sync
        finally:
            for piece in self.pieces:  # an error anywhere: no chunk request is left running
                if piece.chunk is not None and not piece.chunk.done():
                    piece.chunk.cancel()
        wall_s = time.perf_counter() - started
        if self.budget <= 0:
            self.warnings.append(f"reached max_new_tokens={self.config.max_new_tokens}; stopped")
        return self._result(wall_s)

    async def _main(self) -> None:
        opened = ""  # a promise tag opened with its topic fed, continued by the next request
        while self.budget > 0:
            text, hit, n = await self.request(self.view() + opened, self.main_stops, self.budget)
            self.main_tokens += n
            self.schedule.append(("main", n))
            written, opened = opened + text, ""
            if hit is None:  # EOS or the budget: the answer is written
                self._text(self._drop_cut_tag(written, 0, self.budget <= 0))
                return
            if hit == OUTLINE_SEP:
                self._text(written)
                self._outline_item_end()
                continue
            if hit == PROMISE_OPEN:
                self._text(written)
                opened = self._open_promise()
                if not opened.endswith(TAG_END):
                    continue
                written, opened = opened, ""  # a promise past the outline, closed with its count alone
            else:
                written += TAG_END
            events = parse(written)
            last = events[-1] if events and isinstance(events[-1], (Promise, Sync)) else None
            self._text(written[: len(written) - len(last.raw)] if last is not None else written)
            if isinstance(last, Promise):
                piece = self._promise(last)
                if piece is None and not self.main_ended_by_guard and not await self._sync(SYNC):  # forced <sync/>
                    return
                if piece is not None and self.mode == "sequential":
                    await piece.chunk  # one chunk at a time; the main thread still sees it only at a sync
            elif isinstance(last, Sync):
                if not await self._sync(last.raw):
                    return
            if self.main_ended_by_guard:
                return

    def _drop_cut_tag(self, text: str, thread: int, by_budget: bool) -> str:
        """`text` without a tag its end cut in half (as the local decoder drops it: any held text when the budget
        cut it, a named tag at EOS, `pasta.lang.is_cut_tag`): markup, not content."""
        recognizer = Recognizer()
        recognizer.feed(text)
        held = recognizer.pending
        if not held or not (by_budget or is_cut_tag(held)):
            return text
        self.warnings.append(f"thread {thread}: unfinished tag {held!r} cut by {'the budget' if by_budget else 'eos'}; "
                             "dropped from text")
        return text[: len(text) - len(held)]

    # -- the main thread's text and tags, with the runtime guards ---------------------------------------------------
    def _text(self, text: str) -> None:
        if text:
            self.pieces.append(_Piece(text))
            self.book.on_text(text)
            self._ignore_tags(text, 0)

    def _ignore_tags(self, text: str, thread: int) -> None:
        """Tags inside text the model wrote that act on nothing here (`</sync>`, `</promise>`, chunk tags in the main
        thread, a second `<async>` in a chunk): they leave the answer (`_result` keeps only text), with the local
        decoder's warning."""
        where = "in the main thread" if thread == 0 else "inside a chunk"
        for event in parse(text):
            if isinstance(event, StrayClose):
                why = "closes nothing (Pasta-Lang has no such tag); dropped from the answer"
            elif isinstance(event, Text):
                continue
            else:
                why = f"is not valid {where}"
            self.warnings.append(f"thread {thread}: tag {event.raw!r} {why}; ignored")

    def _drop_shown(self, n: int) -> None:
        """Drop the last `n` characters of the main thread's text from the answer (later requests still read them,
        as the local decoder's KV cache keeps them)."""
        for piece in reversed(self.pieces):
            if n <= 0 or piece.kind != "text":
                return
            shown = piece.shown
            piece.out = shown[: max(0, len(shown) - n)]
            n -= len(shown)

    def _text_since_tag(self) -> str:
        tail = ""
        for piece in reversed(self.pieces):
            if piece.kind != "text":
                break
            tail = piece.shown + tail
        return tail

    def _outline_item_end(self) -> None:
        """The model ended an item with ';': written, unless the outline guard cuts the outline there."""
        line = self._text_since_tag()
        cut = outline_cut(line[line.rfind("\n") + 1 :], "", self.limits)
        if cut is None:
            self._text(OUTLINE_SEP)
            return
        self._drop_shown(cut.drop)
        self.guards.append(cut.note)
        self._text(cut.end)

    def _open_promise(self) -> str:
        """The model opened a promise: the tag so far, with its topic fed from the outline line when there is one."""
        last_sync = max((i for i, p in enumerate(self.pieces) if p.kind == "sync"), default=-1)
        since = "".join(PROMISE_MARK if p.kind in ("promise", "refused") and p.raw.startswith("<promise") else p.shown
                        for p in self.pieces[last_sync + 1 :])
        found = outline_topic_rest(since, guard=True)
        if found is None:
            return PROMISE_OPEN
        rest, past = found
        if past:
            self.book.past_outline = True
        else:
            self.topics_fed += 1
        return PROMISE_OPEN + rest

    def _promise(self, promise: Promise) -> _Piece | None:
        """An accepted promise forks its chunk (its piece is returned); a refused one leaves the answer (None), and the
        main thread is to sync next, or, refused twice in a row, ends."""
        reason = self.book.refusal(promise) if self.guarded else None
        if reason is not None:
            tail = self._text_since_tag()
            start = trailing_marker_start(tail)
            if start is not None:  # the list marker written for it would dangle
                self._drop_shown(len(tail) - start)
            self.pieces.append(_Piece(promise.raw, kind="refused", out=""))
            ended = self.book.refuse()
            self.guards.append(PromiseGuards.guard_note(reason, promise.raw, ended))
            self.main_ended_by_guard = ended
            return None
        self.book.accept(promise)
        piece = _Piece(promise.raw, kind="promise", topic=promise.topic, predicted=promise.tokens)
        self.pieces.append(piece)
        self.schedule.append(("fork", piece))
        index = sum(p.kind == "promise" for p in self.pieces)
        piece.chunk = asyncio.ensure_future(self.chunk(piece, self.view(), index))
        return piece

    async def _sync(self, raw: str) -> bool:
        """A `<sync/>` of the main thread: join the outstanding chunks. False when the idle-sync guard ends the main
        thread instead."""
        outstanding = any(p.chunk is not None and not p.joined for p in self.pieces)
        if self.book.on_sync(outstanding=outstanding, guarded=self.guarded):
            self.pieces.append(_Piece(raw, kind="refused", out=""))
            self.guards.append("idle_sync: <sync/> repeated with nothing outstanding; main thread ended")
            self.main_ended_by_guard = True
            return False
        self.pieces.append(_Piece(raw, kind="sync"))
        self.schedule.append(("sync", None))
        await self.join()
        return True

    def critical_path(self) -> int:
        """Steps an engine decoding every chunk as soon as it is forked needs: main requests in order, a chunk from
        its fork on, a sync waiting for the slowest outstanding chunk. Sequential mode: every token is a step."""
        if self.mode == "sequential":
            return max(1, self.tokens)
        t = outstanding = end = 0
        for kind, item in self.schedule:
            if kind == "main":
                t += item
            elif kind == "fork":
                outstanding = max(outstanding, t + item.tokens)
                end = max(end, outstanding)
            else:
                t, outstanding = max(t, outstanding), 0
        return max(1, t, end)

    def _result(self, wall_s: float) -> GenerationResult:
        annotated: list[str] = []
        plain: list[str] = []
        for piece in self.pieces:
            annotated.append(piece.shown)
            if piece.chunk is not None:
                body = piece.chunk.result()
                annotated.append(ASYNC_OPEN + body + ASYNC_CLOSE)
                plain.append("".join(e.text for e in parse(body) if isinstance(e, Text)))
            elif piece.kind == "text":
                plain.append("".join(e.text for e in parse(piece.shown) if isinstance(e, Text)))
        chunks = [p for p in self.pieces if p.kind == "promise"]
        finish = "length" if self.budget <= 0 else "guard" if self.main_ended_by_guard else "eos"
        main_reason = {"length": "request_budget"}.get(finish, finish)
        timeline = [ThreadTrace(id=0, kind="main", sampled=self.main_tokens, close_reason=main_reason)] + [
            ThreadTrace(id=i, kind="async", topic=p.topic, predicted_tokens=p.predicted, sampled=p.tokens,
                        close_reason=p.close_reason)
            for i, p in enumerate(chunks, start=1)]
        steps = self.critical_path()
        stats = RunStats(
            mode=self.mode, steps=steps, tokens=self.tokens, threads=len(chunks), critical_path=steps,
            theoretical_speedup=self.tokens / steps, wall_s=wall_s, prompt_tokens=self.prompt_length,
            cache_tokens=0, tokens_per_thread=[t.sampled for t in timeline], timeline=timeline,
            warnings=self.warnings, finish_reason=finish, remote=self.stats, guards=self.guards,
            outline_topics_fed=self.topics_fed,
        )
        return GenerationResult(text="".join(plain), annotated="".join(annotated), stats=stats)


def add_backend_args(parser, *, evaluation: bool = False) -> None:
    """The remote-backend options of `pasta generate` and `pasta eval` (`--backend openai` selects it)."""
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for --backend openai, "
                        "e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp server, pasta serve --sequential)")
    parser.add_argument("--remote-model", default=None, help="model id on the remote server (default: its first)")
    parser.add_argument("--tokenizer", default=None, help=(
        "the served model's tokenizer for --backend openai, required: a folder, a .gguf, or 'default' (the embedded "
        "model); its chat template formats the prompts and it counts the answers' tokens" if evaluation else
        "local tokenizer folder whose chat template formats the prompt for --backend openai (default: a plain "
        "'role: text' transcript)"))


def generate_from_args(args) -> GenerationResult:
    """`pasta generate --backend openai ...`: what the CLI calls (args as parsed by `pasta generate`)."""
    if not args.base_url:
        raise ValueError("--backend openai needs --base-url URL")
    # the outline conventions of the adapter the server applies (--adapter), or as the tokenizer folder records them
    recorded = served_conventions(args.tokenizer, adapter_from_args(args)) if args.tokenizer else {}
    asked = [f"--{name.replace('_', '-')}" for name in ("presence_penalty", "frequency_penalty")
             if getattr(args, name, None) is not None]
    if asked:  # a remote server's own penalty would also count tag syntax and the other threads' words
        raise ValueError(f"{' and '.join(asked)}: our penalties apply to local decoding only (per thread, tags "
                         "exempt); --backend openai cannot honour them")
    if getattr(args, "outline_no_repeat", None):
        raise ValueError("--outline-no-repeat bans one token while an outline item is written; --backend openai sees "
                         "text between stop strings and cannot honour it")
    chosen = {name: recorded.get(name, False) if getattr(args, name, None) is None else getattr(args, name)
              for name in ("outline_topics", "outline_terminated")}
    config = RemoteConfig(
        base_url=args.base_url, model=args.remote_model, max_new_tokens=args.max_new_tokens,
        max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, tokenizer=args.tokenizer, **chosen,
    )
    result = RemoteInterpreter(config).generate(args.prompt, mode="sequential" if args.sequential else "async",
                                                chat=not args.raw)
    local_only = sorted(k for k in LOCAL_ONLY if recorded.get(k))
    if local_only:
        result.stats.warnings.append(f"the model records {', '.join(local_only)} (pasta_decoding.json), which only "
                                     "local decoding applies: this answer can differ from `pasta generate`'s")
    return result


def recorded_conventions(folder: str | None) -> dict:
    """The decoding conventions a model folder records (pasta_decoding.json, as `pasta train sft` writes it beside the
    adapter, or beside merged weights), or {} (`served_conventions` says which folder the remote backend reads)."""
    from pathlib import Path

    from ..interpreter import read_decoding_conventions

    path = Path(folder) / "pasta_decoding.json" if folder else None
    return read_decoding_conventions(path) if path is not None and path.is_file() else {}


def served_conventions(tokenizer: str, adapter: str | bool) -> dict:
    """The Pasta model's decoding conventions (pasta_decoding.json): from the adapter the server applies (`adapter`, a
    folder), else from the tokenizer folder, else, for the embedded model, the shipped adapter's; `adapter=False`:
    none."""
    from pathlib import Path

    from ..models import DEFAULT_MODEL, default_adapter_path

    if adapter is False:
        return {}
    if isinstance(adapter, str):
        if not Path(adapter).is_dir():
            raise ValueError(f"--adapter {adapter}: not a folder (the Pasta adapter the server applies)")
        return recorded_conventions(adapter)
    if tokenizer in ("default", DEFAULT_MODEL):
        shipped = default_adapter_path()
        return recorded_conventions(str(shipped)) if shipped is not None else {}
    path = Path(tokenizer)
    return recorded_conventions(str(path if path.is_dir() else path.parent))
