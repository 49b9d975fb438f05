"""Per-thread random streams: at a temperature > 0, asynchronous and sequential decoding of one request with one seed
sample the same answer (thread t's i-th token always takes its stream's i-th draw), in the interpreter, the naive
oracle and the batch engine; and streams are independent of each other and reproducible."""

from __future__ import annotations

import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits, Decoding
from pasta.forcing import forced_program
from pasta.interpreter import Interpreter
from pasta.reference import reference_generate
from pasta.sampling import RandomStreams, SamplingParams, sample
from pasta.engine import Engine, Sequence

TOK = ByteTokenizer()
# The main thread is forced (two promises, a sync); both chunks are sampled freely until their budget.
MAIN = ('Intro <promise topic="one" tokens="6"/> <promise topic="two" tokens="6"/>\n<sync/> End.')
LIMITS = DecodeLimits(max_new_tokens=200, max_thread_tokens=12)


def _decoding(interp: Interpreter, mode: str) -> Decoding:
    program = forced_program(TOK, MAIN, eos_id=TOK.eos_token_id)
    return Decoding(interp.prompt_ids("question"), TOK, eos_ids=interp.eos_ids, limits=LIMITS, mode=mode,
                    forced_main=program.main, forced_chunks=[None, None])


def _chunks(decoding: Decoding) -> list[list[int]]:
    return [t.tokens for t in decoding.threads[1:]]


def test_async_and_sequential_sample_the_same_chunks():
    interp = Interpreter(tiny_model("llama"), TOK, limits=LIMITS)
    sampling = SamplingParams(temperature=1.0, seed=1234)
    runs = {}
    for mode in ("async", "sequential"):
        decoding = _decoding(interp, mode)
        interp.run(decoding, sampling=sampling)
        runs[mode] = decoding
    a, s = _chunks(runs["async"]), _chunks(runs["sequential"])
    assert len(a) == 2 and all(len(c) > 3 for c in a)
    assert a == s
    assert a[0] != a[1]  # two streams, not one stream read twice
    assert runs["async"].steps < runs["sequential"].steps  # the two modes did decode differently
    # Another seed samples something else (the test above is not vacuous).
    other = _decoding(interp, "async")
    interp.run(other, sampling=SamplingParams(temperature=1.0, seed=99))
    assert _chunks(other) != a


def test_oracle_and_batch_engine_draw_the_same_streams():
    interp = Interpreter(tiny_model("qwen2"), TOK, limits=LIMITS)
    sampling = SamplingParams(temperature=0.9, top_p=0.9, seed=7)
    fast = _decoding(interp, "async")
    interp.run(fast, sampling=sampling)
    naive = _decoding(interp, "sequential")
    reference_generate(interp.runner, naive, sampling)
    engine = Engine(interp.model)
    batched = engine.add(Sequence(_decoding(interp, "async"), sampling=sampling))
    engine.add(Sequence(_decoding(interp, "sequential"), sampling=SamplingParams(temperature=1.0, seed=5)))
    engine.run_all()
    assert _chunks(fast) == _chunks(naive) == _chunks(batched.decoding)


def test_streams_are_reproducible_and_thread_zero_is_the_plain_seed():
    a, b = RandomStreams(2**64 - 1), RandomStreams(-1)  # the same 64-bit seed, written two ways
    assert torch.equal(torch.rand(4, generator=a(3)), torch.rand(4, generator=b(3)))
    plain = torch.Generator().manual_seed(42)
    assert torch.equal(torch.rand(3, generator=RandomStreams(42)(0)), torch.rand(3, generator=plain))
    s = RandomStreams(42)
    assert not torch.equal(torch.rand(3, generator=s(1)), torch.rand(3, generator=s(2)))
    logits = torch.randn(3, 50)
    params = SamplingParams(temperature=1.0)
    # Row order does not matter: each row draws from its own thread's stream.
    forward = sample(logits, params, RandomStreams(5), [0, 1, 2])
    backward = sample(logits.flip(0), params, RandomStreams(5), [2, 1, 0])
    assert forward == backward[::-1]


def test_generate_compare_samples_the_same_answer_at_temperature(monkeypatch, capsys):
    import json

    from pasta import interpreter
    from pasta.cli import main

    tiny = Interpreter(tiny_model("llama"), TOK, name="tiny")
    monkeypatch.setattr(interpreter.Interpreter, "from_pretrained", lambda *a, **k: tiny)
    assert main(["generate", "hello", "--compare", "--temperature", "1.0", "--max-new-tokens", "24", "--json",
                 "--raw"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(out["seed"], int) and out["same_answer"] is True
