"""Reading JSONL files line by line, with line numbers, so every caller can say exactly where a row is bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


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


def open_append(path: str | Path) -> TextIO:
    """Open a JSONL file for appending rows. If an interruption left a partial last line, the next row starts on a
    fresh line, so it stays parseable (readers skip the cut line and redo that item)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_newline = False
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            f.seek(-1, 2)
            needs_newline = f.read(1) != b"\n"
    f = path.open("a", encoding="utf-8")
    if needs_newline:
        f.write("\n")
    return f


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append one row and flush it, so a crash loses at most that row."""
    with open_append(path) as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
