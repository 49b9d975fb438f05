"""The compiled forward pass (`Interpreter(compile=True)`: torch.compile with symbolic shapes) is exact against the
naive oracle in fp32, through forks, syncs and a reservation overflow, and one compiled graph serves every step."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.reference import reference_generate

TOK = ByteTokenizer()
TEACHER = ('Tips:\n<promise topic="a" tokens="5"/><async>one two three four</async> and '
           '<promise topic="b" tokens="1"/><async>a body longer than reserved</async><sync/>Next end')


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_engine_matches_the_oracle():
    torch.set_num_threads(1)
    model = tiny_model("llama")
    interp = Interpreter(model, TOK, compile=True)
    assert interp.runner.compiled and interp.runner._target is not model
    prompt = interp.prompt_ids("q")
    oracle = reference_generate(interp.runner, interp.start(prompt, teacher=TEACHER))  # the oracle runs compiled too
    eager = reference_generate(Interpreter(model, TOK).runner, interp.start(prompt, teacher=TEACHER))
    for runs in range(2):  # the second run reuses the compiled graph
        fast = interp.generate(prompt, teacher=TEACHER, record_logits=True)
        assert fast.annotated == TEACHER and fast.stats.threads == 2
        assert len(fast.logits) == len(oracle) == len(eager) > 10
        for (ta, a), (tb, b), (tc, c) in zip(fast.logits, oracle, eager):
            assert ta == tb == tc
            torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)  # compiled engine vs the eager naive oracle
            torch.testing.assert_close(b, c, atol=1e-5, rtol=1e-5)
