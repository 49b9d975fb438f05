"""Promise drafts (DecodeLimits.draft_promises): the next promise line of a counted list is drafted from the previous
one and checked by the model in one forward pass; whatever the model would not have written is thrown away.

Oracles: the same script decoded without drafts (the same answer, more passes), the naive full-recomputation
interpreter (the engine's logits at every step, drafts and rejected drafts included), sampling each draft row one at
a time from a fresh stream (the same draws), and on the real model in fp32 the answer decoded without drafts."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, ScriptedProgram, drive_script, tiny_model

from pasta.decoding import DecodeLimits, Decoding
from pasta.interpreter import Interpreter
from pasta.layout import Layout
from pasta.sampling import SamplingParams

TOK = ByteTokenizer()
OUTLINE = "Tips:\nOverview: Sleep; Food; Walk.\n\n"
LINES = ['1. <promise topic="1/3 Sleep" tokens="5"/>\n', '2. <promise topic="2/3 Food" tokens="5"/>\n',
         '3. <promise topic="3/3 Walk" tokens="5"/>\n']
MAIN = OUTLINE + "".join(LINES) + "<sync/>Done."
CHUNKS = ["Sleep well.</async>", "Eat well.</async>", "Walk daily.</async>"]
PLAIN = "Tips:\nOverview: Sleep; Food; Walk.\n\n1. Sleep well.\n2. Eat well.\n3. Walk daily.\nDone."
OUTLINED = DecodeLimits(outline_topics=True)
NO_DRAFTS = DecodeLimits(outline_topics=True, draft_promises=False)
# Scripts in which the model parts from the draft: another list number, another token count, a line that is not a
# promise, a blank line before the next promise.
PARTING = [
    MAIN.replace("3. <promise", "7. <promise"),
    MAIN.replace('2/3 Food" tokens="5"', '2/3 Food" tokens="9"'),
    MAIN.replace("2. <promise", "2. Also: <promise"),
    MAIN.replace(LINES[1], "\n" + LINES[1]),
]


def test_a_counted_list_costs_one_pass_per_drafted_promise_and_the_answer_is_unchanged():
    on = drive_script(MAIN, CHUNKS, OUTLINED, tokenizer=TOK)
    off = drive_script(MAIN, CHUNKS, NO_DRAFTS, tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.stitch()[1] == PLAIN
    assert on.sampled == off.sampled and on.guards == [] and on.finish_reason == "eos"
    # Promise 1 is drafted after the outline ("1. <p"; the first newline of the blank line parts from that draft);
    # promises 2 and 3 from promise 1's line: byte tokens '2. <p' and '5"/>' are the model's choices, the rest of
    # '<promise topic="' and the outline topic are fed as before.
    assert on.drafted == len("1. <p") + 2 * len('2. <p5"/>') and on.draft_rejected == 1
    # Each confirmed token saves the main thread a pass; the last chunk, on the critical path here, starts one pass
    # after its drafted promise (its <async> cannot ride in the pass that checks the draft).
    assert off.steps - on.steps == on.drafted - 1
    assert on.critical_path() == on.steps and off.critical_path() == off.steps
    assert len(on.layout) == len(off.layout) and _positions(on) == _positions(off)  # the same tokens, positions


@pytest.mark.parametrize("main", PARTING)
def test_where_the_model_parts_from_the_draft_its_own_token_is_taken(main):
    on = drive_script(main, CHUNKS, OUTLINED, tokenizer=TOK)
    off = drive_script(main, CHUNKS, NO_DRAFTS, tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.sampled == off.sampled
    assert on.draft_rejected >= 1 and on.steps <= off.steps
    assert len(on.layout) == len(off.layout) and _positions(on) == _positions(off)


def _positions(decoding) -> dict[int, list[int]]:
    """Each thread's position ids in order (slots interleave differently when passes differ)."""
    layout = decoding.layout
    return {tid: [layout.positions[s] for s in thread.slots] for tid, thread in layout.threads.items()}


def test_no_draft_without_a_count_or_once_the_list_is_done():
    uncounted = MAIN.replace("1/3 ", "").replace("2/3 ", "").replace("3/3 ", "")
    assert drive_script(uncounted, CHUNKS, DecodeLimits(), tokenizer=TOK).drafted == 0
    # An outline of one item: its promise is drafted, and nothing after it (the count is finished).
    single = OUTLINE.replace("Sleep; Food; Walk", "Sleep") + '1. <promise topic="1/1 Sleep" tokens="5"/>\n<sync/>x'
    assert drive_script(single, CHUNKS, OUTLINED, tokenizer=TOK).drafted == len("1. <p")
    # No outline, no count: no draft at all.
    plain = "Tips:\n1. Sleep.\n2. Eat.\n"
    assert drive_script(plain, [], OUTLINED, tokenizer=TOK).drafted == 0


def test_without_outline_topics_the_draft_stops_where_the_topic_begins():
    main = MAIN.replace(OUTLINE, "Tips:\n")
    on = drive_script(main, CHUNKS, DecodeLimits(), tokenizer=TOK)
    off = drive_script(main, CHUNKS, DecodeLimits(draft_promises=False), tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.drafted == 2 * len("2. <p") and on.draft_rejected == 0


def test_no_drafts_under_teacher_forcing():
    teacher = MAIN.replace("/>\n", "/><async>x</async>\n")
    decoding = Decoding(TOK.encode("q", add_special_tokens=False), TOK, eos_ids={TOK.eos_token_id}, limits=OUTLINED,
                        forced_main=TOK.encode(teacher, add_special_tokens=False))
    while not decoding.done:
        decoding.next_inputs()
        assert decoding.draft_rows is None
        decoding.advance([0] * len(decoding.sampler_threads))


@pytest.mark.parametrize("main", [MAIN, *PARTING])
@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_engine_with_drafts_matches_the_oracle(main, mode):
    """Draft rows, rejected drafts taken back from the cache, chunks forked from a drafted promise: the cached
    engine's logits equal a full recomputation's at every step."""
    from pasta.reference import reference_generate

    interp = Interpreter(tiny_model("llama", seed=3), TOK)
    prompt = interp.prompt_ids("Give tips.")

    def program():
        decoding = Decoding(prompt, TOK, eos_ids={TOK.eos_token_id}, limits=OUTLINED, mode=mode)
        return ScriptedProgram(decoding, main, CHUNKS, TOK)

    engine_run = program()
    result = interp.run(engine_run, record_logits=True)
    assert result.text == drive_script(main, CHUNKS, NO_DRAFTS, mode, TOK).stitch()[1]
    assert engine_run.drafted > 0 and result.stats.drafted == engine_run.drafted
    assert result.stats.cache_tokens == len(engine_run.layout)
    oracle = reference_generate(interp.runner, program())
    assert len(result.logits) == len(oracle)
    for (threads, logits), (ref_threads, ref_logits) in zip(result.logits, oracle):
        assert threads == ref_threads
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def _decoding_with_a_draft() -> Decoding:
    decoding = Decoding(TOK.encode("q", add_special_tokens=False), TOK, eos_ids={TOK.eos_token_id}, limits=OUTLINED)
    program = ScriptedProgram(decoding, MAIN, CHUNKS, TOK)
    while decoding.next_inputs() and decoding.draft_rows is None:
        program.advance([0] * len(decoding.sampler_threads))
    return decoding


@pytest.mark.parametrize("agree", [0, 2, 100])
def test_draft_rows_draw_from_the_stream_exactly_as_one_row_at_a_time(agree):
    """choose() samples a draft's rows in order and stops at the first that parts from it: the tokens, and what the
    main thread's stream draws next, are those of sampling the same rows one pass at a time."""
    decoding = _decoding_with_a_draft()
    first, draft = decoding.draft_rows
    rows = len(decoding.sampler_threads)
    logits = torch.zeros(rows, TOK.vocab_size)
    for i, (token, _) in enumerate(draft[:agree]):
        logits[first + i, token] = 30.0  # the model agrees with the draft here (all but surely)
    params = SamplingParams(temperature=1.0, seed=7)
    streams = params.streams()
    chosen = decoding.choose(logits, params, streams)
    reference = params.streams()
    expected = []
    for i in range(len(draft) + 1):
        if i < len(draft) and draft[i][1]:
            expected.append(draft[i][0])  # fed syntax: no draw
            continue
        probs = torch.softmax(logits[first + i], dim=-1)
        expected.append(int(torch.multinomial(probs, 1, generator=reference(0))))
        if i == len(draft) or expected[-1] != draft[i][0]:
            break
    assert chosen[first : first + len(expected)] == expected
    assert all(token is None for token in chosen[first + len(expected) : first + len(draft) + 1])
    assert torch.equal(streams(0).get_state(), reference(0).get_state())


def test_layout_truncate_takes_back_only_the_last_slots_of_one_thread():
    layout = Layout(3)
    layout.append(0, 2)
    chunk = layout.fork(4)
    layout.append(chunk, 1)
    with pytest.raises(ValueError, match="not all thread 0"):
        layout.truncate(0, 1)
    layout.append(0, 3)
    position = layout.threads[0].next_position
    layout.truncate(0, 2)
    assert len(layout) == 3 + 2 + 1 + 1 and layout.threads[0].next_position == position - 2
    assert layout.append(0, 1) == [7] and layout.positions[7] == position - 2


@pytest.mark.slow
def test_on_the_real_model_drafts_change_no_token_in_fp32():
    """The default model forks AlpacaEval instruction 0 into a counted list; in fp32 its answer with drafts is the
    one without, in fewer forward passes."""
    from pasta.data.sources import alpaca_eval_prompts

    torch.set_num_threads(1)
    interp = Interpreter.from_pretrained(None, dtype="float32")
    ids = interp.prompt_ids(alpaca_eval_prompts()[0])
    on = interp.generate(ids, limits=DecodeLimits(max_new_tokens=384))
    off = interp.generate(ids, limits=DecodeLimits(max_new_tokens=384, draft_promises=False))
    assert on.annotated == off.annotated and on.stats.tokens == off.stats.tokens
    assert on.stats.drafted > 0 and on.stats.steps < off.stats.steps


def test_the_first_promise_drafts_the_count_the_model_records():
    """draft_tokens (pasta_decoding.json): the first promise's draft carries the count too; a wrong count is only a
    draft the model cuts short."""
    on = drive_script(MAIN, CHUNKS, DecodeLimits(outline_topics=True, draft_tokens=5), tokenizer=TOK)
    off = drive_script(MAIN, CHUNKS, NO_DRAFTS, tokenizer=TOK)
    assert on.stitch() == off.stitch() and on.drafted == 3 * len('1. <p5"/>')
    wrong = drive_script(MAIN, CHUNKS, DecodeLimits(outline_topics=True, draft_tokens=7), tokenizer=TOK)
    assert wrong.stitch() == off.stitch() and wrong.drafted == on.drafted - len('5"/>')


def test_draft_tokens_is_a_recorded_convention_and_is_checked():
    from pasta.interpreter import check_decoding_conventions

    assert DecodeLimits().resolved({"draft_tokens": 30}).draft_tokens == 30
    assert DecodeLimits().resolved({}).draft_tokens == 0  # unknown: the model writes the first count itself
    assert DecodeLimits(draft_tokens=10).resolved({"draft_tokens": 30}).draft_tokens == 10  # the request wins
    assert check_decoding_conventions({"draft_tokens": 30}, "f") == {"draft_tokens": 30}
    for bad, message in ((2.5, "must be an integer"), (True, "must be an integer"), (-1, r"\[0, 100000\]")):
        with pytest.raises(ValueError, match=message):
            check_decoding_conventions({"draft_tokens": bad}, "f")


def test_the_drafted_list_numbers_are_counted_apart_from_the_tag_syntax():
    """drafted_plain: the confirmed drafted tokens that are plain text (the list number '2. '), so a speedup can be
    charged for them as a decoder without drafts would (bench: speedup_drafted_plain_charged)."""
    on = drive_script(MAIN, CHUNKS, DecodeLimits(outline_topics=True, draft_tokens=5), tokenizer=TOK)
    assert on.drafted_plain == 3 * len("1. ") and on.drafted == 3 * len('1. <p5"/>')
    parted = drive_script(PARTING[2], CHUNKS, OUTLINED, tokenizer=TOK)  # "2. Also: <promise": parts after "2. "
    assert parted.drafted_plain == len("1. ") + len("2. ") + len("3. ")
