"""The PASTA interpreter: asynchronous (or sequential) decoding of one request with a Hugging Face causal LM.

    from pasta import Interpreter
    interp = Interpreter.from_pretrained()          # the embedded default model
    result = interp.generate("Give three tips for staying healthy.")
    print(result.text, result.stats.theoretical_speedup)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from .chat import prompt_ids as chat_prompt_ids
from .decoding import DecodeLimits, Decoding, Mode, ThreadTrace
from .engine import ModelRunner, cache_length
from .forcing import forced_program
from .layout import LayoutConfig
from .sampling import SamplingParams, sample


@dataclass
class RunStats:
    mode: str
    steps: int  # forward passes, prefill included
    tokens: int  # sampled tokens, all threads (EOS included)
    threads: int  # async chunks
    critical_path: int  # steps an unlimited-thread schedule needs
    theoretical_speedup: float  # tokens / steps
    wall_s: float
    prompt_tokens: int
    cache_tokens: int  # KV-cache length at the end: prompt + tokens fed
    tokens_per_thread: list[int]
    timeline: list[ThreadTrace]
    warnings: list[str] = field(default_factory=list)
    finish_reason: str = "eos"  # eos | length (the request's token cap) | guard (a runtime guard ended it)
    guards: list[str] = field(default_factory=list)  # runtime guards that fired (see DecodeLimits)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str  # the plain answer, reading order
    annotated: str  # storage form, with tags
    stats: RunStats
    # Teacher forcing / diagnostics: per sampled row, (step, thread index, log-prob of the token taken).
    logprobs: list[tuple[int, int, float]] = field(default_factory=list)
    # With record_logits: per step, (thread indices, logits [rows, vocab]).
    logits: list[tuple[list[int], torch.Tensor]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "annotated": self.annotated, "stats": self.stats.to_dict()}


def eos_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("the model has no EOS token id; set generation_config.eos_token_id")
    return ids


class Interpreter:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        layout_config: LayoutConfig | None = None,
        limits: DecodeLimits | None = None,
        name: str = "model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model)
        self.layout_config = layout_config or LayoutConfig()
        self.limits = limits or DecodeLimits()
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, dtype="auto", adapter=True, **kwargs) -> Interpreter:
        from .models import load_model

        loaded = load_model(name_or_path, dtype=dtype, adapter=adapter)
        layout_config = kwargs.pop("layout_config", None) or layout_config_for(loaded)
        return cls(loaded.model, loaded.tokenizer, name=loaded.name, layout_config=layout_config, **kwargs)

    # -- prompts --------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | list[dict], *, chat: bool = True) -> list[int]:
        """Token ids of a prompt: a user message or a list of chat messages, through `pasta.chat` (the model's chat
        template, or the plain-transcript fallback); with chat=False the text itself."""
        if isinstance(prompt, str) and not chat:
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        return chat_prompt_ids(self.tokenizer, prompt)

    # -- decoding -------------------------------------------------------------------------------------------------
    def start(
        self,
        prompt_ids: list[int],
        *,
        limits: DecodeLimits | None = None,
        mode: Mode = "async",
        teacher: str | None = None,
    ) -> Decoding:
        forced_main = forced_chunks = None
        if teacher is not None:
            program = forced_program(self.tokenizer, teacher, eos_id=min(self.eos_ids))
            forced_main, forced_chunks = program.main, program.chunks
        return Decoding(
            prompt_ids, self.tokenizer, eos_ids=self.eos_ids, layout_config=self.layout_config,
            limits=limits or self.limits, mode=mode, forced_main=forced_main, forced_chunks=forced_chunks,
        )

    def generate(
        self,
        prompt: str | list[dict] | list[int],
        *,
        sampling: SamplingParams | None = None,
        limits: DecodeLimits | None = None,
        mode: Mode = "async",
        teacher: str | None = None,
        chat: bool = True,
        record_logits: bool = False,
        on_step: Callable[[Decoding], None] | None = None,
    ) -> GenerationResult:
        """Decode one request. `teacher` (an annotated response) forces every thread to its tokens, so speed can
        be measured independently of what the model would write; log-probs of the forced tokens are returned."""
        ids = list(prompt) if prompt and isinstance(prompt[0], int) else self.prompt_ids(prompt, chat=chat)
        decoding = self.start(ids, limits=limits, mode=mode, teacher=teacher)
        return self.run(decoding, sampling=sampling, record_logits=record_logits, on_step=on_step)

    def run(
        self,
        decoding: Decoding,
        *,
        sampling: SamplingParams | None = None,
        record_logits: bool = False,
        on_step: Callable[[Decoding], None] | None = None,
    ) -> GenerationResult:
        """Drive a prepared `Decoding` to the end: one forward pass per step over one KV cache."""
        sampling = sampling or SamplingParams()
        streams = sampling.streams()
        cache = self.runner.new_cache()
        result_logprobs: list[tuple[int, int, float]] = []
        recorded: list[tuple[list[int], torch.Tensor]] = []
        forced = any(t.forced is not None for t in decoding.threads)
        started = time.perf_counter()
        while not decoding.done:
            inputs = decoding.next_inputs()
            logits = self.runner.forward(cache, inputs, decoding.layout.positions)
            threads = decoding.sampler_threads
            taken = decoding.advance(sample(logits, sampling, streams, threads))
            if forced:
                logprobs = torch.log_softmax(logits, dim=-1)
                for row, (thread, token) in enumerate(zip(threads, taken)):
                    result_logprobs.append((decoding.steps, thread, float(logprobs[row, token])))
            if record_logits:
                recorded.append((threads, logits.clone()))
            if on_step is not None:
                on_step(decoding)
        wall = time.perf_counter() - started
        annotated, text = decoding.stitch()
        stats = build_stats(decoding, wall, cache_length(cache))
        return GenerationResult(text=text, annotated=annotated, stats=stats, logprobs=result_logprobs, logits=recorded)


def build_stats(decoding: Decoding, wall_s: float, cache_tokens: int) -> RunStats:
    return RunStats(
        mode=decoding.mode,
        steps=decoding.steps,
        tokens=decoding.sampled,
        threads=len(decoding.threads) - 1,
        critical_path=decoding.critical_path(),
        theoretical_speedup=decoding.sampled / max(1, decoding.steps),
        wall_s=wall_s,
        prompt_tokens=len(decoding.prompt_ids),
        cache_tokens=cache_tokens,
        tokens_per_thread=[t.trace.sampled for t in decoding.threads],
        timeline=[t.trace for t in decoding.threads],
        warnings=list(decoding.warnings),
        finish_reason=decoding.finish_reason,
        guards=list(decoding.guards),
    )


def layout_config_for(loaded) -> LayoutConfig:
    """A trained Pasta model records the layout it was trained with (pasta_layout.json beside its adapter or
    weights); decoding must use the same one."""
    import json
    from pathlib import Path

    for folder in (loaded.adapter, loaded.path):
        path = Path(folder) / "pasta_layout.json" if folder else None
        if path is not None and path.is_file():
            return LayoutConfig(**json.loads(path.read_text()))
    return LayoutConfig()
