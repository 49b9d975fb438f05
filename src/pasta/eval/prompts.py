"""Evaluation prompt sets: the 805 AlpacaEval instructions, or any JSONL / JSON file.

File rows: an object with `instruction` (or `prompt`; an Alpaca-style non-empty `input` is appended), and
optionally `id` and `dataset`; in a JSON file a plain string is also a row. Ids: the row's `id`, else a hash
of the instruction (so a reordered or extended file keeps resuming correctly); a repeated id gets `~k`.
A bad row is an error naming the file and the line (JSONL) or item (JSON): an evaluation set should be exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..jsonl import jsonl_lines, read_json

__all__ = ["PromptItem", "load_prompts", "ALPACA_EVAL"]

ALPACA_EVAL = "alpaca_eval"


@dataclass(frozen=True)
class PromptItem:
    id: str
    instruction: str
    dataset: str


def _hash_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _item(row: Any, where: str, default_dataset: str) -> tuple[str | None, str, str]:
    if isinstance(row, str):
        row = {"instruction": row}
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with 'instruction' (or 'prompt'), got {type(row).__name__}")
    text = row.get("instruction", row.get("prompt"))
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: missing or empty 'instruction'/'prompt' (a non-empty string)")
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    rid = row.get("id")
    if rid is not None and not isinstance(rid, (str, int)):
        raise ValueError(f"{where}: 'id' must be a string or an integer")
    dataset = row.get("dataset", default_dataset)
    return (None if rid is None else str(rid)), text, str(dataset)


def load_prompts(spec: str, limit: int | None = None) -> list[PromptItem]:
    """`spec`: 'alpaca_eval' or a path to a .jsonl / .json file. `limit`: the first N prompts."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    rows: list[tuple[str | None, str, str]] = []
    if spec == ALPACA_EVAL:
        from ..data.sources import ALPACA_EVAL_FILE, _eval_framework_dir

        path = _eval_framework_dir() / ALPACA_EVAL_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        for k, row in enumerate(data):
            _, text, dataset = _item(row, f"{path}: item {k}", "alpaca_eval")
            rows.append((f"alpaca_eval:{k}", text, dataset))
    else:
        path = Path(spec)
        if path.is_dir():
            raise ValueError(f"prompt set {spec!r}: is a folder; give 'alpaca_eval' or a .jsonl / .json file of prompts")
        if not path.is_file():
            raise FileNotFoundError(f"prompt set {spec!r}: not 'alpaca_eval' and no such file")
        stem = path.stem
        if path.suffix == ".jsonl":
            for line_no, row in jsonl_lines(path):
                if isinstance(row, json.JSONDecodeError):
                    raise ValueError(f"{path}:{line_no}: invalid JSON ({row.msg})")
                rows.append(_item(row, f"{path}:{line_no}", stem))
        else:
            data = read_json(path, "JSON list of prompts")
            if isinstance(data, dict):
                data = data.get("prompts", data.get("data"))
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of prompts (or an object with a 'prompts' list)")
            for k, row in enumerate(data):
                rows.append(_item(row, f"{path}: item {k}", stem))
    if not rows:
        raise ValueError(f"prompt set {spec!r} is empty")
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for rid, text, dataset in rows:
        base = rid if rid is not None else _hash_id(text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        items.append(PromptItem(base if n == 0 else f"{base}~{n}", text, dataset))
        if limit is not None and len(items) >= limit:
            break
    return items
