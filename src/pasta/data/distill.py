"""Self-distillation: the base model's own answers to training prompts, as Stage-1 targets.

A 135M model fine-tuned on another model's answers (ChatGPT's, in ShareGPT) learns a distribution it cannot
follow, and its loops get worse. Annotating the model's *own* answers keeps the targets in its distribution: the
fine-tune only has to learn where the tags go, and quality can be judged against the same model decoding
sequentially. Only answers that ended by EOS within the budget and do not repeat themselves are kept, so the
teacher is the base model at its best (a light form of rejection sampling).

    from pasta.data.distill import DistillConfig, distill
    stats = distill(prompts, "data/distill.jsonl", DistillConfig(max_new_tokens=400))

Rows: {id, prompt, response, source, finish ("eos" | "length"), tokens, repetition}. Every generated answer is
written (a rerun skips prompts already done), the filter is applied when the rows are read back
(`kept_rows`), so a stricter filter never needs a new generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..eval.answer_stats import repetition_rate
from ..jsonl import append_jsonl, jsonl_lines
from .sources import Example

__all__ = ["DistillConfig", "DistillStats", "choose_prompts", "distill", "kept_rows", "instruction_like", "list_like", "mix_prompts", "select_prompts", "write_kept"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    max_new_tokens: int = 400
    max_prompt_tokens: int = 200
    max_batch: int = 32  # requests decoded together (continuous batching over one paged cache)
    dtype: str = "bfloat16"
    max_repetition: float = 0.1  # kept answers repeat at most this fraction of their word 4-grams

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_prompt_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"max_repetition must be in [0, 1], got {self.max_repetition}")


@dataclass
class DistillStats:
    prompts: int = 0
    skipped_done: int = 0
    too_long: int = 0
    generated: int = 0
    finished: int = 0  # ended by EOS

    def summary(self) -> str:
        return (f"{self.prompts} prompts, {self.skipped_done} already done, {self.too_long} prompts too long, "
                f"{self.generated} generated ({self.finished} ended by EOS)")


_WORD_RE = re.compile(r"[A-Za-z]+")


def _looks_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.95


def select_prompts(examples: Iterable[Example], *, min_words: int = 4, max_chars: int = 1200) -> Iterator[Example]:
    """Distinct English prompts of a reasonable size from a source (the responses are ignored)."""
    seen: set[str] = set()
    for ex in examples:
        prompt = ex.prompt.strip()
        key = " ".join(prompt.split()).casefold()
        if key in seen or len(prompt) > max_chars or len(_WORD_RE.findall(prompt)) < min_words:
            continue
        if not _looks_english(prompt):
            continue
        seen.add(key)
        yield ex


_LIST_LIKE_RE = re.compile(
    r"\b(?:tips|ways|ideas|examples|reasons|benefits|advantages|disadvantages|pros and cons|suggest\w*|"
    r"recommend\w*|types of|kinds of|features|factors|strategies|list(?: of)?|top \d+|"
    r"(?:\d+|three|four|five|six|seven|eight|ten) (?:\w+ )?(?:things|ways|tips|ideas|reasons|examples|names|questions))\b",
    re.IGNORECASE,
)
_CODE_RE = re.compile(r"```|\b(?:code|function|script|python|javascript|java|sql|html|css|error)\b", re.IGNORECASE)


_INSTRUCTION_RE = re.compile(
    r"^(?:what|how|why|which|who|where|when|can you|could you|give|list|name|suggest|recommend|write|describe|"
    r"explain|tell me|share|provide|create|generate|compare|summari[sz]e)\b", re.IGNORECASE)
_TECH_RE = re.compile(r"```|\b(?:code|function|script|python|javascript|java|sql|html|css|error|api|regex|excel|"
                      r"c\+\+|react|typescript|json)\b", re.IGNORECASE)


def instruction_like(prompt: str, max_words: int = 40) -> bool:
    """A short, self-contained, one-line question or instruction a small model can answer (no code, no context
    from an earlier turn). Most ShareGPT first turns are long, technical or refer to a conversation elsewhere,
    and a 135M model answers them with loops."""
    prompt = prompt.strip()
    return (len(prompt.split()) <= max_words and "\n" not in prompt and bool(_INSTRUCTION_RE.match(prompt))
            and not _TECH_RE.search(prompt))


def list_like(example: Example) -> bool:
    """An example whose answer is likely to have independent parts: its reference response (when the source has
    one, e.g. ShareGPT's) has list items or sections the structural annotator would fork, or else its prompt asks
    for tips, examples, reasons, ..."""
    if example.response.strip():
        from .annotate_structural import annotate_structural

        return "<promise" in annotate_structural(example.response)
    return bool(_LIST_LIKE_RE.search(example.prompt)) and not _CODE_RE.search(example.prompt)


def mix_prompts(examples: list[Example], limit: int, list_share: float) -> list[Example]:
    """`limit` prompts of which about `list_share` are list-like (in their given order), the rest not: plain answers
    teach the model when not to fork."""
    if not 0 <= list_share <= 1:
        raise ValueError(f"list_share must be in [0, 1], got {list_share}")
    flags = [list_like(e) for e in examples]
    listy = [e for e, f in zip(examples, flags) if f]
    other = [e for e, f in zip(examples, flags) if not f]
    n_list = min(len(listy), round(limit * list_share))
    chosen_list, chosen_other = listy[:n_list], other[: limit - n_list]
    if len(chosen_list) + len(chosen_other) < limit:  # too few plain prompts: more list-like ones
        chosen_list = listy[: limit - len(chosen_other)]
    # Interleaved, so any prefix of the run (an interrupted generation) has the same mix.
    out, a, b = [], 0, 0
    while a < len(chosen_list) or b < len(chosen_other):
        if b >= len(chosen_other) or (a < len(chosen_list) and a * len(chosen_other) <= b * len(chosen_list)):
            out.append(chosen_list[a])
            a += 1
        else:
            out.append(chosen_other[b])
            b += 1
    return out


def _row_id(prompt: str) -> str:
    return "distill-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _done_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {row["id"] for _, row in jsonl_lines(path) if isinstance(row, dict) and "id" in row}


def choose_prompts(examples: Iterable[Example], *, instructions_only: bool = False, shuffle_seed: int | None = None,
                   limit: int | None = None, list_share: float | None = None) -> list[Example]:
    """The prompts to answer: `select_prompts`, optionally only instruction-like ones, shuffled with a seed, then the
    first `limit` (with `list_share`: that share list-like, interleaved, see `mix_prompts`)."""
    import random

    chosen = list(select_prompts(examples))
    if instructions_only:
        chosen = [e for e in chosen if instruction_like(e.prompt)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(chosen)
    if limit is not None:
        chosen = mix_prompts(chosen, limit, list_share) if list_share is not None else chosen[:limit]
    return chosen


def pending_prompts(examples: Iterable[Example], done: set[str], row_id: Callable[[str], str],
                    prompt_ids: Callable[[str], list[int]], max_prompt_tokens: int,
                    stats: DistillStats) -> list[tuple[Example, list[int]]]:
    """The examples still to answer, with their prompt ids: not answered before (`done` row ids), prompt not too
    long; counted in `stats`."""
    todo = []
    for ex in examples:
        stats.prompts += 1
        if row_id(ex.prompt) in done:
            stats.skipped_done += 1
            continue
        ids = prompt_ids(ex.prompt)
        if len(ids) > max_prompt_tokens:
            stats.too_long += 1
            continue
        todo.append((ex, ids))
    return todo


def distill(
    examples: Iterable[Example],
    out_path: str | Path,
    config: DistillConfig = DistillConfig(),
    *,
    model: str | None = None,
    progress: bool = True,
) -> DistillStats:
    """Answer every prompt with the base model (greedy, no adapter) and append one row per answer to `out_path`.

    Plain batched decoding (Hugging Face `generate`, left padding, prompts of similar length together): these are
    ordinary answers with no Pasta-Lang, and per-sequence attention keeps large batches cheap."""
    import torch
    from tqdm.auto import tqdm

    from ..interpreter import Interpreter
    from ..models import load_model

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out)
    loaded = load_model(model, dtype=config.dtype, adapter=False)
    interp = Interpreter(loaded.model, loaded.tokenizer, name=loaded.name)
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(interp.eos_ids)
    stats = DistillStats()
    todo = pending_prompts(examples, done, _row_id, interp.prompt_ids, config.max_prompt_tokens, stats)
    # Batches of similar prompt lengths (little padding), taken in the given order of first appearance.
    batches = [todo[i : i + config.max_batch] for i in range(0, len(todo), config.max_batch)]
    bar = tqdm(total=len(todo), desc="distill", unit="answer", disable=not progress)
    for batch in batches:
        batch = sorted(batch, key=lambda item: len(item[1]))
        width = len(batch[-1][1])
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch])
        with torch.inference_mode():
            generated = loaded.model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=config.max_new_tokens,
                do_sample=False, eos_token_id=sorted(interp.eos_ids), pad_token_id=pad,
            )
        for (ex, _), row_ids in zip(batch, generated[:, width:].tolist()):
            finished = any(t in interp.eos_ids for t in row_ids)
            answer = row_ids[: next((k for k, t in enumerate(row_ids) if t in interp.eos_ids), len(row_ids))]
            text = tokenizer.decode(answer, skip_special_tokens=False)  # as the interpreter shows it
            finish = "eos" if finished else "length"
            row = {
                "id": _row_id(ex.prompt), "prompt": ex.prompt, "response": text.strip(),
                "source": f"self-distill:{ex.source}", "model": loaded.name, "finish": finish,
                "tokens": len(answer), "repetition": round(repetition_rate(text), 4),
            }
            append_jsonl(out, row)
            stats.generated += 1
            stats.finished += finish == "eos"
        bar.update(len(batch))
    bar.close()
    return stats


def kept_rows(path: str | Path, config: DistillConfig = DistillConfig()) -> list[dict]:
    """The distilled rows worth training on: ended by EOS, non-empty, repeating little."""
    rows = []
    for line_no, row in jsonl_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("response"), str):
            log.warning("%s:%d: not a distilled row; skipped", path, line_no)
            continue
        if row.get("finish") == "eos" and row["response"].strip() and row.get("repetition", 1.0) <= config.max_repetition:
            rows.append(row)
    return rows


def write_kept(path: str | Path, out_path: str | Path, config: DistillConfig = DistillConfig()) -> int:
    """`kept_rows` as a prompt/response JSONL any `--source` reads (e.g. `pasta annotate --source`)."""
    rows = kept_rows(path, config)
    with open(out_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
