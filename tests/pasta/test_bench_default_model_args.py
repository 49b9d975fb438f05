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


def test_rows_record_the_penalties_and_the_original_decodes_without_them():
    """A row says which penalties its answer was decoded with (the model's recorded value here); the original model,
    the user's alternative, decodes as it does by itself."""
    from tiny import ByteTokenizer, tiny_model

    from pasta.decoding import DecodeLimits
    from pasta.interpreter import Interpreter

    bench = _bench()
    tok = ByteTokenizer()
    pasta = Interpreter(tiny_model("llama", seed=1), tok, decoding_defaults={"presence_penalty": 1.5})
    original = Interpreter(tiny_model("llama", seed=1), tok)  # the same weights, no recorded penalty
    limits = DecodeLimits(max_new_tokens=30, max_thread_tokens=30)
    row = bench.measure(0, "write words", pasta, original, limits, sequential=False)
    assert (row["presence_penalty"], row["frequency_penalty"]) == (1.5, 0.0)
    alone = original.generate(original.prompt_ids("write words"), limits=limits)
    assert row["original"]["output"] == alone.text != row["output"]
    explicit = bench.measure(0, "write words", original, original, DecodeLimits(
        max_new_tokens=30, max_thread_tokens=30, presence_penalty=1.5), sequential=False)
    assert explicit["output"] == row["output"] and explicit["original"]["output"] == alone.text
    assert bench._decoded_with([row, dict(row)]) == {"outline_terminated": False, "outline_no_repeat": False,
                                                      "outline_blocked": 0,
                                                      "presence_penalty": 1.5, "frequency_penalty": 0.0,
                                                      "draft_promises": True, "draft_tokens": 0, "drafted_tokens": 0,
                                                      "drafted_plain_tokens": 0}
    assert bench._decoded_with([row, {}])["presence_penalty"] == "mixed"  # a row from before penalties existed: 0


def test_worker_shards_split_what_is_left_to_decode():
    shards = _bench()._shards
    chosen = list(range(100, 200))
    assert shards(chosen, set(), 2) == [list(range(100, 150)), list(range(150, 200))]
    # 100-139 done (a 40-prompt run extended to 100): the 60 left are split 30/30, not 10/50
    assert shards(chosen, set(range(100, 140)), 2) == [list(range(140, 170)), list(range(170, 200))]
    # done rows inside a range stay in it (the worker is handed them); every prompt left is in exactly one range
    left = [i for i in chosen if i % 3]
    got = shards(chosen, set(chosen) - set(left), 3)
    assert len(got) == 3 and sorted(i for s in got for i in s if i in left) == left
    assert all(s == list(range(s[0], s[-1] + 1)) for s in got)
    assert shards(chosen, set(chosen), 2) == shards(chosen, set(), 2)  # all done: the workers only re-report


def test_outline_bans_count_beside_the_guards_and_in_their_bound():
    """A fork where the outline ban took the model's first choice is counted (promise_answers.outline_blocked), and
    the bound that counts bans as guards sees it even where no guard fired; a plain answer's ban is no fork's."""
    from pasta.eval.answer_stats import aggregate

    bench = _bench()

    def row(index, promises, guards=(), blocked=()):
        stats = {"complete": True, "finish_reason": "eos", "promises": promises, "guards": list(guards),
                 "reaches_sync": True,
                 "repeated_topics": 0, "duplicate_chunks": 0, "well_formed": True, "distinct_topics": promises,
                 "theoretical_speedup": 1.5, "repetition": 0.1, "plain_tokens": 10, "steps": 8,
                 "empty_outline_items": 0, "repeated_outline_items": 0}
        return {"id": str(index), "pasta": stats, "outline_blocked": list(blocked)}  # bans listed as bench rows do

    rows = [row(0, 3, blocked=["'Overview: A; ' + 'A'", "e"]), row(1, 2, guards=["outline_done: x"]),
            row(2, 2, guards=["outline_repeat: y"], blocked=["b", "c"]), row(3, 4), row(4, 0, blocked=["d"])]
    rows[3]["pasta"]["outline_blocked"] = 3  # ... or count them in their stats (pasta.eval answer stats)
    rows.append(row(5, 2))
    summary = {**bench._decoded_with(rows), **aggregate(rows)}
    p = summary["promise_answers"]
    assert summary["outline_blocked"] == 5  # every ban listed, the plain answer's too
    # forks counted once however many bans they had: 3 of 5 banned, 4 of 5 banned or guarded
    assert (p["n"], p["guards_fired"], p["outline_blocked"], p["guards_or_outline_blocked"]) == (5, 0.4, 0.6, 0.8)
    checked = bench.targets(summary)
    assert checked["guards_fired_promise_answers"] == {"value": 0.4, "met": False}
    assert checked["guards_or_outline_blocked_promise_answers"] == {"value": 0.8, "met": False}
