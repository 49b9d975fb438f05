"""On-policy self-distillation: which of the model's own answers are worth training on, and the generator writes
each prompt's answer as the interpreter decodes it alone, resumably."""

from __future__ import annotations

import json

import pytest
from tiny import ByteTokenizer, tiny_model

from pasta.data.onpolicy import (OnPolicyConfig, copies_a_chunk, generate, guarded_fork_prompts, keep_reason, kept_rows,
                                 plain_fallback_rows)
from pasta.data.sources import Example
from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter

GOOD = ('Tips:\n\nOverview: Sleep; Food.\n\n1. <promise topic="1/2 Sleep" tokens="10"/><async>Sleep: go to bed at '
        'the same time every night.</async>\n2. <promise topic="2/2 Food" tokens="10"/><async>Food: eat vegetables '
        'and drink water with every meal.</async>\n<sync/>These habits help you feel better.')


def _row(annotated=GOOD, **stats):
    base = dict(finish_reason="eos", guards=[], repetition=0.05, reaches_sync=True, duplicate_chunks=0)
    base.update(stats)
    return {"id": "x", "prompt": "Tips?", "annotated": annotated, "warnings": [], "stats": base}


def test_a_clean_answer_is_kept_and_a_guard_corrected_one_too():
    assert keep_reason(_row()) is None
    assert keep_reason(_row(guards=["outline_repeat: outline item 'Food' repeats; outline ended",
                                    'outline_done: <promise topic="3/2" tokens="1"/>; forced <sync/>'])) is None
    assert keep_reason(_row("Just a plain answer.", reaches_sync=None)) is None
    stray = {**_row(GOOD + "</sync>"), "warnings": ["thread 0: tag '</sync>' closes nothing (Pasta-Lang has no such "
                                                    "tag); dropped from the answer; ignored"]}
    assert keep_reason(stray) is None  # the interpreter dropped it from the answer; training data leaves it out


@pytest.mark.parametrize("row, reason", [
    (_row(finish_reason="length"), "truncated"),
    ({**_row(), "warnings": ["thread 0: tag '</async>' is not valid in the main thread; ignored"]}, "malformed tag"),
    (_row(guards=["repeated_topic: 'Sleep'"]), "other guard"),
    (_row(repetition=0.4), "repetitive"),
    (_row(reaches_sync=False), "no sync"),
    (_row(GOOD.replace("eat vegetables and drink water with every meal", "go to bed at the same time every night")),
     "duplicate chunks"),
    (_row(GOOD.split("\n2.")[0] + "\n<sync/>Done."), "one chunk"),
    (_row(GOOD.replace("These habits help you feel better.", "Food: eat vegetables and drink water with every meal.")),
     "conclusion copies a chunk"),
    (_row(""), "empty"),
    (_row(GOOD.replace("Sleep; Food.", "Sleep; Food; Sleep.")), "outline repeats an item"),
    (_row(GOOD.replace("Sleep; Food.", "Sleep; Food; Walks.")), "outline and promises differ"),
])
def test_answers_not_worth_training_on_say_why(row, reason):
    assert keep_reason(row) == reason


def test_rejection_sampling_drops_guard_corrected_answers_slow_forks_run_on_chunks_and_plain_answers_when_asked():
    corrected = _row(guards=["outline_repeat: outline item 'Food' repeats; outline ended"], theoretical_speedup=1.6)
    strict = OnPolicyConfig(keep_guarded=False, min_fork_speedup=1.3)
    assert keep_reason(corrected) is None
    assert keep_reason(corrected, strict) == "guard corrected"
    assert keep_reason(_row(theoretical_speedup=1.2)) is None
    assert keep_reason(_row(theoretical_speedup=1.2), strict) == "slow fork"
    assert keep_reason(_row(theoretical_speedup=1.3), strict) is None
    assert keep_reason(_row(), strict) == "slow fork"  # no speedup recorded: no evidence the fork pays
    assert keep_reason(_row("Just a plain answer.", reaches_sync=None), strict) is None  # plain answers stay
    forks_only = OnPolicyConfig(keep_plain=False)
    assert keep_reason(_row("Just a plain answer.", reaches_sync=None), forks_only) == "plain left out"
    assert keep_reason(_row(), forks_only) is None
    runs_on = _row(GOOD.replace("every night.</async>", "every night.\n2. Food: eat well.</async>"))
    assert keep_reason(runs_on) is None
    assert keep_reason(runs_on, OnPolicyConfig(one_item_per_chunk=True)) == "chunk writes a further item"
    sub_list = _row(GOOD.replace("every night.</async>", "every night:\n- no screens\n- a dark room</async>"))
    assert keep_reason(sub_list, OnPolicyConfig(one_item_per_chunk=True)) is None  # a chunk's own bullets are fine
    with pytest.raises(ValueError, match="min_fork_speedup"):
        OnPolicyConfig(min_fork_speedup=0.5)


def test_a_conclusion_copies_a_chunk_only_with_a_long_shared_run_of_words():
    assert not copies_a_chunk(GOOD)
    assert copies_a_chunk(GOOD.replace("These habits", "Sleep: go to bed at the same time every night. These"))
    assert not copies_a_chunk(GOOD.replace("These habits", "Go to bed early. These"))  # a short echo is fine


def test_kept_rows_count_every_reason_and_skip_bad_rows(tmp_path):
    path = tmp_path / "answers.jsonl"
    rows = [_row(), _row("Plain.</sync>", reaches_sync=None), _row(finish_reason="length")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    kept, reasons = kept_rows(path)
    assert [k["annotated"] for k in kept] == [GOOD, "Plain."]
    assert reasons == {"kept (forked)": 1, "kept (plain)": 1, "truncated": 1, "bad row": 1}


def test_generate_writes_what_the_interpreter_decodes_alone_and_resumes(tmp_path):
    interp = Interpreter(tiny_model(seed=3), ByteTokenizer(), limits=DecodeLimits(max_new_tokens=24))
    examples = [Example(id=f"e{i}", prompt=f"question {i}?", response="", source="test") for i in range(5)]
    out = tmp_path / "answers.jsonl"
    config = OnPolicyConfig(max_new_tokens=24, max_batch=3)
    stats = generate(interp, examples[:3], out, config, progress=False)
    assert stats.generated == 3
    stats = generate(interp, examples, out, config, progress=False)
    assert (stats.generated, stats.skipped_done) == (2, 3)  # a rerun answers only the new prompts
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == [e.prompt for e in examples]
    for row in rows:
        alone = interp.generate(row["prompt"], limits=DecodeLimits(max_new_tokens=24))
        assert row["annotated"] == alone.annotated
        assert row["stats"]["finish_reason"] == alone.stats.finish_reason
    with pytest.raises(ValueError, match="max_batch"):
        OnPolicyConfig(max_batch=0)


def test_guarded_forks_get_a_plain_fallback_target_and_nothing_else_does(tmp_path):
    answers = tmp_path / "onpolicy.jsonl"
    rows = [
        {**_row(promises=2, guards=["outline_repeat: outline item 'Food' repeats; outline ended"]), "prompt": "A?"},
        {**_row(promises=2, guards=["repeated_topic: 'Sleep'"], finish_reason="length"), "prompt": "B?"},
        {**_row(promises=2), "prompt": "C?"},  # a clean fork: no fallback needed
        {**_row("Plain.", promises=0, guards=["idle_sync: <sync/> repeated"]), "prompt": "D?"},  # never forked
        {**_row(promises=2, guards=["outline_done: x"]), "prompt": "A?"},  # a prompt counts once
    ]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert [e.prompt for e in guarded_fork_prompts(answers)] == ["A?", "B?"]
    distilled = tmp_path / "fallback.jsonl"
    plain = [("A?", "Sleep well and eat vegetables.", "eos", 0.0),
             ("B?", "Sleep and sleep and sleep and sleep and sleep and sleep and sleep.", "eos", 0.6),  # repetitive
             ("E?", "An unfinished", "length", 0.0),
             ("F?", 'Tips <promise topic="1/1 x" tokens="3"/><async>y</async><sync/>', "eos", 0.0),  # not plain
             ("G?", "I'm sorry, but as a chatbot I don't have the capability to do that.", "eos", 0.0)]  # evasive
    distilled.write_text("".join(json.dumps({"id": f"distill-{i}", "prompt": q, "response": a, "finish": f,
                                             "repetition": r, "source": "self-distill:x"}) + "\n"
                                 for i, (q, a, f, r) in enumerate(plain)))
    assert [r["prompt"] for r in plain_fallback_rows(distilled)] == ["A?", "G?"]
    assert plain_fallback_rows(distilled, drop_evasive=True) == [{"id": "fallback-0", "prompt": "A?", "source": "plain-fallback:self-distill:x",
                                               "annotated": "Sleep well and eat vegetables."}]


@pytest.mark.parametrize("text, is_evasive", [
    ("I'm sorry for any confusion, but as a chatbot designed to assist with cooking, I can't provide that.", True),
    ("I'm ready to help. What's your question?", True),
    ("As an AI language model, I do not have the ability to browse.", True),
    ("Here are three tips: sleep, food and walks.", False),
    ("Dear Sam,\n\nThank you for the lovely dinner. " + "We talked for hours. " * 20 + "I'm sorry I left early.", False),
])
def test_evasive_answers_are_dropped_only_when_asked(text, is_evasive):
    row = _row(text, reaches_sync=None)
    assert keep_reason(row) is None
    assert keep_reason(row, OnPolicyConfig(drop_evasive=True)) == ("evasive" if is_evasive else None)


def test_several_samples_per_prompt_are_seeded_resumable_and_reproducible(tmp_path):
    interp = Interpreter(tiny_model(seed=3), ByteTokenizer(), limits=DecodeLimits(max_new_tokens=24))
    examples = [Example(id=f"e{i}", prompt=f"question {i}?", response="", source="test") for i in range(2)]
    config = OnPolicyConfig(max_new_tokens=24, max_batch=3, samples=3, temperature=1.0, seed=5)
    out, again = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert generate(interp, examples[:1], out, config, progress=False).generated == 3
    stats = generate(interp, examples, out, config, progress=False)
    assert (stats.generated, stats.skipped_done) == (3, 1)
    generate(interp, examples, again, OnPolicyConfig(max_new_tokens=24, max_batch=2, samples=3, temperature=1.0,
                                                      seed=5), progress=False)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(rows) == sorted(f"{q}-s{k}" for q in {r["id"].rsplit("-s", 1)[0] for r in rows.values()}
                                  for k in range(3)) and len(rows) == 6
    # Each sample's seed follows from (seed, sample, prompt), not from the batch it decoded in.
    assert {r["id"]: r["annotated"] for r in map(json.loads, again.read_text().splitlines())} == \
           {k: r["annotated"] for k, r in rows.items()}
    assert len({r["annotated"] for r in rows.values() if r["prompt"] == "question 1?"}) > 1  # samples differ
    with pytest.raises(ValueError, match="temperature"):
        OnPolicyConfig(samples=2)


def test_best_per_prompt_keeps_the_fastest_fork_else_a_plain_answer(tmp_path):
    path = tmp_path / "sampled.jsonl"
    rows = [
        {**_row(theoretical_speedup=1.4), "prompt": "A?", "id": "a-s0"},
        {**_row(theoretical_speedup=1.9), "prompt": "A?", "id": "a-s1"},
        {**_row("Plain.", reaches_sync=None), "prompt": "A?", "id": "a-s2"},
        {**_row("Plain B.", reaches_sync=None), "prompt": "B?", "id": "b-s0"},
        {**_row(finish_reason="length"), "prompt": "B?", "id": "b-s1"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, reasons = kept_rows(path, OnPolicyConfig(best_per_prompt=True))
    assert [r["id"] for r in kept] == ["a-s1", "b-s0"]
    assert reasons == {"kept (forked)": 1, "kept (plain)": 1, "not the prompt's best": 2, "truncated": 1}
    assert len(kept_rows(path)[0]) == 4  # without it every clean answer is kept
