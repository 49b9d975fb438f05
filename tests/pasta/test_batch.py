"""Cross-request batching is exact and isolated: a request decoded together with others produces the same
logits (fp32 tolerance) and the same greedy text as when it is decoded alone, through forks, syncs and limits,
and requests that join and leave mid-way disturb no one."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.sampling import SamplingParams
from pasta.engine import Engine, EngineConfig, Sequence
from pasta.slot_cache import SlotCacheConfig

TOK = ByteTokenizer()
TEACHERS = [
    'Tips:\n<promise topic="a" tokens="5"/><async>one two three four</async> and '
    '<promise topic="b" tokens="3"/><async>beta</async><sync/>Next <promise topic="c"/><async>gamma!</async>end',
    'x<promise topic="long" tokens="1"/><async>a much longer body than reserved</async>y<sync/>z',
    "a plain answer with no annotations",
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _requests(interp):
    """A mix: teacher-forced async programs (forks, syncs, overflow) and free-running requests."""
    out = []
    for i, teacher in enumerate(TEACHERS):
        out.append(dict(prompt=interp.prompt_ids(f"q{i}"), teacher=teacher, sampling=SamplingParams()))
    out.append(dict(prompt=interp.prompt_ids("free greedy"), teacher=None, sampling=SamplingParams()))
    out.append(dict(prompt=interp.prompt_ids("free sampled " * 5), teacher=None,
                    sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=7)))
    out.append(dict(prompt=interp.prompt_ids("seq"), teacher=TEACHERS[0], sampling=SamplingParams(), mode="sequential"))
    return out


def _seq(interp, req):
    decoding = interp.start(req["prompt"], teacher=req["teacher"], mode=req.get("mode", "async"))
    return Sequence(decoding, sampling=req["sampling"], record_logits=True)


def _assert_same(a: Sequence, b: Sequence):
    assert a.status == b.status == "done"
    assert a.result.annotated == b.result.annotated
    assert a.result.text == b.result.text
    assert len(a.logits) == len(b.logits) > 0
    for (ta, la), (tb, lb) in zip(a.logits, b.logits):
        assert ta == tb
        torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mistral"])
def test_concurrent_equals_alone(family):
    interp = Interpreter(tiny_model(family), TOK, limits=DecodeLimits(max_new_tokens=48))
    reqs = _requests(interp)
    # Small pages: requests' pages interleave in the shared buffer, and the buffer has to grow.
    config = EngineConfig(max_batch=8, cache=SlotCacheConfig(page_size=8, initial_pages=2))
    alone = []
    for req in reqs:
        engine = Engine(interp.model, config)
        alone.append(engine.add(_seq(interp, req)))
        engine.run_all()
    engine = Engine(interp.model, config)
    together = [engine.add(_seq(interp, req)) for req in reqs]
    engine.run_all()
    assert engine.pool.used == 0  # every page came back
    assert len(alone) == len(together) == len(reqs)
    for a, b in zip(alone, together):
        _assert_same(a, b)


def test_batched_equals_single_request_interpreter():
    interp = Interpreter(tiny_model("qwen2"), TOK, limits=DecodeLimits(max_new_tokens=40))
    reqs = _requests(interp)
    engine = Engine(interp.model, EngineConfig(cache=SlotCacheConfig(page_size=16, initial_pages=4)))
    seqs = [engine.add(_seq(interp, r)) for r in reqs]
    engine.run_all()
    for req, seq in zip(reqs, seqs):
        ref = interp.generate(req["prompt"], teacher=req["teacher"], sampling=req["sampling"],
                              mode=req.get("mode", "async"), record_logits=True)
        assert seq.result.annotated == ref.annotated
        assert len(seq.logits) == len(ref.logits) > 0
        for (ta, la), (tb, lb) in zip(seq.logits, ref.logits):
            assert ta == tb
            torch.testing.assert_close(la, lb, atol=1e-4, rtol=1e-4)


def test_join_leave_cancel_and_failure_do_not_disturb_others():
    interp = Interpreter(tiny_model("llama"), TOK, limits=DecodeLimits(max_new_tokens=30))
    config = EngineConfig(max_batch=3, cache=SlotCacheConfig(page_size=8, initial_pages=2))
    reqs = _requests(interp)
    engine = Engine(interp.model, config)
    alone = []
    for req in reqs:
        e = Engine(interp.model, config)
        alone.append(e.add(_seq(interp, req)))
        e.run_all()
    seqs = [engine.add(_seq(interp, reqs[0])), engine.add(_seq(interp, reqs[1]))]
    victim = engine.add(_seq(interp, reqs[3]))
    broken = engine.add(_seq(interp, reqs[4]))
    broken.decoding.advance = lambda sampled: (_ for _ in ()).throw(RuntimeError("boom"))  # fails at its 1st step
    engine.step()
    engine.step()
    engine.cancel(victim)
    assert victim.status == "cancelled"
    for req in reqs[2:3] + reqs[5:]:  # late joiners
        seqs.append(engine.add(_seq(interp, req)))
    for _ in range(400):
        if not engine.has_work:
            break
        engine.step()
    assert not engine.has_work and engine.pool.used == 0
    assert broken.status == "failed" and "boom" in str(broken.error)
    assert len(seqs) == 4
    for seq, ref in zip(seqs, [alone[0], alone[1], alone[2], alone[5]]):
        _assert_same(seq, ref)


def test_chunked_prefill_is_exact_and_lets_short_requests_through():
    """A long prompt fed 32 tokens per step gives the logits of a one-step prefill; a short request that arrives
    with it gets its first token after one piece's work, not after the whole prefill's."""
    interp = Interpreter(tiny_model("llama"), TOK, limits=DecodeLimits(max_new_tokens=12))
    long_prompt = interp.prompt_ids("a long document to read first. " * 10)
    short_prompt = interp.prompt_ids("hi")
    assert len(long_prompt) > 300
    runs = {}
    for chunk in (None, 32):
        engine = Engine(interp.model, EngineConfig(prefill_chunk=chunk))
        long = engine.add(Sequence(interp.start(long_prompt, teacher=TEACHERS[0]), record_logits=True))
        short = engine.add(Sequence(interp.start(short_prompt, teacher=TEACHERS[1]), record_logits=True))
        work_before_first_token = None
        while engine.has_work:
            engine.step()
            if work_before_first_token is None and short.decoding.sampled:
                work_before_first_token = engine.tokens_fed
        runs[chunk] = (long, short, work_before_first_token)
    (long_a, short_a, work_a), (long_b, short_b, work_b) = runs[None], runs[32]
    _assert_same(long_a, long_b)
    _assert_same(short_a, short_b)
    assert long_a.decoding.steps == long_b.decoding.steps  # prefill pieces are not decoding steps
    assert work_a >= len(long_prompt)  # unchunked: the short request waits for the whole long prefill
    assert len(short_prompt) <= 32 and work_b <= 32 + len(short_prompt)  # chunked: one piece


def _bf16_requests(interp):
    reqs = _requests(interp)
    reqs.append(dict(prompt=interp.prompt_ids("another free one, longer " * 3), teacher=None, sampling=SamplingParams()))
    return reqs


def test_batch_invariant_mode_is_bitwise_the_request_alone_in_bf16():
    """With `batch_invariant`, every answer and every logit equals decoding the request alone with the
    interpreter, bit for bit, in bf16 and with requests joining mid-way."""
    interp = Interpreter(tiny_model("llama", dtype=torch.bfloat16), TOK, limits=DecodeLimits(max_new_tokens=40))
    reqs = _bf16_requests(interp)
    engine = Engine(interp.model, EngineConfig(max_batch=4, batch_invariant=True))
    seqs = [engine.add(_seq(interp, r)) for r in reqs[:3]]
    engine.step()
    engine.step()
    seqs += [engine.add(_seq(interp, r)) for r in reqs[3:]]
    engine.run_all()
    for req, seq in zip(reqs, seqs, strict=True):
        alone = interp.generate(req["prompt"], teacher=req["teacher"], sampling=req["sampling"],
                                mode=req.get("mode", "async"), record_logits=True)
        assert seq.status == "done" and seq.result.annotated == alone.annotated
        assert len(seq.logits) == len(alone.logits) > 0
        for (ta, la), (tb, lb) in zip(seq.logits, alone.logits):
            assert ta == tb and torch.equal(la, lb)


def test_default_mode_no_token_crosses_requests_in_bf16(monkeypatch):
    """What the shared forward pass guarantees in any dtype: a request's rows of the step mask are true only on its
    own slots (its page table), so no request ever attends to another's tokens."""
    interp = Interpreter(tiny_model("llama", dtype=torch.bfloat16), TOK, limits=DecodeLimits(max_new_tokens=30))
    engine = Engine(interp.model, EngineConfig(max_batch=8, cache=SlotCacheConfig(page_size=8, initial_pages=2)))
    captured = []
    real_call, real_forward = engine.runner.forward, engine._forward

    def forward(batch, space):
        captured.append({"spans": [(seq, len(inputs.token_ids), set(seq.table.prefix(inputs.slots[-1] + 1).tolist()))
                                   for seq, inputs in batch]})
        return real_forward(batch, space)

    def mask_spy(token_ids, positions, visibility, **kwargs):
        captured[-1]["mask"] = visibility.clone()
        return real_call(token_ids, positions, visibility, **kwargs)

    monkeypatch.setattr(engine.runner, "forward", mask_spy)
    engine._forward = forward
    seqs = [engine.add(_seq(interp, r)) for r in _bf16_requests(interp)]
    engine.run_all()
    assert all(s.status == "done" for s in seqs)
    multi = 0
    for step in captured:
        mask, start = step["mask"], 0
        multi += len(step["spans"]) > 1
        for seq, n_rows, own in step["spans"]:
            reached = set(torch.nonzero(mask[start : start + n_rows].any(dim=0)).flatten().tolist())
            assert reached and reached <= own, (seq.id, sorted(reached - own)[:5])
            start += n_rows
    assert multi > 5  # requests really shared steps
