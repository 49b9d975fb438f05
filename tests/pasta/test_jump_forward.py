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

