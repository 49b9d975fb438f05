"""pasta.jsonl: resumable reading (cut lines skipped, later rows win, done keys) and the appender's repair."""

from __future__ import annotations

import json

from pasta.jsonl import append_jsonl, done_keys, read_keyed, read_rows


def test_an_interrupted_file_resumes_cleanly(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v": 2}\n{"id": "c", "v"')  # killed mid-write
    assert [r["id"] for r in read_rows(path)] == ["a", "b"]
    append_jsonl(path, {"id": "c", "v": 3})  # the half line is closed off, the new row is whole
    append_jsonl(path, {"id": "a", "v": 9})
    lines = path.read_text().splitlines()
    assert lines[2] == '{"id": "c", "v"' and json.loads(lines[3]) == {"id": "c", "v": 3}
    keyed = read_keyed(path, key=lambda r: r["id"])
    assert {k: r["v"] for k, r in keyed.items()} == {"a": 9, "b": 2, "c": 3}  # a later line wins


def test_done_keys_across_files_with_a_filter(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    out.write_text('{"id": 1}\n{"nokey": 2}\n')
    rej.write_bytes(b'{"id": "x", "reason": "api_error"}\n{"id": "y", "reason": "text_changed"}\n{"id": "\xff"}\n')
    assert done_keys([out]) == {"1"}
    retry = {"api_error"}
    assert done_keys([out, rej], where=lambda r: r.get("reason") not in retry) == {"1", "y"}
    assert done_keys([tmp_path / "missing.jsonl"]) == set() and read_rows(tmp_path / "missing.jsonl") == []
