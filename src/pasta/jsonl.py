"""JSONL, in one place: reading line by line with line numbers (so every caller can say exactly where a row is bad),
complete rows and done keys for resuming (a line cut short by an interruption is skipped, and that item redone),
and a crash-safe appender that repairs a half-written last line."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


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


def read_rows(path: str | Path, *, warn: bool = False) -> list[Any]:
    """Every parseable row of a resumable output file (none if it does not exist). A bad line is what an
    interruption leaves: skipped (with a warning when `warn`), so that item is redone."""
    if not Path(path).is_file():
        return []
    rows = []
    for line_no, row in jsonl_lines(path):
        if isinstance(row, json.JSONDecodeError):
            if warn:
                log.warning("%s:%d: unreadable line ignored (interrupted write); that item will be redone", path, line_no)
            continue
        rows.append(row)
    return rows


def read_keyed(path: str | Path, key: Callable[[Any], Any], *, warn: bool = True) -> dict[Any, Any]:
    """Complete rows by key (a later line wins); rows without the key are skipped like cut lines."""
    out: dict[Any, Any] = {}
    for row in read_rows(path, warn=warn):
        try:
            out[key(row)] = row
        except (KeyError, TypeError, IndexError):
            if warn:
                log.warning("%s: a row without its key ignored; that item will be redone", path)
    return out


def done_keys(paths: Iterable[str | Path], key: str = "id",
              where: Callable[[dict], bool] | None = None) -> set[str]:
    """Keys of the rows already written to any of `paths` (optionally only rows for which `where` holds)."""
    done: set[str] = set()
    for path in paths:
        for row in read_rows(path):
            if isinstance(row, dict) and key in row and (where is None or where(row)):
                done.add(str(row[key]))
    return done


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
