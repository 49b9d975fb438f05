"""Static decode steps (`pasta.step_graphs`, what CUDA graphs replay): padded to a bucket, attending over the whole
cache buffer, they give the naive oracle's logits in fp32 through forks, syncs, a reservation overflow, a cache that
grows mid-request and models with sliding windows. On CPU the static path runs uncaptured; CUDA is measured by
bench/gpu.py --graphs."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.engine import Engine, EngineConfig, Sequence
from pasta.interpreter import Interpreter
from pasta.reference import reference_generate
from pasta.slot_cache import SlotCacheConfig
from pasta.step_graphs import StaticStepRunner

TOK = ByteTokenizer()
# Three chunks decode at once (k = 4 rows with the main thread: bucket 4), then 3 and 2 rows (buckets 4 and 2).
TEACHER = ('Tips:\n<promise topic="a" tokens="5"/><async>one two three four</async> and '
           '<promise topic="b" tokens="1"/><async>a body longer than reserved</async>'
           '<promise topic="c" tokens="3"/><async>x y</async><sync/>Next end')


def _assert_matches_oracle(model, runner_interp, prompt="q"):
    eager = Interpreter(model, TOK)
    ids = eager.prompt_ids(prompt)
    oracle = reference_generate(eager.runner, eager.start(ids, teacher=TEACHER))
    fast = runner_interp.generate(ids, teacher=TEACHER, record_logits=True)
    assert fast.annotated == TEACHER and fast.stats.threads == 3
    assert len(fast.logits) == len(oracle) > 10
    for (ta, a), (tb, b) in zip(fast.logits, oracle):
        assert ta == tb
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "mistral"])
def test_static_steps_match_the_oracle(family):
    model = tiny_model(family)
    interp = Interpreter(model, TOK, cuda_graphs=True)
    runner = interp.runner
    assert isinstance(runner, StaticStepRunner) and not runner.graphs  # CPU: the static path, uncaptured
    _assert_matches_oracle(model, interp)
    # Every decode step was static; only the prompt's prefill ran eagerly.
    assert runner.counts["eager"] == 1 and runner.counts["static"] > 20 and runner.counts["captures"] == 0
    assert {bucket for bucket, _ in runner._steps} >= {1, 2, 4}


def test_free_running_greedy_answer_is_unchanged():
    model = tiny_model("llama", seed=3)
    ids = Interpreter(model, TOK).prompt_ids("hello")
    plain = Interpreter(model, TOK).generate(ids, record_logits=True)
    static = Interpreter(model, TOK, cuda_graphs=True).generate(ids, record_logits=True)
    assert static.annotated == plain.annotated and static.stats.steps == plain.stats.steps
    for (_, a), (_, b) in zip(static.logits, plain.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_cache_that_grows_mid_request_runs_that_step_eagerly_and_stays_exact():
    model = tiny_model("llama")
    runner = StaticStepRunner(model)
    engine = Engine(model, EngineConfig(max_batch=1, prefill_chunk=None,
                                        cache=SlotCacheConfig(page_size=8, initial_pages=2, max_pages=64)),
                    runner=runner)
    interp = Interpreter(model, TOK)
    ids = interp.prompt_ids("q")
    seq = engine.add(Sequence(interp.start(ids, teacher=TEACHER), record_logits=True))
    engine.run_all()
    oracle = reference_generate(interp.runner, interp.start(ids, teacher=TEACHER))
    assert seq.result.annotated == TEACHER and len(seq.logits) == len(oracle)
    for (ta, a), (tb, b) in zip(seq.logits, oracle):
        assert ta == tb
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert engine.pool.capacity_pages > 2  # it did grow, and each growth cost one eager step
    assert runner.counts["eager"] >= 2 and len({capacity for _, capacity in runner._steps}) >= 2


def test_more_rows_than_the_largest_bucket_run_eagerly():
    model = tiny_model("llama")
    runner = StaticStepRunner(model, buckets=(1, 2))
    assert runner.bucket(1) == 1 and runner.bucket(2) == 2 and runner.bucket(3) is None
    interp = Interpreter(model, TOK)
    interp.runner = runner
    _assert_matches_oracle(model, interp)  # the 4- and 3-row steps run eagerly, the rest static
    assert runner.counts["static"] > 0 and runner.counts["eager"] > 1


@pytest.mark.parametrize("buckets", [(), (2, 1), (0, 1), (1, 1)])
def test_bad_buckets_are_refused(buckets):
    with pytest.raises(ValueError, match="buckets"):
        StaticStepRunner(tiny_model("llama"), buckets=buckets)


def test_graphs_need_cuda_and_exclude_compile():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="CUDA device"):
        StaticStepRunner(model, graphs=True)
    with pytest.raises(ValueError, match="choose one of"):
        Interpreter(model, TOK, compile=True, cuda_graphs=True)
