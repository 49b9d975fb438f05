"""`pasta eval --backend openai`: the evaluated systems served by an OpenAI-compatible server.

The local evaluation decodes every system in this process. This one drives a server (vLLM, SGLang, `pasta serve`)
through the remote backend (`pasta.backends.openai`), so a Pasta model served at scale gets the same answer
statistics, speedups and report:
- `pasta`: the Pasta model (`remote_model`) decoded asynchronously, with the runtime guards and the outline conventions
  the model records;
- `sequential`: the same model through the same backend, one chunk at a time (the same answer under greedy decoding):
  the speed reference;
- `original`: the original model (`remote_original_model`: e.g. vLLM's base model served beside the Pasta LoRA),
  decoded sequentially, with no convention of the Pasta model;
- `sot`: Skeleton-of-Thought on the original model, as its authors ran it against APIs: the skeleton, then every
  point as a concurrent request.

A local tokenizer (`tokenizer`: a folder, a .gguf, or 'default' for the embedded model) gives the chat template and the
token counts of the answer statistics; the Pasta model's outline conventions come from `pasta_decoding.json` beside
the adapter the server applies (`adapter`), else in the tokenizer folder (for 'default': the shipped adapter's;
`pasta.backends.openai.served_conventions`). What only local decoding applies (the presence/frequency penalties, the
outline ban) is refused when asked for and noted when the model records it. Wall times are the server's as this
client sees them: measure against an otherwise idle server.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ..backends.openai import LOCAL_ONLY, RemoteConfig, RemoteInterpreter, served_conventions
from ..chat import prompt_text
from ..decoding import DecodeLimits
from ..openai_client import OpenAIClient
from ..results import GenerationResult
from ..sampling import SamplingParams
from .sot import SKELETON_PREFILL, SKELETON_PROMPT, SoTResult, assemble_points, parse_points, point_requests

TIMEOUT = 300.0  # seconds per request: a long answer from a busy server


@dataclass
class RemoteSystem:
    """One served model, as an evaluated system sees it: `generate` (the interpreter's signature) and
    `skeleton_of_thought`."""

    base_url: str
    model: str
    tokenizer: Any  # loaded: the chat template and the token counts
    tokenizer_path: str
    conventions: dict  # the model's recorded decoding conventions (pasta_decoding.json), {} for the original
    timeout: float = TIMEOUT

    @property
    def name(self) -> str:
        return self.model

    def generate(self, prompt: str | list[dict], *, sampling: SamplingParams | None = None,
                 limits: DecodeLimits | None = None, mode: str = "async", chat: bool = True) -> GenerationResult:
        limits = (limits or DecodeLimits()).resolved(self.conventions)
        sampling = sampling or SamplingParams()
        config = RemoteConfig(
            base_url=self.base_url, model=self.model, timeout=self.timeout, tokenizer=self.tokenizer_path,
            max_new_tokens=limits.max_new_tokens, max_thread_tokens=limits.max_thread_tokens,
            max_threads=limits.max_threads, temperature=sampling.temperature, top_p=sampling.top_p,
            seed=sampling.seed, max_promises=limits.max_promises, max_promises_per_sync=limits.max_promises_per_sync,
            outline_topics=limits.outline_topics, outline_terminated=limits.outline_terminated,
        )
        return RemoteInterpreter(config, template=self.tokenizer).generate(prompt, mode=mode, chat=chat)

    def skeleton_of_thought(self, question: str, *, sampling: SamplingParams | None = None,
                            limits: DecodeLimits | None = None, skeleton_tokens: int = 128,
                            max_points: int = 10) -> SoTResult:
        """`pasta.eval.sot.skeleton_of_thought` through the server: one skeleton request, then the points as
        concurrent requests (the engine batches them). Each point may take `max_thread_tokens`, up to what the
        request budget has left after the skeleton (concurrent requests cannot share one budget)."""
        return asyncio.run(self._sot(question, sampling or SamplingParams(), limits or DecodeLimits(),
                                     skeleton_tokens, max_points))

    async def _sot(self, question: str, sampling: SamplingParams, limits: DecodeLimits, skeleton_tokens: int,
                   max_points: int) -> SoTResult:
        client = OpenAIClient(self.base_url, timeout=self.timeout)

        async def complete(prompt: str, max_tokens: int) -> tuple[str, int, bool]:
            response = await client.acompletions(prompt, self.model, max_tokens=max_tokens,
                                                 temperature=sampling.temperature, top_p=sampling.top_p,
                                                 seed=sampling.seed)
            choice = response["choices"][0]
            tokens = int((response.get("usage") or {}).get("completion_tokens") or 0)
            return choice.get("text") or "", tokens, choice.get("finish_reason") == "length"

        try:
            started = time.perf_counter()
            sk_prompt = prompt_text(self.tokenizer, SKELETON_PROMPT.format(question=question)) + SKELETON_PREFILL
            sk_text, sk_tokens, _ = await complete(sk_prompt, min(skeleton_tokens, limits.max_new_tokens))
            skeleton = SKELETON_PREFILL + sk_text
            points = parse_points(skeleton, max_points)
            remaining = limits.max_new_tokens - sk_tokens
            if not points or remaining < 1:
                why = "no numbered point in the skeleton" if not points else "no token budget left after the skeleton"
                text, tokens, cut = await complete(prompt_text(self.tokenizer, question), max(1, remaining))
                return SoTResult(text=text, skeleton=skeleton, points=points, expansions=[],
                                 steps=sk_tokens + tokens, tokens=sk_tokens + tokens,
                                 critical_path=sk_tokens + tokens, wall_s=time.perf_counter() - started,
                                 fallback=True, warnings=[f"fallback to plain decoding: {why}"], truncated=cut)
            requests = point_requests(question, points)
            each = min(limits.max_thread_tokens, remaining)
            replies = await asyncio.gather(*(complete(prompt_text(self.tokenizer, message) + prefill, each)
                                             for message, prefill in requests))
            sampled = [tokens for _, tokens, _ in replies]
            text, expansions, warnings, truncated = assemble_points(
                skeleton, points, [prefill for _, prefill in requests], [t for t, _, _ in replies], sampled,
                limits=limits, max_points=max_points, skeleton_tokens=sk_tokens)
            critical = sk_tokens + max(sampled)
            return SoTResult(text=text, skeleton=skeleton, points=points, expansions=expansions, steps=critical,
                             tokens=sk_tokens + sum(sampled), critical_path=critical,
                             wall_s=time.perf_counter() - started, warnings=warnings, truncated=truncated)
        finally:
            await client.aclose()


def _discover(base_url: str, model: str | None) -> str:
    """The served model's id (`model`, checked against the server's list, or its first)."""
    with OpenAIClient(base_url, timeout=TIMEOUT) as client:
        served = client.models()
    if model is None:
        if not served:
            raise ValueError(f"{base_url} lists no model; pass --remote-model")
        return served[0]
    if served and model not in served:
        raise ValueError(f"{base_url} serves {served}, not {model!r}")
    return model


def load_remote_systems(config):
    """`Systems` (pasta.eval.runner) for an `EvalConfig` with `backend="openai"`."""
    from ..models import load_tokenizer, resolve_model_path
    from .runner import Systems

    folder = str(resolve_model_path(config.tokenizer)[1])
    tokenizer = load_tokenizer(folder)
    conventions = served_conventions(config.tokenizer, config.adapter)
    pasta = RemoteSystem(config.base_url, _discover(config.base_url, config.remote_model),
                         tokenizer, folder, conventions)
    notes = [f"systems served by {config.base_url} (--backend openai): pasta and sequential by {pasta.model!r}"]
    recorded = sorted(k for k in LOCAL_ONLY if conventions.get(k))
    if recorded:
        notes.append(f"the Pasta model records {', '.join(recorded)} (pasta_decoding.json), which only local decoding "
                     "applies: its answers here can differ from `pasta eval`'s local ones")
    original = pasta
    if config.remote_original_model is not None:
        url = config.original_base_url or config.base_url
        original = RemoteSystem(url, _discover(url, config.remote_original_model), tokenizer, folder, {})
        notes.append(f"original and sot by {original.model!r}" + (f" at {url}" if url != config.base_url else ""))
    return Systems(pasta=pasta, original=original, notes=notes)
