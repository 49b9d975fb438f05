"""Reading JSONL files line by line, with line numbers, so every caller can say exactly where a row is bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, Any | json.JSONDecodeError]]:
    """(1-based line number, parsed value — or the JSONDecodeError) for every non-blank line. Callers decide
    whether a bad line is skipped (data) or fatal (a prompt set)."""
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row (with its number), not a crash.
    with _open_file(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, json.JSONDecodeError(f"not UTF-8 text (byte {exc.start})",
                                                    raw.decode("utf-8", "replace"), exc.start)
                continue
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, exc


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """One JSON document; every failure is a ValueError naming the file (and the line for bad JSON)."""
    with _open_file(path, "rb", what) as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected a {what}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); expected a {what}") from None


def _open_file(path: str | Path, mode: str, what: str = "JSONL file"):
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; expected a {what}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected a {what})")
    return path.open(mode)


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
