"""Presence/frequency penalties (pasta.penalties, DecodeLimits): the closed form per thread, words only, tags never
penalised, the engine equal to the oracle under them, and the model's recorded value used unless a request sets one."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from tiny import ByteTokenizer, drive_script, tiny_model

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter, decoding_defaults_for
from pasta.penalties import WordPenalty, tag_syntax_ids
from pasta.reference import reference_generate

TOK = ByteTokenizer()


def test_apply_is_the_openai_closed_form():
    penalty = WordPenalty(TOK, presence=0.5, frequency=0.25)
    row = torch.randn(TOK.vocab_size)
    words = Counter({ord("a"): 3, ord("b"): 1})
    out = penalty.apply(row, words)
    expected = row.clone()
    expected[ord("a")] -= 0.5 + 0.25 * 3
    expected[ord("b")] -= 0.5 + 0.25 * 1
    torch.testing.assert_close(out, expected)
    assert penalty.apply(row, Counter()) is row  # nothing written yet: untouched


def test_only_words_count_and_tag_syntax_never_does():
    penalty = WordPenalty(TOK, presence=1.0, frequency=0.0)
    words = Counter()
    for char in "bd1.;\n <":
        penalty.count(words, ord(char))
    assert set(words) == {ord("b"), ord("d")}  # digits, punctuation and whitespace are exempt
    # With bytes as tokens, every letter of a tag ('p', 'r', 'o', 's', 'y', 'n', 'c', ...) spells tag syntax.
    tags = tag_syntax_ids(TOK)
    assert {ord(c) for c in "promisetokensasyncy"} <= tags
    assert not any(penalty.is_word(t) for t in tags)
    assert penalty.is_word(ord("b")) and not penalty.is_word(ord("p"))


def test_each_thread_is_penalised_for_its_own_words():
    limits = DecodeLimits(presence_penalty=1.0, frequency_penalty=0.5)
    decoding = drive_script('Hi bb <promise topic="t" tokens="3"/>then<sync/>', ["dd"], limits=limits)
    main, chunk = decoding.threads
    # "Hi bb" and "then" less the letters that spell tags ("i", "t", "e", "n") and the tag's own letters.
    assert main.words == Counter({ord("H"): 1, ord("b"): 2, ord("h"): 1})
    assert chunk.words == Counter({ord("d"): 2})
    decoding._samplers = [0, 1]  # a step where both threads sample
    logits = torch.zeros(2, TOK.vocab_size)
    out = decoding.penalize(logits)
    assert out[0, ord("b")] == -(1.0 + 0.5 * 2) and out[0, ord("d")] == 0
    assert out[1, ord("d")] == -(1.0 + 0.5 * 2) and out[1, ord("b")] == 0


def test_no_penalty_and_teacher_forcing_leave_logits_alone():
    interp = Interpreter(tiny_model("llama"), TOK)
    plain = interp.start(interp.prompt_ids("q"))
    forced = interp.start(interp.prompt_ids("q"), limits=DecodeLimits(presence_penalty=2.0), teacher="ab ab")
    for decoding in (plain, forced):
        decoding.next_inputs()
        logits = torch.randn(1, TOK.vocab_size)
        assert decoding.penalize(logits) is logits


def test_engine_samples_the_penalised_argmax_and_matches_the_oracle():
    """Greedy under penalties: every token is the argmax of the raw logits less the thread's penalties so far
    (recomputed here from the sampled tokens), on the engine and the naive oracle alike."""
    limits = DecodeLimits(max_new_tokens=40, presence_penalty=1.5, frequency_penalty=0.5)
    interp = Interpreter(tiny_model("llama", seed=1), TOK, limits=limits)
    prompt = interp.prompt_ids("write words")
    decoding = interp.start(prompt)
    result = interp.run(decoding, record_logits=True)
    tokens = decoding.threads[0].tokens
    assert len(result.logits) == len(tokens) + (decoding.finish_reason == "eos")
    counts: Counter = Counter()
    differs = 0
    for (threads, raw), token in zip(result.logits, tokens):
        assert threads == [0]
        expected = raw[0].clone()
        for word, n in counts.items():
            expected[word] -= 1.5 + 0.5 * n
        assert int(expected.argmax()) == token
        differs += int(raw[0].argmax()) != token
        if any(c.isalpha() for c in TOK.decode([token])) and token not in tag_syntax_ids(TOK):
            counts[token] += 1
    assert differs > 0  # the penalties changed the answer (else this test proves nothing)
    oracle = interp.start(prompt)
    reference_generate(interp.runner, oracle)
    assert oracle.result(0.0).text == result.text
    unpenalised = interp.generate(prompt, limits=DecodeLimits(max_new_tokens=40, presence_penalty=0.0))
    assert unpenalised.text != result.text


@pytest.mark.parametrize("asked, recorded, used", [
    (None, {"presence_penalty": 0.5}, 0.5),  # unset: as the model records
    (None, {}, 0.0),
    (0.0, {"presence_penalty": 0.5}, 0.0),  # a request's choice wins
    (1.0, {}, 1.0),
])
def test_unset_penalties_take_the_models_recorded_value(asked, recorded, used):
    interp = Interpreter(tiny_model("llama"), TOK, decoding_defaults=recorded)
    decoding = interp.start(interp.prompt_ids("hi"), limits=DecodeLimits(presence_penalty=asked))
    assert decoding.limits.presence_penalty == used and decoding.limits.frequency_penalty == 0.0


@pytest.mark.parametrize("value", [2.5, -3, float("nan"), True, "0.5"])
def test_bad_penalties_are_clear_errors(value, tmp_path):
    with pytest.raises(ValueError, match="presence_penalty must be a number in"):
        DecodeLimits(presence_penalty=value)
    from types import SimpleNamespace

    (tmp_path / "pasta_decoding.json").write_text(f'{{"frequency_penalty": {"true" if value is True else 9}}}')
    with pytest.raises(ValueError, match="pasta_decoding.json.*frequency_penalty must be a number"):
        decoding_defaults_for(SimpleNamespace(adapter=str(tmp_path), path=None))
