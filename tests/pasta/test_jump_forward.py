"""Jump-forward: tag syntax that must follow what the main thread began is fed in the same forward pass.

Scripted models (tiny.drive_script) show what is fed and when; the tiny model shows the engine stays exact
against the naive oracle and that the answer is the one decoded without jump-forward."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, ScriptedProgram, drive_script, tiny_model

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter

TOK = ByteTokenizer()
MAIN = 'Tips:\n1. <promise topic="Sleep" tokens="5"/>\n2. <promise topic="Food" tokens="5"/>\n<sync/>Done.'
CHUNKS = ["Sleep well.</async>", "Eat well.</async>"]


def test_promise_syntax_is_fed_beside_the_sample_and_the_answer_is_unchanged():
    on = drive_script(MAIN, CHUNKS, tokenizer=TOK)
    off = drive_script(MAIN, CHUNKS, DecodeLimits(jump_forward=False), tokenizer=TOK)
    assert on.stitch() == off.stitch()
    assert on.stitch()[1] == "Tips:\n1. Sleep well.\n2. Eat well.\nDone."
    # Byte tokens: after "<p", 'romise topic="' (14 tokens) is fed at once; after " tok", 'ens="' (5 tokens).
    per_promise = 14 + 5
    assert off.sampled - on.sampled == 2 * per_promise
    assert off.steps - on.steps == 2 * per_promise  # the main thread is the critical path here
    assert on.guards == [] and on.finish_reason == "eos"


def test_nothing_is_forced_where_the_model_still_has_a_choice():
    # " tokens" inside a topic is the topic's text, not the attribute; "<" alone may open any tag; a promise
    # without a tokens attribute stays valid.
    main = '<promise topic="Count tokens twice"/>x<sync/>y'
    on = drive_script(main, ["a</async>"], tokenizer=TOK)
    off = drive_script(main, ["a</async>"], DecodeLimits(jump_forward=False), tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.threads[1].trace.topic == "Count tokens twice"
    assert off.sampled - on.sampled == 14  # only the tag's opening
    # No jump-forward inside a chunk, nor for <sync/>: the same steps with and without it.
    plain = drive_script("a<sync/>b", [], tokenizer=TOK)
    assert plain.sampled == drive_script("a<sync/>b", [], DecodeLimits(jump_forward=False), tokenizer=TOK).sampled


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_engine_with_jump_forward_matches_the_oracle(mode):
    """A step that feeds a sampled token and the syntax after it: the cached engine's logits equal a full
    recomputation's at every step (the tiny model's own choices are replaced by the script)."""
    from pasta.decoding import Decoding
    from pasta.reference import reference_generate

    interp = Interpreter(tiny_model("llama", seed=3), TOK)
    prompt = interp.prompt_ids("Give tips.")

    def program():
        decoding = Decoding(prompt, TOK, eos_ids={TOK.eos_token_id}, mode=mode)
        return ScriptedProgram(decoding, MAIN, CHUNKS, TOK)

    engine_run = program()
    result = interp.run(engine_run, record_logits=True)
    assert result.text == "Tips:\n1. Sleep well.\n2. Eat well.\nDone."
    # Jump-forward did happen: fewer forward passes than the same script without it.
    assert engine_run.steps < drive_script(MAIN, CHUNKS, DecodeLimits(jump_forward=False), mode, TOK).steps
    oracle = reference_generate(interp.runner, program())
    assert len(result.logits) == len(oracle)
    for (threads, logits), (ref_threads, ref_logits) in zip(result.logits, oracle):
        assert threads == ref_threads
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)



OUTLINED = ('Tips:\nOverview: Sleep; Food.\n\n1. <promise topic="1/2 Sleep" tokens="5"/>\n'
            '2. <promise topic="2/2 Food" tokens="5"/>\n<sync/>Done.')


def test_outline_topics_are_fed_from_the_outline_line_and_the_answer_is_unchanged():
    on = drive_script(OUTLINED, CHUNKS, DecodeLimits(outline_topics=True), tokenizer=TOK)
    off = drive_script(OUTLINED, CHUNKS, tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.outline_topics_fed == 2 and off.outline_topics_fed == 0
    assert [t.trace.topic for t in on.threads[1:]] == ["1/2 Sleep", "2/2 Food"]
    # Byte tokens: the topic and '" tok' are fed too (jump-forward alone already feeds 'ens="').
    assert off.sampled - on.sampled == (len("1/2 Sleep") + 5) + (len("2/2 Food") + 5)
    assert on.guards == [] and on.finish_reason == "eos"


@pytest.mark.parametrize("main, fed", [
    # An outline before a sync does not name the items of the next list.
    ('Overview: A; B.\n<promise topic="1/2 A" tokens="5"/><sync/>y <promise topic="Z" tokens="5"/><sync/>x', 1),
    # An outline line that is not finished (no newline yet) is no outline; nor is one in the middle of a line.
    ('Overview: A; B. <promise topic="Z" tokens="5"/><sync/>x', 0),
    ('See Overview: A; B.\n<promise topic="Z" tokens="5"/><sync/>x', 0),
])
def test_outline_topics_only_where_an_outline_names_the_next_item(main, fed):
    decoding = drive_script(main, ["a</async>"] * 3, DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert decoding.outline_topics_fed == fed
    assert decoding.stitch() == drive_script(main, ["a</async>"] * 3, tokenizer=TOK).stitch()


@pytest.mark.parametrize("main, guards", [
    (OUTLINED, 0),
    # The outline guard fires (a repeated item): its injected tokens are laid out alike on both paths.
    (OUTLINED.replace("Food.\n\n", "Food; Sleep;"), 1),
    # A third promise past the two items: closed with its count alone and refused (outline_done), then <sync/>.
    (OUTLINED.replace("\n<sync/>Done.", '\n3. <promise topic="3/2" tokens="1"/>Done.'), 1),
])
def test_engine_with_outline_topics_matches_the_oracle(main, guards):
    from pasta.decoding import Decoding
    from pasta.reference import reference_generate

    interp = Interpreter(tiny_model("llama", seed=3), TOK)
    prompt = interp.prompt_ids("Give tips.")

    def program():
        decoding = Decoding(prompt, TOK, eos_ids={TOK.eos_token_id}, limits=DecodeLimits(outline_topics=True))
        return ScriptedProgram(decoding, main, CHUNKS, TOK)

    engine_run = program()
    result = interp.run(engine_run, record_logits=True)
    assert engine_run.outline_topics_fed == 2 and result.text.endswith("2. Eat well.\nDone.")
    assert len(engine_run.guards) == guards and "Overview: Sleep; Food.\n\n1." in result.text
    oracle = reference_generate(interp.runner, program())
    assert len(result.logits) == len(oracle)
    for (threads, logits), (ref_threads, ref_logits) in zip(result.logits, oracle):
        assert threads == ref_threads
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_a_promise_past_the_outline_is_closed_and_refused_at_once():
    """Every item has its promise: a third one is closed with its count alone and refused (outline_done), the
    main thread syncs and goes on; without outline topics the model's own third topic was sampled in full."""
    main = ('Overview: A; B.\n1. <promise topic="1/2 A" tokens="5"/>\n2. <promise topic="2/2 B" tokens="5"/>\n'
            '3. <promise topic="3/2" tokens="1"/>Done.')
    decoding = drive_script(main, ["a</async>"] * 3, DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert [g.split(":")[0] for g in decoding.guards] == ["outline_done"]
    assert decoding.outline_topics_fed == 2 and len(decoding.threads) == 3  # two chunks, no third
    assert decoding.stitch()[1] == "Overview: A; B.\n1. a\n2. a\nDone."
    assert decoding.finish_reason == "eos"
    # Without outline topics the model writes its own third topic, sampled token by token (here: accepted).
    off = drive_script(main.replace('topic="3/2"', 'topic="C"'), ["a</async>"] * 3, tokenizer=TOK)
    assert off.guards == [] and len(off.threads) == 4


def test_a_repeated_outline_item_is_fed_once():
    main = ('Overview: A; B; A.\n<promise topic="1/2 A" tokens="5"/><promise topic="2/2 B" tokens="5"/>'
            '<sync/>x')
    decoding = drive_script(main, ["a</async>"] * 2, DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert decoding.outline_topics_fed == 2 and decoding.guards == []
    assert [t.trace.topic for t in decoding.threads[1:]] == ["1/2 A", "2/2 B"]


@pytest.mark.parametrize("main, guard, text", [
    # The third item repeats the first: the ';' after it becomes '.\n\n' and the repeat leaves the answer.
    ('Overview: Sleep; Food; sleep;1. <promise topic="1/2 Sleep" tokens="5"/>'
     '2. <promise topic="2/2 Food" tokens="5"/><sync/>x',
     "outline_repeat", "Overview: Sleep; Food.\n\n1. a2. ax"),
    # A ninth item (max_promises_per_sync=8 items named): the line ends after the eighth.
    ('Overview: a1; a2; a3; a4; a5; a6; a7; a8; a9; a10.\n<promise topic="1/8 a1" tokens="5"/><sync/>x',
     "outline_long", "Overview: a1; a2; a3; a4; a5; a6; a7; a8.\n\n a9; a10.\nax"),
])
def test_the_outline_guard_ends_a_looping_outline(main, guard, text):
    decoding = drive_script(main, ["a</async>"] * 2, DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert [g.split(":")[0] for g in decoding.guards] == [guard]
    assert decoding.stitch()[1] == text
    # Without outline topics the same script is left as written.
    off = drive_script(main, ["a</async>"] * 2, tokenizer=TOK)
    assert off.guards == [] and "Overview: " + main.split("Overview: ")[1].split("<")[0] in off.stitch()[1]


TERMINATED = DecodeLimits(outline_topics=True, outline_terminated=True)
EIGHT = "Overview: " + "; ".join(f"a{i}" for i in range(1, 9)) + ";"


@pytest.mark.parametrize("main, guards, text", [
    # Terminated outlines ("Overview: Sleep; Food;"): topics are fed from them as from '.'-ended ones.
    ('Overview: Sleep; Food;\n\n1. <promise topic="1/2 Sleep" tokens="5"/>2. <promise topic="2/2 Food" tokens="5"/>'
     '<sync/>x', [], "Overview: Sleep; Food;\n\n1. a2. ax"),
    # A repeated item leaves the answer; the ';' before it stays and the line ends with a blank line.
    ('Overview: Sleep; Food; sleep;1. <promise topic="1/2 Sleep" tokens="5"/>2. <promise topic="2/2 Food" tokens="5"/>'
     '<sync/>x', ["outline_repeat"], "Overview: Sleep; Food;\n\n1. a2. ax"),
    # Eight items each ended by ';' is a whole outline, not a wish for a ninth: no guard ...
    (EIGHT + '\n<promise topic="1/8 a1" tokens="5"/><sync/>x', [], EIGHT + "\nax"),
    # ... a ninth item, once written, is cut.
    (EIGHT + ' a9;\n<promise topic="1/8 a1" tokens="5"/><sync/>x', ["outline_long"], EIGHT + "\n\n\nax"),
])
def test_the_outline_guard_keeps_a_terminated_outlines_form(main, guards, text):
    decoding = drive_script(main, ["a</async>"] * 2, TERMINATED, tokenizer=TOK)
    assert [g.split(":")[0] for g in decoding.guards] == guards
    assert decoding.stitch()[1] == text and decoding.outline_topics_fed >= 1


def test_a_whole_eight_item_outline_is_cut_only_in_the_dot_ended_form():
    # Dot-ended, a ';' after the eighth item announces a ninth: the cap ends the line there.
    main = EIGHT + '\n<promise topic="1/8 a1" tokens="5"/><sync/>x'
    decoding = drive_script(main, ["a</async>"], DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert [g.split(":")[0] for g in decoding.guards] == ["outline_long"]


def test_no_outline_guard_under_teacher_forcing_or_outside_an_outline_line():
    main = 'Note: a; b; a; a; a.\nOverview: x; y.\n<promise topic="1/2 x" tokens="5"/><sync/>z'
    decoding = drive_script(main, ["a</async>"], DecodeLimits(outline_topics=True), tokenizer=TOK)
    assert decoding.guards == [] and decoding.stitch()[1].startswith("Note: a; b; a; a; a.\n")
