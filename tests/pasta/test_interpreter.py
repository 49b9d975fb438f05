"""The cached engine is exact: every thread's next-token logits at every step equal the naive oracle's
(full recomputation, no cache, the Hugging Face module itself) across fork, sync, reservation overflow and limits,
on Llama, Qwen2/3 (our own forward pass, pasta.llama_forward), Gemma, Mistral and Phi-3 (the Hugging Face one)."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits, Decoding
from pasta.interpreter import Interpreter
from pasta.lang import is_valid
from pasta.layout import LayoutConfig
from pasta.reference import reference_generate
from pasta.sampling import SamplingParams

TOK = ByteTokenizer()

TEACHERS = {
    "two-chunks-then-more": (
        'Tips:\n<promise topic="a" tokens="5"/><async>one two three four five six</async> and '
        '<promise topic="b" tokens="3"/><async>beta</async><sync/>Next <promise topic="c"/><async>gamma!</async>end'
    ),
    # tokens="1": the chunk runs far past its reservation into the main thread's positions.
    "overflow": 'x<promise topic="long" tokens="1"/><async>a much longer body than reserved</async>y<sync/>z',
    "unicode": 'Pi: <promise topic="é" tokens="4"/><async>π ≈ 3.14 — ünïcödé</async><sync/>ok ✓',
    "no-chunks": "a plain answer with no annotations at all",
    "sync-only": "a<sync/>b<sync/>c",
}


def _interp(family="llama", **kw) -> Interpreter:
    return Interpreter(tiny_model(family), TOK, **kw)


def _assert_same_trace(engine_trace, oracle_trace, atol=1e-4):
    assert len(engine_trace) == len(oracle_trace)
    for step, ((threads_a, logits_a), (threads_b, logits_b)) in enumerate(zip(engine_trace, oracle_trace)):
        assert threads_a == threads_b, f"step {step}: threads {threads_a} vs {threads_b}"
        torch.testing.assert_close(logits_a, logits_b, atol=atol, rtol=1e-4, msg=f"step {step}")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "gemma3", "mistral", "phi3"])
@pytest.mark.parametrize("teacher", sorted(TEACHERS))
def test_engine_matches_oracle_teacher_forced(family, teacher):
    interp = _interp(family)
    prompt = interp.prompt_ids("hello there")
    result = interp.generate(prompt, teacher=TEACHERS[teacher], record_logits=True)
    assert result.annotated == TEACHERS[teacher]
    oracle = reference_generate(interp.runner, interp.start(prompt, teacher=TEACHERS[teacher]))
    _assert_same_trace(result.logits, oracle)


@pytest.mark.parametrize("limits", [
    DecodeLimits(max_threads=1),
    DecodeLimits(max_threads=2, max_thread_tokens=7),
    DecodeLimits(max_new_tokens=40),
])
def test_engine_matches_oracle_under_limits(limits):
    interp = _interp("llama", limits=limits)
    prompt = interp.prompt_ids("q")
    teacher = (
        '<promise topic="a" tokens="4"/><async>first chunk body</async>'
        '<promise topic="b" tokens="4"/><async>second chunk body</async>'
        '<promise topic="c" tokens="4"/><async>third chunk</async><sync/>tail'
    )
    result = interp.generate(prompt, teacher=teacher, record_logits=True)
    oracle = reference_generate(interp.runner, interp.start(prompt, teacher=teacher))
    _assert_same_trace(result.logits, oracle)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_engine_matches_oracle_free_running(family):
    interp = _interp(family, limits=DecodeLimits(max_new_tokens=30))
    prompt = interp.prompt_ids("free")
    sampling = SamplingParams(temperature=0.9, top_p=0.9, seed=3)
    result = interp.generate(prompt, sampling=sampling, record_logits=True)
    oracle = reference_generate(interp.runner, interp.start(prompt), sampling)
    _assert_same_trace(result.logits, oracle)
    again = interp.generate(prompt, sampling=sampling)
    assert again.text == result.text  # a seed makes sampling reproducible


def test_thread_limit_does_not_change_any_thread():
    """Positions and visibility are fixed at the promise, so a chunk that waits for a slot decodes the same."""
    teacher = TEACHERS["two-chunks-then-more"]
    by_thread = []
    for max_threads in (8, 1):
        interp = _interp("qwen2", limits=DecodeLimits(max_threads=max_threads))
        result = interp.generate(interp.prompt_ids("p"), teacher=teacher)
        per_thread: dict[int, list[float]] = {}
        for _, thread, logprob in result.logprobs:
            per_thread.setdefault(thread, []).append(logprob)
        by_thread.append(per_thread)
    assert by_thread[0].keys() == by_thread[1].keys()
    for thread in by_thread[0]:
        assert by_thread[0][thread] == pytest.approx(by_thread[1][thread], abs=1e-5)


def test_sequential_mode_same_answer_one_token_per_step():
    interp = _interp("llama")
    teacher = TEACHERS["two-chunks-then-more"]
    parallel = interp.generate("p", teacher=teacher)
    sequential = interp.generate("p", teacher=teacher, mode="sequential")
    assert sequential.text == parallel.text
    assert sequential.annotated == parallel.annotated == teacher
    assert sequential.stats.steps == sequential.stats.tokens
    assert parallel.stats.steps < sequential.stats.steps
    assert parallel.stats.theoretical_speedup == pytest.approx(parallel.stats.tokens / parallel.stats.steps)
    # With no thread limit, the measured steps are the critical path; sequential reports the same structure.
    assert parallel.stats.critical_path == parallel.stats.steps == sequential.stats.critical_path
    # Same log-probs for every thread's tokens, whatever the schedule.
    lp = lambda r: sorted((t, round(v, 4)) for _, t, v in r.logprobs)  # noqa: E731
    assert lp(parallel) == lp(sequential)


def test_kv_cache_holds_exactly_prompt_and_generated_tokens():
    interp = _interp("llama")
    teacher = TEACHERS["two-chunks-then-more"]
    prompt = interp.prompt_ids("hello")
    decoding = interp.start(prompt, teacher=teacher)
    result = interp.run(decoding)
    generated = sum(len(t.tokens) for t in decoding.threads)  # forced <async> + sampled, EOS excluded
    # The last token of the main thread (EOS) is never fed, nor a closing tag no sync ever needed (chunk c).
    unfed = sum(1 for t in decoding.threads[1:] if t.pending)
    assert result.stats.cache_tokens == len(prompt) + generated - unfed
    assert result.stats.cache_tokens == len(decoding.layout)
    # Each chunk's tokens appear once in the layout: no prefix was copied per thread.
    assert sorted(decoding.layout.slot_thread).count(0) == len(prompt) + len(decoding.threads[0].tokens)


def test_reservation_and_join_positions():
    interp = _interp("llama", layout_config=LayoutConfig(reserve_factor=2.0, default_tokens=10))
    teacher = 'a<promise topic="x" tokens="3"/><async>012345678901</async>b<promise topic="y"/><async>z</async><sync/>c'
    decoding = interp.start(interp.prompt_ids("p"), teacher=teacher)
    interp.run(decoding)
    layout = decoding.layout
    main_slots = layout.threads[0].slots
    chunk_x = layout.threads[1].slots
    chunk_y = layout.threads[2].slots
    promise_x_end = layout.positions[chunk_x[0]] - 1
    assert decoding.threads[1].trace.reserved == 6 and decoding.threads[2].trace.reserved == 20
    # The main thread continues after the 6 reserved positions of chunk x.
    main_positions = [layout.positions[s] for s in main_slots]
    assert promise_x_end + 1 + 6 in main_positions
    # Chunk x (7 + 12 + 8 = 27 tokens) overflows its reservation: its positions run on contiguously.
    xs = [layout.positions[s] for s in chunk_x]
    assert xs == list(range(xs[0], xs[0] + len(xs)))
    # After the sync the main thread continues past everything it joined.
    last_main = layout.positions[main_slots[-1]]
    assert last_main > max(xs) and last_main > max(layout.positions[s] for s in chunk_y)


# -- robustness ----------------------------------------------------------------------------------------------

def _run_forced(interp, main_text, chunks=(), eos_in=None, limits=None):
    enc = lambda s: TOK.encode(s, add_special_tokens=False)  # noqa: E731
    forced_chunks = [enc(c) for c in chunks]
    if eos_in is not None:
        forced_chunks[eos_in] = forced_chunks[eos_in][:12] + [TOK.eos_token_id]
    decoding = Decoding(
        interp.prompt_ids("p"), TOK, eos_ids={TOK.eos_token_id}, limits=limits or interp.limits,
        layout_config=interp.layout_config,
        forced_main=enc(main_text) + [TOK.eos_token_id], forced_chunks=forced_chunks,
    )
    result = interp.run(decoding)
    return decoding, result


def test_stray_and_misplaced_tags_are_ignored_without_losing_text():
    interp = _interp("llama")
    main = 'A </async> B <async> C <promise topic="t" tokens="2"/> D <sync/> E <sync/> F'
    chunk = '<async>in <promise topic="n"/> side <sync/> <async> x</async>'
    decoding, result = _run_forced(interp, main, [chunk])
    assert result.text == "A  B  C in  side   x D  E  F"
    assert result.annotated == 'A </async> B <async> C <promise topic="t" tokens="2"/>' + chunk + " D <sync/> E <sync/> F"
    joined = " ".join(result.stats.warnings)
    for tag in ("</async>", "<async>", '<promise topic="n"/>', "<sync/>"):
        assert repr(tag) in joined
    assert len(decoding.threads) == 2  # the promise inside the chunk did not fork


def test_absurd_tokens_are_clamped_and_missing_tokens_use_default():
    interp = _interp("llama", layout_config=LayoutConfig(default_tokens=16, max_reserve=50))
    main = '<promise topic="a" tokens="99999999"/><promise topic="b" tokens="-4"/><promise topic="c"/><sync/>'
    decoding, result = _run_forced(interp, main, ["<async>1</async>", "<async>2</async>", "<async>3</async>"])
    reserved = [t.trace.reserved for t in decoding.threads[1:]]
    assert reserved == [32, 32, 32]  # lang reads out-of-range tokens as missing -> default 16 x factor 2
    assert result.text == "123"
    assert sum("unusable tokens" in w for w in result.stats.warnings) == 2


def test_unclosed_chunk_hits_thread_budget_and_eos_closes_a_chunk():
    interp = _interp("llama", limits=DecodeLimits(max_thread_tokens=20))
    main = 'go <promise topic="a"/><promise topic="b"/><sync/>end'
    decoding, result = _run_forced(interp, main, ["<async>" + "x" * 40, "<async>short</async>"])
    a, b = decoding.threads[1], decoding.threads[2]
    assert a.trace.close_reason == "budget" and a.trace.sampled == 20
    assert b.trace.close_reason == "closed"
    assert result.text == "go " + "x" * 20 + "shortend"
    assert result.annotated.count("</async>") == 2  # the missing close tag is restored in storage form
    interp2 = _interp("llama")
    decoding, result = _run_forced(interp2, main, ["<async>abcdefghijklmnop</async>", "<async>q</async>"], eos_in=0)
    assert decoding.threads[1].trace.close_reason == "eos"
    assert result.text == "go abcdeqend"


def test_request_budget_stops_everything_and_keeps_text():
    interp = _interp("llama", limits=DecodeLimits(max_new_tokens=25))
    main = 'intro <promise topic="a"/>middle text that is long <sync/> end'
    decoding, result = _run_forced(interp, main, ["<async>chunk body that is long</async>"])
    assert decoding.sampled == 25
    assert all(t.state == "done" for t in decoding.threads)
    assert result.text.startswith("intro ")
    assert any("max_new_tokens" in w for w in result.stats.warnings)
    assert is_valid(result.annotated)  # a budget stop leaves valid Pasta-Lang (chunks closed, cut tags dropped)


def test_request_budget_right_after_a_promise():
    """The budget can end the request after a promise was read but before its chunk could fork."""
    main = 'ab<promise topic="x"/>cd'
    budget = len(TOK.encode('ab<promise topic="x"/>', add_special_tokens=False))
    interp = _interp("llama", limits=DecodeLimits(max_new_tokens=budget))
    decoding, result = _run_forced(interp, main, ["<async>never</async>"])
    assert len(decoding.threads) == 1 and result.text == "ab"
    assert result.annotated == "ab"  # the promise never forked: dropped, and said so
    assert any("no chunk; dropped" in w for w in result.stats.warnings)
    assert result.stats.critical_path == budget


def test_a_tag_cut_by_the_budget_is_not_shown_as_text():
    interp = _interp("llama", limits=DecodeLimits(max_new_tokens=10, max_thread_tokens=12))
    decoding, result = _run_forced(interp, 'intro <promise topic="long topic"/>', [])
    assert result.text == "intro "  # the half-written '<prom' is markup, not content
    assert result.annotated == "intro "  # the storage form stays valid Pasta-Lang
    assert any("unfinished tag '<pro'" in w for w in result.stats.warnings)
    interp = _interp("llama", limits=DecodeLimits(max_thread_tokens=12))
    decoding, result = _run_forced(interp, 'a<promise topic="t"/><sync/>b', ["<async>body text</async>"])
    assert result.text == "abody textb"  # the chunk was cut at '</a'; only its text is shown
    assert decoding.threads[1].trace.close_reason == "budget"


def test_main_eos_waits_for_outstanding_chunks():
    interp = _interp("llama")
    decoding, result = _run_forced(interp, 'a<promise topic="t"/>', ["<async>" + "b" * 20 + "</async>"])
    assert result.text == "a" + "b" * 20
    assert decoding.threads[1].trace.close_reason == "closed"


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="max_threads"):
        DecodeLimits(max_threads=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="reserve_factor"):
        LayoutConfig(reserve_factor=0)
    interp = _interp("llama")
    with pytest.raises(ValueError, match="empty prompt"):
        interp.start([])
    with pytest.raises(ValueError, match="mode"):
        interp.start([1, 2], mode="fast")


def test_concurrent_calls_on_one_interpreter_take_turns():
    """The interpreter keeps one engine: calls from several threads are serialized, each gets its own answer."""
    import threading

    interp = _interp("llama")
    prompt = interp.prompt_ids("p")
    alone = interp.generate(prompt, teacher=TEACHERS["two-chunks-then-more"]).annotated
    results, errors = [], []

    def worker():
        try:
            results.append(interp.generate(prompt, teacher=TEACHERS["two-chunks-then-more"]).annotated)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [alone] * 4
    assert interp._engine.pool.used == 0  # every request's pages came back
