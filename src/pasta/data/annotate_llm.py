"""Annotation by a strong LLM behind any OpenAI-compatible endpoint (the paper's Stage-1 data recipe).

The model gets a description of Pasta-Lang and seven hand-written annotated examples
(`pasta/data/examples/*.txt`), then one instruction and its original response, and must return that
response with tags inserted. `finalize_annotation` accepts or rejects the answer and rewrites the
`tokens` attributes from real counts. Requests run concurrently (asyncio); the output is append-only
JSONL, flushed per row, and a rerun skips every id already written (accepted or rejected).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pasta import lang
from pasta.data.finalize import (
    AnnotateStats,
    AnnotationRejected,
    AnnotationStore,
    FinalizeConfig,
    TokenCounter,
    approx_token_count,
    finalize_annotation,
    has_pasta_tags,
)
from pasta.data.sources import Example
from pasta.openai_client import OpenAIClient, OpenAIError

__all__ = [
    "FewShotExample",
    "LLMAnnotatorConfig",
    "SYSTEM_PROMPT",
    "load_fewshot_examples",
    "build_messages",
    "annotate_llm",
    "aannotate_llm",
]

SYSTEM_PROMPT = """\
You add Pasta-Lang annotations to answers written by an AI assistant. The annotations let a decoder \
write independent parts of an answer in parallel.

Pasta-Lang has three tags:
- <promise topic="..." tokens="N"/> marks a place where an independent chunk of the answer goes. \
`topic` is a short summary of the chunk (2 to 6 words); `tokens` is your estimate of the chunk's \
length in tokens, a multiple of 10.
- <async>...</async> wraps the chunk itself. It comes immediately after its promise tag.
- <sync/> marks the point where the text that follows needs the content of the chunks before it.

A chunk is independent when it could be written knowing only the text before its promise and the \
topics of the earlier promises, without seeing the content of any other chunk. Good chunks are \
items of a list of tips, reasons or options, separate sections of an essay, the two sides of a \
comparison, or separate parts of an explanation. Steps that build on the previous step, and \
sentences that refer to earlier chunks ("these", "as shown above", a summary or conclusion), are \
not independent: keep them in the main text, after a <sync/> when they need the chunks.

Rules:
1. Return the ORIGINAL response exactly, character for character, with tags inserted. Do not add, \
remove, reword, fix or reformat anything, and keep all line breaks.
2. Every <promise .../> is immediately followed by <async>...</async>. Never put a tag inside an \
<async> body.
3. Put <sync/> after the last chunk of a group, before any text that comes after it.
4. Chunks should be substantial (a sentence or more). Annotate only where it helps. If nothing in \
the response is independent (for example a short or strictly step-by-step answer), return it \
unchanged with no tags.
5. Reply with the annotated response only: no explanation, no code fences around it.

Examples follow. Each shows an instruction, the annotated response you should produce, and why.
"""

_SECTION_RE = re.compile(r"^=== (\w+) ===$", re.MULTILINE)


@dataclass(frozen=True)
class FewShotExample:
    name: str
    prompt: str
    annotated: str
    why: str = ""

    @property
    def response(self) -> str:
        return lang.strip_tags(self.annotated)


def _parse_example_file(name: str, text: str) -> FewShotExample:
    """Sections `=== prompt ===`, `=== annotated ===`, optional `=== why ===` (hand-editable text)."""
    marks = list(_SECTION_RE.finditer(text))
    sections: dict[str, str] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(text)
        body = text[m.end() + 1 : end]
        sections[m.group(1)] = body[:-1] if body.endswith("\n") else body  # the newline before the next mark
    missing = {"prompt", "annotated"} - sections.keys()
    if missing:
        raise ValueError(f"example {name}: missing section(s) {sorted(missing)}")
    return FewShotExample(name, sections["prompt"], sections["annotated"], sections.get("why", "").strip())


def load_fewshot_examples(folder: str | Path | None = None,
                          count_tokens: TokenCounter = approx_token_count) -> list[FewShotExample]:
    """The hand-written examples, in file-name order, with `tokens` recomputed the same way as the
    training data (so the annotator sees consistent lengths). Raises if any example is invalid."""
    root = Path(folder) if folder is not None else resources.files("pasta.data").joinpath("examples")
    files = sorted((p for p in root.iterdir() if p.name.endswith(".txt")), key=lambda p: p.name)
    out = []
    for path in files:
        ex = _parse_example_file(path.name, path.read_text(encoding="utf-8"))
        canonical = finalize_annotation(ex.response, ex.annotated, count_tokens)
        out.append(FewShotExample(ex.name, ex.prompt, canonical, ex.why))
    if not out:
        raise FileNotFoundError(f"no *.txt few-shot examples in {root}")
    return out


def _format_task(prompt: str, response: str) -> str:
    return f"[INSTRUCTION]\n{prompt}\n[RESPONSE TO ANNOTATE]\n{response}\n[END]"


def build_messages(prompt: str, response: str, examples: list[FewShotExample]) -> list[dict[str, str]]:
    """System: the language and the examples; user: one instruction and its response."""
    shots = []
    for k, ex in enumerate(examples, start=1):
        shot = f"### Example {k}\n{_format_task(ex.prompt, ex.response)}\n[ANNOTATED RESPONSE]\n{ex.annotated}\n[END]"
        if ex.why:
            shot += f"\n[WHY]\n{ex.why}"
        shots.append(shot)
    system = SYSTEM_PROMPT + "\n" + "\n\n".join(shots)
    user = (f"{_format_task(prompt, response)}\n\nReturn the response above with Pasta-Lang tags inserted "
            "(the text between [RESPONSE TO ANNOTATE] and [END], unchanged), and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _clean_reply(text: str) -> str:
    # Models sometimes echo the frame markers of the examples around their answer.
    text = re.sub(r"^\s*\[ANNOTATED RESPONSE\]\n", "", text)
    return re.sub(r"\n\[END\]\s*$", "", text)


@dataclass(frozen=True)
class LLMAnnotatorConfig:
    model: str
    concurrency: int = 8
    temperature: float = 0.0
    max_tokens: int | None = None  # None: the server's default (usually the rest of the context)
    extra_params: dict[str, Any] = field(default_factory=dict)  # passed through to /chat/completions
    finalize: FinalizeConfig = FinalizeConfig()
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model is required")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def annotator(self) -> str:
        return f"openai:{self.model}"


async def _annotate_one(ex: Example, client: OpenAIClient, cfg: LLMAnnotatorConfig,
                        shots: list[FewShotExample], count_tokens: TokenCounter) -> tuple[str | None, AnnotationRejected | None, str | None]:
    """(annotated, None, raw) or (None, rejection, raw)."""
    if has_pasta_tags(ex.response):  # no request: no annotation could be lossless
        return None, AnnotationRejected("source_has_tags", "tag-like text in the response"), None
    try:
        reply = await client.achat(build_messages(ex.prompt, ex.response, shots), cfg.model,
                                   temperature=cfg.temperature, max_tokens=cfg.max_tokens, **cfg.extra_params)
        choice = reply["choices"][0]
        raw = choice["message"].get("content") or ""
    except OpenAIError as exc:
        return None, AnnotationRejected("api_error", str(exc)[:500]), None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        return None, AnnotationRejected("api_error", f"unexpected reply shape: {exc!r}"), None
    if choice.get("finish_reason") == "length":
        return None, AnnotationRejected("truncated", "finish_reason=length"), raw
    try:
        return finalize_annotation(ex.response, _clean_reply(raw), count_tokens, cfg.finalize), None, raw
    except AnnotationRejected as rej:
        return None, rej, raw


async def aannotate_llm(
    examples: Iterable[Example],
    client: OpenAIClient,
    config: LLMAnnotatorConfig,
    out_path: str | Path,
    rejects_path: str | Path,
    *,
    count_tokens: TokenCounter = approx_token_count,
    fewshot: list[FewShotExample] | None = None,
) -> AnnotateStats:
    shots = fewshot if fewshot is not None else load_fewshot_examples(count_tokens=count_tokens)
    stats = AnnotateStats()
    with AnnotationStore(out_path, rejects_path) as store:
        pending: list[Example] = []
        queued: set[str] = set()
        for ex in examples:
            stats.total += 1
            if ex.id in store.done or ex.id in queued:
                stats.skipped_done += 1
                continue
            queued.add(ex.id)
            pending.append(ex)

        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc="annotate", unit="ex", disable=not config.progress)
        queue: asyncio.Queue[Example] = asyncio.Queue()
        for ex in pending:
            queue.put_nowait(ex)

        async def worker() -> None:
            while True:
                try:
                    ex = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                annotated, rejection, raw = await _annotate_one(ex, client, config, shots, count_tokens)
                # Writes happen between awaits on one event loop: rows never interleave.
                if annotated is not None:
                    store.accept(ex, annotated, config.annotator)
                    stats.accepted += 1
                    stats.annotated += "<promise" in annotated
                else:
                    assert rejection is not None
                    store.reject(ex, rejection.reason, rejection.detail, config.annotator, raw)
                    stats.reject(rejection.reason)
                bar.update(1)
                bar.set_postfix(ok=stats.accepted, rej=stats.rejected, refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(config.concurrency, max(1, len(pending))))))
        finally:
            bar.close()
    return stats


def annotate_llm(
    examples: Iterable[Example],
    client: OpenAIClient,
    model: str,
    out_path: str | Path,
    rejects_path: str | Path,
    concurrency: int = 8,
    *,
    count_tokens: TokenCounter = approx_token_count,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    extra_params: dict[str, Any] | None = None,
    finalize: FinalizeConfig = FinalizeConfig(),
    fewshot: list[FewShotExample] | None = None,
    progress: bool = True,
) -> AnnotateStats:
    """Annotates `examples` with `model`; appends accepted rows to `out_path`, rejects to `rejects_path`.

    Output rows: {id, prompt, response, annotated, source, annotator}; reject rows: {id, source,
    annotator, reason, detail, raw}. Resumable: ids already in either file are skipped (except
    `api_error` rejects, which are retried)."""
    config = LLMAnnotatorConfig(model=model, concurrency=concurrency, temperature=temperature,
                                max_tokens=max_tokens, extra_params=dict(extra_params or {}),
                                finalize=finalize, progress=progress)

    async def run() -> AnnotateStats:
        try:
            return await aannotate_llm(examples, client, config, out_path, rejects_path,
                                       count_tokens=count_tokens, fewshot=fewshot)
        finally:
            await client.aclose()  # its connections belong to this event loop

    return asyncio.run(run())
