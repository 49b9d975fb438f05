"""The engine against `text_oracle`, an oracle that shares no visibility or position code with it (see its
docstring): every thread's logits at every step, fp32, tolerance 1e-5, on Llama, Qwen2, Mistral (sliding window)
and Gemma 3 (sliding layers) configs, sdpa and eager, asynchronous and sequential. Then the suite's power is itself
tested: deliberate layout bugs applied to the engine must make the comparison fail."""

from __future__ import annotations

import inspect
import textwrap

import pytest
import torch
from text_oracle import oracle_logits
from tiny import ByteTokenizer, tiny_model

from pasta import decoding as decoding_module
from pasta import layout as layout_module
from pasta.interpreter import Interpreter

TOK = ByteTokenizer()
# Two chunks that overflow their reservations (positions run on into the main thread's), text between promises,
# a sync, a chunk forked after it (it sees the joined chunks), a promise without tokens, a second sync.
ANNOTATED = (
    'Intro.\n1. <promise topic="a" tokens="5"/><async>alpha beta gamma delta.</async>\n'
    '2. <promise topic="b" tokens="12"/><async>epsilon zeta eta theta iota kappa.</async>\n'
    '<sync/>Middle part. <promise topic="c"/><async>lambda mu.</async> then <sync/>The end.'
)
TOL = dict(atol=1e-5, rtol=1e-5)


def engine_logits(interp: Interpreter, prompt: list[int], mode: str) -> list[torch.Tensor]:
    result = interp.generate(prompt, teacher=ANNOTATED, mode=mode, record_logits=True)
    assert result.annotated == ANNOTATED
    per_thread: dict[int, list[torch.Tensor]] = {}
    for threads, logits in result.logits:
        for row, thread in enumerate(threads):
            per_thread.setdefault(thread, []).append(logits[row])
    return [torch.stack(per_thread[t]) for t in sorted(per_thread)]


def compare(interp: Interpreter, mode: str) -> None:
    prompt = [TOK.bos_token_id] + TOK.encode("Question?", add_special_tokens=False)
    ours = engine_logits(interp, prompt, mode)
    cfg = interp.layout_config
    theirs = oracle_logits(interp.model, TOK, prompt, ANNOTATED, TOK.eos_token_id, reserve_factor=cfg.reserve_factor,
                           default_tokens=cfg.default_tokens, max_reserve=cfg.max_reserve)
    assert len(ours) == len(theirs) == 4  # main + three chunks
    for thread, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, (thread, a.shape, b.shape)
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, t=thread: f"thread {t}: {m}")


@pytest.mark.parametrize("mode", ["async", "sequential"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma3"])
def test_engine_matches_the_text_oracle(family, attn, mode):
    compare(Interpreter(tiny_model(family, attn=attn), TOK), mode)


def _mutate(monkeypatch, owner, name: str, old: str, new: str) -> None:
    """Replace `owner.name` by a copy of its source with `old` -> `new` (a deliberate bug)."""
    function = getattr(owner, name)
    source = textwrap.dedent(inspect.getsource(function))
    assert old in source, f"mutation target not found in {name}"
    namespace = dict(inspect.getmodule(function).__dict__)
    exec(compile(source.replace(old, new), f"<mutant {name}>", "exec"), namespace)
    monkeypatch.setattr(owner, name, namespace[name])


MUTATIONS = {
    # (a) join before the finished chunks' last tokens are fed: after <sync/> the main thread misses them.
    "join-before-last-tokens": (
        decoding_module.Decoding, "next_inputs",
        "        for thread in self._outstanding_threads():\n            self._feed(thread, inputs, sample=False)\n"
        "        self.layout.join()\n",
        "        outstanding = self._outstanding_threads()\n        self.layout.join()\n"
        "        for thread in outstanding:\n            self._feed(thread, inputs, sample=False)\n"),
    # (b) the post-sync position three too far.
    "post-sync-position-plus-3": (
        layout_module.Layout, "join",
        "main.next_position = max(main.next_position, thread.next_position)",
        "main.next_position = max(main.next_position, thread.next_position) + 3"),
    # (c) a chunk that sees the main thread one token past its promise.
    "fork-sees-no-promise-end": (
        layout_module.Layout, "fork",
        "next_position=main.next_position,",
        "next_position=main.next_position + 1,"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_layout_bugs_are_caught(monkeypatch, mutation):
    owner, name, old, new = MUTATIONS[mutation]
    _mutate(monkeypatch, owner, name, old, new)
    with pytest.raises(AssertionError):
        compare(Interpreter(tiny_model("llama"), TOK), "async")
