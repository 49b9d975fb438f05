"""Runtime guards (DecodeLimits): a model that loops on promises still gives a clean, finished answer.

The "model" here is a script per thread, driven through the model-free `Decoding` state machine (as the engine
drives it), so each test states exactly what the model wrote and checks what the user gets."""

from __future__ import annotations

import pytest
from tiny import ByteTokenizer, drive_script, tiny_model

from pasta.decoding import DecodeLimits, Decoding
from pasta.interpreter import Interpreter
from pasta.lang import is_valid, strip_tags

TOK = ByteTokenizer()
EOS = TOK.eos_token_id


def _enc(text: str) -> list[int]:
    return TOK.encode(text, add_special_tokens=False)


def drive(main: str, chunks: list[str], limits: DecodeLimits | None = None, mode: str = "async") -> Decoding:
    return drive_script(main, chunks, limits, mode, TOK)


def _promise(topic: str) -> str:
    return f'<promise topic="{topic}" tokens="5"/>'


def test_no_guard_fires_on_a_well_behaved_answer():
    main = "Tips:\n" + _promise("sleep") + "\n" + _promise("food") + "\n<sync/>Done."
    decoding = drive(main, ["Sleep.</async>", "Eat.</async>"])
    _, text = decoding.stitch()
    assert decoding.guards == []
    assert text == "Tips:\nSleep.\nEat.\nDone."
    assert decoding.finish_reason == "eos"


def test_a_repeated_topic_is_refused_and_the_main_thread_syncs():
    # The model repeats its first topic; after the forced sync it writes a conclusion and stops.
    main = "Tips:\n" + _promise("Sleep well") + "\n" + _promise("sleep  WELL!") + "Done."
    decoding = drive(main, ["Sleep.</async>", "never forked</async>"])
    annotated, text = decoding.stitch()
    assert len(decoding.threads) == 2  # the repeated promise forked no chunk
    assert len(decoding.guards) == 1 and decoding.guards[0].startswith("repeated_topic")
    assert "forced <sync/>" in decoding.guards[0]
    assert text == "Tips:\nSleep.\nDone."  # no trace of the refused promise
    assert annotated == "Tips:\n" + _promise("Sleep well") + "<async>Sleep.</async>\n<sync/>Done."
    assert is_valid(annotated) and strip_tags(annotated) == text
    assert decoding.finish_reason == "eos"


def test_a_refused_promise_leaves_no_dangling_list_marker():
    main = "Animals:\n1. " + _promise("Bats") + "\n2. " + _promise("Birds") + "\n3. " + _promise("bats") + "\nThat is all."
    decoding = drive(main, ["Bats fly.</async>", "Birds sing.</async>"])
    annotated, text = decoding.stitch()
    assert text == "Animals:\n1. Bats fly.\n2. Birds sing.\n\nThat is all."
    assert is_valid(annotated) and strip_tags(annotated) == text


def test_a_loop_of_repeated_promises_ends_cleanly():
    # A model stuck on one topic (the failure seen in the first default model): refused twice in a row -> the main
    # thread ends; the answer is finished and valid, long before the token cap.
    main = "Actors:\n" + (_promise("Billy Crystal") + "\n") * 30
    decoding = drive(main, ["Billy Crystal: an actor.</async>"] * 30, DecodeLimits(max_new_tokens=4000))
    annotated, text = decoding.stitch()
    assert len(decoding.threads) == 2
    assert len(decoding.guards) == 2 and decoding.guards[-1].endswith("main thread ended")
    assert decoding.finish_reason == "guard"
    assert text == "Actors:\nBilly Crystal: an actor.\n\n"  # the newlines the model wrote after each promise
    assert is_valid(annotated)
    assert decoding.sampled < 200


def test_a_loop_of_syncs_ends_the_answer():
    # After its chunks, the first default model wrote <sync/> over and over until the token cap.
    main = "Tips:\n" + _promise("a") + "\n<sync/>\n\n<sync/>\n\n" * 50
    decoding = drive(main, ["Sleep.</async>"], DecodeLimits(max_new_tokens=2000))
    annotated, text = decoding.stitch()
    assert decoding.finish_reason == "guard" and decoding.guards[0].startswith("idle_sync")
    assert annotated == "Tips:\n" + _promise("a") + "<async>Sleep.</async>\n<sync/>\n\n"
    assert text == "Tips:\nSleep.\n\n\n"
    # One redundant sync after text is harmless (a no-op, as before), and a sync after a new promise is no loop.
    fine = drive("A<sync/>B<sync/>" + _promise("b") + "<sync/>C<sync/>D", ["x</async>"])
    assert fine.guards == [] and fine.stitch()[1] == "ABxCD"


def test_a_loop_of_numbered_syncs_ends_the_answer():
    main = "Steps:\n1. " + _promise("a") + "\n2. <sync/>\n3. <sync/>\n4. <sync/>" * 20
    decoding = drive(main, ["Draw.</async>"], DecodeLimits(max_new_tokens=2000))
    assert decoding.finish_reason == "guard" and decoding.guards[0].startswith("idle_sync")
    assert decoding.sampled < 120


def test_a_promise_inside_a_chunk_closes_it():
    main = "Steps:\n1. " + _promise("Install") + "\n<sync/>Done."
    chunk = "Install them:\n1. " + _promise("Install") + "\n2. " + _promise("Install") + " and more</async>"
    decoding = drive(main, [chunk])
    annotated, text = decoding.stitch()
    assert decoding.threads[1].trace.close_reason == "guard"
    assert decoding.guards == [f'chunk_promise: chunk 1 wrote {_promise("Install")}; chunk closed']
    assert text == "Steps:\n1. Install them:\n1. \nDone."
    assert is_valid(annotated) and strip_tags(annotated) == text
    ignored = drive(main, [chunk], DecodeLimits(close_chunk_on_promise=False))
    assert "and more" in ignored.stitch()[1] and ignored.guards == []


def test_cap_on_promises_per_request():
    topics = [f"t{i}" for i in range(6)]
    main = "".join(_promise(t) + "<sync/>" for t in topics) + "End."
    decoding = drive(main, [f"{i}</async>" for i in range(6)], DecodeLimits(max_promises=3))
    _, text = decoding.stitch()
    assert len(decoding.threads) == 4  # three chunks, then refusals
    assert decoding.guards[0].startswith("max_promises:")
    assert text.startswith("012")
    assert decoding.finish_reason == "guard"  # it kept promising: refused twice -> ended


def test_too_many_promises_without_a_sync():
    main = "".join(_promise(f"t{i}") for i in range(5)) + "Conclusion."
    decoding = drive(main, [f"{i}</async>" for i in range(5)], DecodeLimits(max_promises_per_sync=3))
    annotated, text = decoding.stitch()
    # The 4th promise was refused and replaced by <sync/>; the model's 5th promise then counts from zero.
    assert [t.trace.topic for t in decoding.threads[1:]] == ["t0", "t1", "t2", "t4"]
    assert len(decoding.guards) == 1 and decoding.guards[0].startswith("max_promises_per_sync")
    assert annotated.count("<sync/>") == 1
    assert text == "0123Conclusion." and decoding.finish_reason == "eos"  # chunk scripts go by fork order
    assert is_valid(annotated)


def test_guards_can_be_relaxed_and_sequential_mode_agrees():
    main = _promise("a") + _promise("a") + "<sync/>x"
    relaxed = drive(main, ["1</async>", "2</async>"], DecodeLimits(refuse_repeated_topics=False))
    assert relaxed.guards == [] and len(relaxed.threads) == 3
    guarded = drive(main, ["1</async>", "2</async>"])
    sequential = drive(main, ["1</async>", "2</async>"], mode="sequential")
    assert guarded.stitch() == sequential.stitch()
    assert guarded.guards == sequential.guards


def test_teacher_forcing_is_never_guarded():
    interp = Interpreter(tiny_model("llama"), TOK)
    teacher = _promise("a") + "<async>1</async>" + _promise("a") + "<async>2</async><sync/>x"
    result = interp.generate(interp.prompt_ids("p"), teacher=teacher)
    assert result.annotated == teacher
    assert result.stats.guards == []


def test_guards_are_counted_in_the_run_stats():
    interp = Interpreter(tiny_model("llama"), TOK, limits=DecodeLimits(max_new_tokens=30))
    result = interp.generate(interp.prompt_ids("p"))
    assert result.stats.guards == [] and result.stats.finish_reason in ("eos", "length")


def test_guard_limits_are_validated():
    with pytest.raises(ValueError, match="max_promises"):
        DecodeLimits(max_promises=0)
    with pytest.raises(ValueError, match="max_promises_per_sync"):
        DecodeLimits(max_promises_per_sync=True)


def test_a_counted_list_that_runs_past_its_total_is_refused():
    main = ("Tips:\n1. " + _promise("1/2 Sleep") + "\n2. " + _promise("2/2 Food") + "\n3. " + _promise("3/2 Walk")
            + "\nDone.")
    decoding = drive(main, ["Sleep.</async>", "Eat.</async>", "never forked</async>"])
    _, text = decoding.stitch()
    assert len(decoding.threads) == 3
    assert len(decoding.guards) == 1 and decoding.guards[0].startswith("count_overrun")
    assert text == "Tips:\n1. Sleep.\n2. Eat.\n\nDone."
    # After a sync a new counted list may start; a topic that only looks counted is not a list.
    fine = ("A:\n" + _promise("1/2 Sleep") + _promise("2/2 Food") + "<sync/>B:\n" + _promise("1/2 Walk")
            + _promise("2/2 Swim") + _promise("24/7 support") + "<sync/>End.")
    ok = drive(fine, ["S.</async>", "F.</async>", "W.</async>", "W2.</async>", "H.</async>"])
    assert ok.guards == [] and len(ok.threads) == 6
    off = drive(main, ["Sleep.</async>", "Eat.</async>", "Walk.</async>"], DecodeLimits(refuse_count_overrun=False))
    assert off.guards == [] and len(off.threads) == 4
