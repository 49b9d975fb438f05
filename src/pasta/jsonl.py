"""Reading JSONL files line by line, with line numbers, so every caller can say exactly where a row is bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, Any | json.JSONDecodeError]]:
    """(1-based line number, parsed value — or the JSONDecodeError) for every non-blank line. Callers decide
    whether a bad line is skipped (data) or fatal (a prompt set)."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, exc
