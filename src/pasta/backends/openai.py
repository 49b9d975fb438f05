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
from dataclasses import dataclass, field
from typing import Any

from ..chat import prompt_text as chat_prompt_text
from ..decoding import ThreadTrace
from ..lang import ASYNC_CLOSE, ASYNC_OPEN, Promise, Sync, Text, parse
from ..openai_client import OpenAIClient
from ..results import GenerationResult, RunStats
from ..settings import DecodeSettings

TAG_END = "/>"


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

    def __post_init__(self) -> None:
        self.validate_decode_settings()


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
    """A piece of the main thread: text/tag as written, and for a promise its chunk."""

    raw: str
    promise: bool = False
    chunk: asyncio.Task | None = None
    joined: bool = False
    topic: str | None = None
    predicted: int | None = None
    tokens: int = 0  # completion tokens of its chunk


class RemoteInterpreter:
    def __init__(self, config: RemoteConfig, client: OpenAIClient | None = None) -> None:
        self.config = config
        self.client = client or OpenAIClient(config.base_url, config.api_key, timeout=config.timeout)
        self._model: str | None = config.model
        self._extra: dict[str, Any] | None = None
        self._template = None

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
            from transformers import AutoTokenizer

            self._template = AutoTokenizer.from_pretrained(self.config.tokenizer)
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
        self._extra = {"pasta": {"annotated": True, "mode": "sequential"}} if pasta else {}

    async def complete(self, prompt: str, *, stop: str, max_tokens: int) -> tuple[str, str | None, dict]:
        """One completion. Returns (text, the stop string that ended it or None, usage)."""
        c = self.config
        response = await self.client.acompletions(
            prompt, self._model, max_tokens=max_tokens, stop=[stop], temperature=c.temperature, top_p=c.top_p,
            seed=c.seed, **self._extra,
        )
        choice = response["choices"][0]
        text = choice.get("text") or ""
        stopped = choice.get("finish_reason") == "stop"
        # vLLM and pasta serve say which stop string matched; for servers that do not, a stop is taken to be the
        # stop string when the text + stop string ends in a tag (else it was EOS).
        reason = choice.get("stop_reason")
        if isinstance(reason, str):
            hit = reason == stop
        else:
            hit = stopped and (stop != TAG_END or _ends_with_tag(text + stop))
        return text, (stop if hit else None), response.get("usage") or {}


def _ends_with_tag(text: str) -> bool:
    events = parse(text)
    return bool(events) and isinstance(events[-1], (Promise, Sync))


class _Run:
    """One answer: the main thread's loop, its chunk tasks, and the bookkeeping."""

    def __init__(self, owner: RemoteInterpreter, prompt: str, mode: str) -> None:
        self.owner = owner
        self.config = owner.config
        self.prompt = prompt
        self.mode = mode
        self.pieces: list[_Piece] = []
        self.stats = RemoteStats()
        self.warnings: list[str] = []
        self.tokens = 0  # completion tokens, all requests
        self.main_tokens = 0
        self.prompt_length = 0  # the first request's prompt tokens: the user's prompt
        # The main thread's requests, forks and syncs in order: the critical path (steps an engine decoding every
        # chunk concurrently needs) follows from them and the token counts.
        self.schedule: list[tuple[str, Any]] = []
        self.budget = self.config.max_new_tokens
        self._active = 0
        self._slots = asyncio.Semaphore(self.config.max_threads)

    def view(self) -> str:
        """What the main thread reads now: its own text, with chunks only where joined."""
        out = [self.prompt]
        for piece in self.pieces:
            out.append(piece.raw)
            if piece.joined and piece.chunk is not None:
                out.append(ASYNC_OPEN + piece.chunk.result() + ASYNC_CLOSE)
        return "".join(out)

    async def request(self, prompt: str, stop: str, max_tokens: int) -> tuple[str, str | None, int]:
        self._active += 1
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, self._active)
        try:
            text, hit, usage = await self.owner.complete(prompt, stop=stop, max_tokens=max_tokens)
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

    async def chunk(self, piece: _Piece, context: str) -> str:
        async with self._slots:
            limit = max(1, min(self.config.max_thread_tokens, self.budget))
            text, hit, piece.tokens = await self.request(context + ASYNC_OPEN, ASYNC_CLOSE, limit)
        if hit is None:
            self.warnings.append(f"a chunk ended without {ASYNC_CLOSE} (EOS or token limit)")
        return text

    async def join(self) -> None:
        for piece in self.pieces:
            if piece.chunk is not None and not piece.joined:
                await piece.chunk
                piece.joined = True

    async def run(self) -> GenerationResult:
        started = time.perf_counter()
        try:
            while self.budget > 0:
                text, hit, n = await self.request(self.view(), TAG_END, self.budget)
                self.main_tokens += n
                self.schedule.append(("main", n))
                if hit is None:  # EOS or the budget: the answer is written
                    self.pieces.append(_Piece(text))
                    break
                text += TAG_END
                events = parse(text)
                last = events[-1] if events else None
                head = text[: len(text) - len(last.raw)] if isinstance(last, (Promise, Sync)) else text
                if head:
                    self.pieces.append(_Piece(head))
                if isinstance(last, Promise):
                    piece = _Piece(last.raw, promise=True, topic=last.topic, predicted=last.tokens)
                    self.pieces.append(piece)
                    self.schedule.append(("fork", piece))
                    piece.chunk = asyncio.ensure_future(self.chunk(piece, self.view()))
                    if self.mode == "sequential":
                        await piece.chunk  # one chunk at a time; the main thread still sees it only at a sync
                elif isinstance(last, Sync):
                    self.pieces.append(_Piece(last.raw))
                    self.schedule.append(("sync", None))
                    await self.join()
            await self.join()  # the end of the answer is an implicit sync
        finally:
            for piece in self.pieces:  # an error anywhere: no chunk request is left running
                if piece.chunk is not None and not piece.chunk.done():
                    piece.chunk.cancel()
        wall_s = time.perf_counter() - started
        if self.budget <= 0:
            self.warnings.append(f"reached max_new_tokens={self.config.max_new_tokens}; stopped")
        return self._result(wall_s)

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
            annotated.append(piece.raw)
            if piece.chunk is not None:
                body = piece.chunk.result()
                annotated.append(ASYNC_OPEN + body + ASYNC_CLOSE)
                plain.append("".join(e.text for e in parse(body) if isinstance(e, Text)))
            elif not piece.promise:
                plain.append("".join(e.text for e in parse(piece.raw) if isinstance(e, Text)))
        chunks = [p for p in self.pieces if p.promise]
        timeline = [ThreadTrace(id=0, kind="main", sampled=self.main_tokens)] + [
            ThreadTrace(id=i, kind="async", topic=p.topic, predicted_tokens=p.predicted, sampled=p.tokens)
            for i, p in enumerate(chunks, start=1)]
        steps = self.critical_path()
        stats = RunStats(
            mode=self.mode, steps=steps, tokens=self.tokens, threads=len(chunks), critical_path=steps,
            theoretical_speedup=self.tokens / steps, wall_s=wall_s, prompt_tokens=self.prompt_length,
            cache_tokens=0, tokens_per_thread=[t.sampled for t in timeline], timeline=timeline,
            warnings=self.warnings, finish_reason="length" if self.budget <= 0 else "eos", remote=self.stats,
        )
        return GenerationResult(text="".join(plain), annotated="".join(annotated), stats=stats)


def add_backend_args(parser) -> None:
    """The remote-backend options of `pasta generate` (`--backend openai` selects it)."""
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for --backend openai, "
                        "e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, llama.cpp server, pasta serve --sequential)")
    parser.add_argument("--remote-model", default=None, help="model id on the remote server (default: its first)")
    parser.add_argument("--tokenizer", default=None, help="local tokenizer folder whose chat template formats the "
                        "prompt for --backend openai (default: a plain 'role: text' transcript)")


def generate_from_args(args) -> GenerationResult:
    """`pasta generate --backend openai ...`: what the CLI calls (args as parsed by `pasta generate`)."""
    if not args.base_url:
        raise ValueError("--backend openai needs --base-url URL")
    asked = [f"--{name.replace('_', '-')}" for name in ("presence_penalty", "frequency_penalty")
             if getattr(args, name, None) is not None]
    if asked:  # a remote server's own penalty would also count tag syntax and the other threads' words
        raise ValueError(f"{' and '.join(asked)}: our penalties apply to local decoding only (per thread, tags "
                         "exempt); --backend openai cannot honour them")
    config = RemoteConfig(
        base_url=args.base_url, model=args.remote_model, max_new_tokens=args.max_new_tokens,
        max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, tokenizer=args.tokenizer,
    )
    return RemoteInterpreter(config).generate(args.prompt, mode="sequential" if args.sequential else "async",
                                              chat=not args.raw)
