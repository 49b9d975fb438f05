"""Per-answer statistics and their aggregation: the honest measurement behind every speedup figure."""

from __future__ import annotations

import math

import pytest
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.eval.answer_stats import aggregate, answer_stats, near_duplicate, repetition_rate
from pasta.interpreter import Interpreter
from pasta.eval.stats import wilson_interval

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def interp():
    return Interpreter(tiny_model("llama"), TOK)


def test_repetition_rate_closed_forms():
    assert repetition_rate("") == 0.0
    assert repetition_rate("one two three four five six") == 0.0
    # "a b c d" repeated 3 times: 12 words, 9 four-grams, 4 distinct -> 5/9 repeated.
    assert repetition_rate("a b c d a b c d a b c d") == pytest.approx(5 / 9)
    assert repetition_rate("A, b. C d! a B c D") == repetition_rate("a b c d a b c d")  # case and punctuation
    assert repetition_rate("loop " * 200) > 0.98


def test_near_duplicate():
    assert near_duplicate("1. Billy Crystal: he started on Broadway.", "3. Billy Crystal: he started on Broadway!")
    assert not near_duplicate("Sleep eight hours every night.", "Eat vegetables at every meal.")
    assert near_duplicate("", "")


def test_stats_of_a_good_answer(interp):
    teacher = ('Tips:\n<promise topic="Sleep" tokens="10"/><async>Sleep eight hours.</async>\n'
               '<promise topic="Food" tokens="10"/><async>Eat vegetables daily.</async>\n<sync/>Done.')
    result = interp.generate(interp.prompt_ids("q"), teacher=teacher)
    s = answer_stats(result, TOK)
    assert s.complete and s.finish_reason == "eos" and s.well_formed
    assert (s.promises, s.distinct_topics, s.repeated_topics, s.duplicate_chunks) == (2, 2, 0, 0)
    assert s.reaches_sync is True
    assert s.plain_tokens == len(result.text.encode())  # byte tokenizer: one token per byte, tags excluded
    assert s.theoretical_speedup == pytest.approx((s.plain_tokens + 1) / result.stats.steps)
    assert s.theoretical_speedup < result.stats.tokens / result.stats.steps  # tags no longer count as speed


def test_stats_of_a_looping_answer(interp):
    body = "<async>Billy Crystal: he started his career on Broadway.</async>\n"
    teacher = "Actors:\n" + ('<promise topic="Billy Crystal" tokens="20"/>' + body) * 3
    result = interp.generate(interp.prompt_ids("q"), teacher=teacher)
    s = answer_stats(result, TOK)
    assert (s.promises, s.distinct_topics, s.repeated_topics, s.duplicate_chunks) == (3, 1, 2, 2)
    assert s.reaches_sync is True  # no <sync/>, but EOS with every chunk closed: an implicit sync at the end
    plain = interp.generate(interp.prompt_ids("q"), teacher="No tags here.")
    assert answer_stats(plain, TOK).reaches_sync is None


def test_refused_promises_count_as_written():
    from tiny import drive_script

    from pasta.interpreter import GenerationResult, build_stats

    # A scripted model: the main thread repeats its topic, the chunk writes "b".
    decoding = drive_script('A<promise topic="x" tokens="5"/><promise topic="x" tokens="5"/>Done.', ["b</async>"] * 2,
                            tokenizer=TOK)
    annotated, text = decoding.stitch()
    result = GenerationResult(text=text, annotated=annotated, stats=build_stats(decoding, 0.0, 0))
    s = answer_stats(result, TOK)
    assert (s.promises, s.refused_promises, s.repeated_topics, s.distinct_topics) == (1, 1, 1, 1)
    assert not s.well_formed and s.complete


def test_tags_written_inside_a_chunk_are_not_promises(interp):
    teacher = ('Steps:\n<promise topic="Install" tokens="10"/><async>Install:\n<promise topic="Install" tokens="9"/>'
               '\n<promise topic="Install" tokens="9"/></async>\n<sync/>Done.')
    result = interp.generate(interp.prompt_ids("q"), teacher=teacher)
    s = answer_stats(result, TOK)
    assert (s.promises, s.repeated_topics, s.distinct_topics) == (1, 0, 1)
    assert s.reaches_sync is True and not s.well_formed  # the nested tags were ignored (a warning each)


def test_a_truncated_answer_is_not_complete(interp):
    teacher = 'Intro <promise topic="a" tokens="10"/><async>' + "x" * 60 + "</async><sync/>end"
    limits = DecodeLimits(max_new_tokens=60)
    result = interp.generate(interp.prompt_ids("q"), teacher=teacher, limits=limits)
    s = answer_stats(result, TOK)
    assert not s.complete and s.finish_reason == "length"
    assert s.reaches_sync is False  # the main thread waits at <sync/>, but the chunk was cut by the budget


def _row(i, complete=True, promises=2, theo=2.0, wall=1.5, seq_complete=True, guards=(), repeated=0,
         synced=True, original=None):
    return {
        "id": f"p{i}",
        "pasta": {"complete": complete, "finish_reason": "eos" if complete else "length", "promises": promises,
                  "refused_promises": len(guards), "distinct_topics": promises - repeated, "repeated_topics": repeated,
                  "reaches_sync": synced if promises else None, "duplicate_chunks": 0, "repetition": 0.1,
                  "guards": list(guards), "well_formed": not guards, "plain_tokens": 100, "steps": 50,
                  "theoretical_speedup": theo},
        "sequential_complete": seq_complete, "wall_speedup": wall, "wall_async_s": 2.0,
        **({"original": original} if original else {}),
    }


def test_aggregate_counts_only_complete_answers_as_speedups():
    rows = [
        _row(0, theo=2.0, wall=1.8),
        _row(1, theo=8.0, wall=6.0),
        _row(2, promises=0, theo=1.0, wall=1.0),
        _row(3, complete=False, theo=9.0, wall=9.0, synced=False),  # a runaway answer: never a speedup
        _row(4, seq_complete=False, theo=9.0, wall=9.0),  # truncated when decoded sequentially
        _row(5, promises=4, repeated=2, guards=["repeated_topic: x"], theo=2.0, wall=2.0),
    ]
    out = aggregate(rows)
    assert out["prompts"] == 6
    assert out["complete"] == pytest.approx(5 / 6) and out["complete_both"] == pytest.approx(4 / 6)
    assert out["uses_promise"] == pytest.approx(5 / 6)
    sp = out["speedup"]
    assert sp["n_complete"] == 4 and sp["n_complete_promise"] == 3
    assert sp["theoretical_geomean_complete_promise"] == pytest.approx((2 * 8 * 2) ** (1 / 3))
    assert sp["theoretical_geomean_complete"] == pytest.approx((2 * 8 * 1 * 2) ** (1 / 4))
    assert sp["wall_geomean_complete"] == pytest.approx((1.8 * 6 * 1 * 2) ** (1 / 4))
    p = out["promise_answers"]
    assert p["n"] == 5 and p["reaches_sync"] == pytest.approx(4 / 5)
    assert p["repeated_topics_share"] == pytest.approx(2 / 13)  # the refused promise counts as written
    assert p["guards_fired"] == pytest.approx(1 / 5)
    assert p["guards_fired_ci95"] == pytest.approx(list(wilson_interval(1, 5)), abs=1e-4)
    assert out["truncated"] == {"n": 1, "ids": ["p3"]}
    assert out["well_formed"] == pytest.approx(5 / 6)


def test_aggregate_charges_drafted_plain_tokens_a_pass_each():
    """Rows that record drafted_plain (list numbers a promise draft confirmed) get a second speedup with each of them
    charged one forward pass: (plain tokens + 1) / (steps + drafted_plain), over the same complete answers."""
    rows = [_row(0), _row(1), _row(2, promises=0), _row(3, complete=False)]
    assert aggregate(rows)["speedup_drafted_plain_charged"] is None  # nothing recorded: nothing to charge
    for row, drafted in zip(rows, (9, 51, 0, 30)):
        row["drafted_plain"] = drafted
    charged = aggregate(rows)["speedup_drafted_plain_charged"]
    assert charged["theoretical_geomean_complete_promise"] == pytest.approx(math.sqrt(101 / 59 * 101 / 101))
    assert charged["theoretical_geomean_complete"] == pytest.approx((101 / 59 * 101 / 101 * 101 / 50) ** (1 / 3))


def test_aggregate_with_the_original_model():
    original = {"complete": True, "wall_s": 4.0, "plain_tokens": 120, "repetition": 0.2}
    rows = [_row(0, original=original), _row(1, original={**original, "complete": False})]
    rows[0]["nll_pasta"], rows[0]["nll_original"] = 1.5, 1.0
    out = aggregate(rows)
    assert out["complete_original"] == 0.5
    assert out["vs_original"]["n"] == 1 and out["vs_original"]["wall_ratio_geomean"] == pytest.approx(2.0)
    assert out["repetition"] == {"pasta_mean": 0.1, "original_mean": 0.2}
    assert out["nll_under_original"] == {"n": 1, "pasta_mean": 1.5, "original_mean": 1.0}
    assert math.isclose(out["mean_plain_tokens"]["original"], 120)
    assert aggregate([]) == {"prompts": 0}


def test_tag_text_left_in_the_answer_is_not_well_formed():
    from tiny import drive_script

    from pasta.eval.answer_stats import leaked_tags
    from pasta.interpreter import GenerationResult, build_stats

    assert leaked_tags("ok.</sync>\n<sync>x</ promise > <Sync/>") == 4
    assert leaked_tags("a < b and c > d; <synchronous> is a word; </asyncio>") == 0
    # Tag-like text the language reads as text reaches the user: "<sync>" (no slash) is prose to the recognizer.
    decoding = drive_script('A<promise topic="x" tokens="5"/><sync/>Again b.<sync>', ["b</async>"], tokenizer=TOK)
    annotated, text = decoding.stitch()
    assert text == "AbAgain b.<sync>" and decoding.guards == [] and decoding.warnings == []
    s = answer_stats(GenerationResult(text=text, annotated=annotated, stats=build_stats(decoding, 0.0, 0)), TOK)
    assert s.leaked_tags == 1 and not s.well_formed and s.complete
    rows = [{"id": 0, "pasta": s.to_dict()}, {"id": 1, "pasta": {**s.to_dict(), "leaked_tags": 0}}]
    assert aggregate(rows)["leaked_tags"] == 0.5


def test_a_stray_closing_tag_is_dropped_from_the_answer_with_a_warning():
    from tiny import drive_script

    from pasta import lang
    from pasta.interpreter import GenerationResult, build_stats

    # What the first default model did in 11 of 100 answers: after <sync/> it wrote a paragraph and closed it with
    # "</sync>" (or "</sync/>"). Pasta-Lang has no such tag: the user must not see it, and the answer is not well formed.
    decoding = drive_script('A<promise topic="x" tokens="5"/><sync/>Again b.</sync>', ["b</sync/> c</async>"],
                            tokenizer=TOK)
    annotated, text = decoding.stitch()
    assert text == "Ab c" + "Again b." and decoding.guards == []
    assert len(decoding.warnings) == 2 and all("closes nothing" in w for w in decoding.warnings)
    assert "</sync>" in annotated and "</sync/>" in annotated  # the storage form keeps what the model wrote
    assert [i.code for i in lang.validate(annotated)] == ["stray-close", "stray-close"]
    assert lang.strip_tags(annotated) == text
    s = answer_stats(GenerationResult(text=text, annotated=annotated, stats=build_stats(decoding, 0.0, 0)), TOK)
    assert s.leaked_tags == 0 and not s.well_formed and s.complete


def test_empty_outline_items_are_counted_and_the_end_mark_is_not_one():
    from pasta.eval.answer_stats import empty_outline_items

    assert empty_outline_items("Overview: Diet; Sleep.\n") == 0
    assert empty_outline_items("Overview: Diet; Sleep;\n") == 0  # terminated: the ';' ends the last item
    assert empty_outline_items("Intro.\nOverview: Add;; Place;;;;.\nNote: a;; b.") == 5  # only outline lines
    assert empty_outline_items("Overview: The; It; and;;;;\n") == 3


def test_stats_of_an_outline_with_an_empty_item(interp):
    teacher = ('Overview: Sleep;; Food.\n\n<promise topic="1/2 Sleep" tokens="10"/><async>Rest.</async>\n'
               '<promise topic="2/2 Food" tokens="10"/><async>Eat.</async>\n<sync/>Done.')
    s = answer_stats(interp.generate(interp.prompt_ids("q"), teacher=teacher), TOK)
    assert s.empty_outline_items == 1 and s.promises == 2


def test_aggregate_shows_single_chunk_forks_and_empty_outline_items():
    rows = [_row(0, promises=1), _row(1), _row(2), _row(3, promises=0)]
    rows[1]["pasta"]["empty_outline_items"] = 2
    rows[0]["annotated"] = "Overview: Sleep.\n\n<promise topic=\"1/1 Sleep\"/><async>x</async><sync/>"  # counted
    rows[2]["annotated"] = "Overview: A;; B.\n\n"  # a row from before the field: counted from its answer
    p = aggregate(rows)["promise_answers"]
    assert p["single_chunk"] == pytest.approx(1 / 3) and p["empty_outline_items"] == pytest.approx(2 / 3)
    del rows[2]["annotated"]  # nothing to count from: the share is unknown, not 0
    assert aggregate(rows)["promise_answers"]["empty_outline_items"] is None


def test_repeated_outline_items_left_in_the_answer_are_counted():
    from pasta.eval.answer_stats import repeated_outline_items

    assert repeated_outline_items("Overview: Rake; Hoe; rake.\n") == 1  # topic_key: case does not make it new
    assert repeated_outline_items("Overview: Rake; Hoe; Rake; Rake;\n") == 2
    assert repeated_outline_items("Overview: Rake; Rakes.\nOverview: Rake; Hoe.\n") == 0  # per line
    assert repeated_outline_items("Tools: Rake; Rake.\n") == 0  # not an outline line
    rows = [_row(0), _row(1), _row(2, promises=0)]
    rows[0]["annotated"] = 'Overview: A; B; A.\n\n<promise topic="1/2 A"/><async>x</async><sync/>'
    rows[1]["pasta"]["repeated_outline_items"] = 0
    rows[2]["annotated"] = "Overview: A; A.\n"  # no promise: not a fork
    assert aggregate(rows)["promise_answers"]["repeated_outline_items"] == pytest.approx(1 / 2)
