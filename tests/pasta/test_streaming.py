"""`final_prefix`: the streamable part of a running answer only grows, is in reading order, and ends as the
stitched answer; main text before a pending promise streams before the chunk finishes."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.interpreter import Interpreter
from pasta.sampling import SamplingParams
from pasta.streaming import final_prefix

TOK = ByteTokenizer()
TEACHERS = [
    'Intro <promise topic="a" tokens="5"/><async>alpha body here</async> mid '
    '<promise topic="b" tokens="3"/><async>beta</async><sync/>after <promise topic="c"/><async>gamma</async>end',
    'x<promise topic="long" tokens="1"/><async>a body with <sync/> inside and é</async>y<sync/>z<async>stray',
    "plain answer <not a tag> with < and <prom",
    "<promise topic='no close'/><async>never closed",
]


@pytest.fixture(scope="module")
def interp():
    torch.set_num_threads(1)
    return Interpreter(tiny_model("llama"), TOK, limits=DecodeLimits(max_new_tokens=200, max_thread_tokens=40))


def _trace(interp, prompt, **kw):
    seen: list[tuple[str, str]] = []
    result = interp.generate(prompt, on_step=lambda d: seen.append((final_prefix(d), final_prefix(d, annotated=True))), **kw)
    return result, seen


@pytest.mark.parametrize("teacher", TEACHERS)
@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_prefix_grows_and_ends_as_stitched(interp, teacher, mode):
    result, seen = _trace(interp, interp.prompt_ids("q"), teacher=teacher, mode=mode)
    for (a, aa), (b, bb) in zip(seen, seen[1:]):
        assert b.startswith(a) and bb.startswith(aa)
    assert seen[-1] == (result.text, result.annotated)


def test_main_text_streams_before_the_chunk_is_done(interp):
    teacher = 'Intro <promise topic="a" tokens="5"/><async>' + "x" * 30 + "</async> tail<sync/>end"
    result, seen = _trace(interp, interp.prompt_ids("q"), teacher=teacher)
    # While the chunk is still decoding, the intro and the chunk's partial text are already out.
    partial = [p for p, _ in seen if p.startswith("Intro x") and p.count("x") < 30]
    assert partial and all(p == "Intro " + "x" * p.count("x") for p in partial)  # " tail" waits for the chunk
    assert seen[-1][0] == "Intro " + "x" * 30 + " tailend"


def test_request_budget_and_free_running(interp):
    for limits in (DecodeLimits(max_new_tokens=12), DecodeLimits(max_new_tokens=60)):
        result, seen = _trace(interp, interp.prompt_ids("q"), teacher=TEACHERS[0], limits=limits)
        assert seen[-1] == (result.text, result.annotated)
    result, seen = _trace(interp, interp.prompt_ids("free"), sampling=SamplingParams(temperature=1.0, seed=1),
                          limits=DecodeLimits(max_new_tokens=40))
    assert seen[-1] == (result.text, result.annotated)
