"""bench/default_model.py --workers: each worker gets the caller's arguments minus the ones it sets itself; a flag
(no value) is dropped alone, never with the option after it (the bug: `--json --limit 100` left a stray `100`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_default_model", ROOT / "bench" / "default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worker_arguments_drop_options_with_values_and_flags_alone():
    bench = _bench()
    argv = ["--json", "--limit", "100", "--max-new-tokens", "512", "--workers=2", "--out", "x.jsonl",
            "--outline-topics", "--summary", "s.json", "--threads", "1"]
    kept = bench._without(argv, ("--workers", "--offset", "--limit", "--out", "--summary"), flags=("--json",))
    assert kept == ["--max-new-tokens", "512", "--outline-topics", "--threads", "1"]
    # `--x=v` and `--x v` alike; a value that looks like an option name is still a value
    assert bench._without(["--out=a", "--offset", "--json", "--dtype", "bfloat16"], ("--out", "--offset")) == \
        ["--dtype", "bfloat16"]
