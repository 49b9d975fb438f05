"""The PASTA interpreter: asynchronous (or sequential) decoding of one request with a Hugging Face causal LM.

    from pasta import Interpreter
    interp = Interpreter.from_pretrained()          # the embedded default model
    result = interp.generate("Give three tips for staying healthy.")
    print(result.text, result.stats.theoretical_speedup)
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from .chat import prompt_ids as chat_prompt_ids
from .decoding import DecodeLimits, Decoding, Mode
from .engine import SINGLE, Engine, Program, Sequence
from .forcing import forced_program
from .layout import LayoutConfig
from .results import GenerationResult, RunStats, build_stats  # noqa: F401  (re-exported: the public result types)
from .runner import ModelRunner
from .sampling import SamplingParams


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
        compile: bool = False,
        cuda_graphs: bool = False,
        decoding_defaults: dict | None = None,
        quantize: str | None = None,
    ) -> None:
        """`decoding_defaults`: the model's decoding conventions (`decoding_defaults_for`), taken by the `DecodeLimits`
        fields a request leaves None. `compile`: run forward passes through `torch.compile` (see
        `pasta.runner.ModelRunner`). `cuda_graphs`: decode steps on fixed buffers in query buckets, replayed from CUDA
        graphs on a GPU (on a CPU the same static steps run uncaptured; see `pasta.step_graphs`). `quantize="int4"`:
        4-bit weights on the CPU with any LoRA adapter kept beside them (`pasta.quantized`; load the model with
        `merge_adapter=False`, as `from_pretrained` does)."""
        if sum(map(bool, (compile, cuda_graphs, quantize))) > 1:
            raise ValueError("choose one of compile, cuda_graphs and quantize")
        self.model = model
        self.tokenizer = tokenizer
        if cuda_graphs:
            from .step_graphs import StaticStepRunner

            self.runner: ModelRunner = StaticStepRunner(model)
        else:
            self.runner = ModelRunner(model, compile=compile, quantize=quantize)
        self._engine: Engine | None = None  # built on first use; keeps its KV buffer between requests
        self._engine_lock = threading.RLock()  # one engine per interpreter: calls from several threads take turns
        self.layout_config = layout_config or LayoutConfig()
        self.limits = limits or DecodeLimits()
        self.decoding_defaults = dict(decoding_defaults or {})
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.name = name

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, *, dtype="auto", adapter=True, **kwargs) -> Interpreter:
        from .models import load_model

        loaded = load_model(name_or_path, dtype=dtype, adapter=adapter,
                            merge_adapter=kwargs.get("quantize") is None)
        layout_config = kwargs.pop("layout_config", None) or layout_config_for(loaded)
        defaults = kwargs.pop("decoding_defaults", None)
        defaults = decoding_defaults_for(loaded) if defaults is None else defaults
        return cls(loaded.model, loaded.tokenizer, name=loaded.name, layout_config=layout_config,
                   decoding_defaults=defaults, **kwargs)

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
            limits=(limits or self.limits).resolved(self.decoding_defaults), mode=mode, forced_main=forced_main,
            forced_chunks=forced_chunks,
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
        decoding: Program,
        *,
        sampling: SamplingParams | None = None,
        record_logits: bool = False,
        on_step: Callable[[Decoding], None] | None = None,
    ) -> GenerationResult:
        """Drive a prepared `Decoding` (or any engine `Program`, e.g. SoT's `PointExpansion`) to the end on the
        engine, alone: one forward pass per step over one KV cache. Log-probs of the taken tokens are recorded under
        teacher forcing. Returns the program's result (a `GenerationResult` for a `Decoding`)."""
        with self._engine_lock:
            return self._run(decoding, sampling, record_logits, on_step)

    def _run(self, decoding, sampling, record_logits, on_step):
        if self._engine is None or self._engine.runner is not self.runner:
            self._engine = Engine(self.model, SINGLE, runner=self.runner)
        engine = self._engine
        seq = Sequence(decoding, sampling=sampling or SamplingParams(), record_logits=record_logits,
                       record_logprobs=decoding.forced)
        engine.add(seq)
        try:
            while not seq.finished:
                engine.step()
                if on_step is not None and seq.status in ("running", "done"):
                    on_step(decoding)
        finally:
            if not seq.finished:  # interrupted (an exception in on_step, KeyboardInterrupt): free its pages
                engine.cancel(seq)
        if seq.status == "failed":
            raise seq.error
        return seq.result


def layout_config_for(loaded) -> LayoutConfig:
    """A trained Pasta model records the layout it was trained with (pasta_layout.json beside its adapter or
    weights); decoding must use the same one."""
    import json

    path = _recorded_file(loaded, "pasta_layout.json")
    return LayoutConfig(**json.loads(path.read_text())) if path else LayoutConfig()


def _recorded_file(loaded, name: str):
    """A file a trained Pasta model records beside its adapter (first) or its weights, or None."""
    from pathlib import Path

    for folder in (loaded.adapter, loaded.path):
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


# What pasta_decoding.json may record: DecodeLimits fields a request leaves None take these values.
DECODING_CONVENTIONS: dict[str, type | tuple[type, ...]] = {
    "outline_topics": bool, "outline_terminated": bool, "outline_no_repeat": bool,
    "presence_penalty": (int, float), "frequency_penalty": (int, float), "draft_tokens": int}


def decoding_defaults_for(loaded) -> dict:
    """The decoding conventions a trained Pasta model records (pasta_decoding.json beside its adapter or weights,
    written by `pasta train sft`): e.g. {"outline_topics": true} for a model trained on outlined answers (annotator
    v5). `DecodeLimits` fields a request leaves None take these values."""
    path = _recorded_file(loaded, "pasta_decoding.json")
    return {} if path is None else read_decoding_conventions(path)


def read_decoding_conventions(path) -> dict:
    """A pasta_decoding.json file, checked (`check_decoding_conventions`)."""
    import json

    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return check_decoding_conventions(found, str(path))


def check_decoding_conventions(found, where: str) -> dict:
    """`found` if it is a valid pasta_decoding.json object, else a ValueError that starts with `where`."""
    if not isinstance(found, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(found).__name__}")
    for key, value in found.items():
        kind = DECODING_CONVENTIONS.get(key)
        if kind is None:
            raise ValueError(f"{where}: unknown decoding convention {key!r} (known: {sorted(DECODING_CONVENTIONS)})")
        number = kind != bool
        if not isinstance(value, kind) or (number and isinstance(value, bool)):
            what = "true or false" if kind is bool else "an integer" if kind is int else "a number"
            raise ValueError(f"{where}: {key} must be {what}, got {value!r}")
        try:  # every convention is a DecodeLimits field: its own validation (e.g. a penalty's range) applies
            DecodeLimits(**{key: value})
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return found
