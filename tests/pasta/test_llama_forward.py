"""Our own forward pass for Llama-family models (pasta.llama_forward) against the Hugging Face module it mirrors:
the same logits on Pasta layouts (non-causal masks, shared positions), with and without the slot cache, in
float32 and bfloat16; fused weights are views (nothing stored twice) and follow in-place updates and casts."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.layout import Layout
from pasta.llama_forward import LlamaForward
from pasta.runner import ModelRunner

TOK = ByteTokenizer()
TEACHER = ('Tips:\n<promise topic="a" tokens="5"/><async>one two three four five six</async> and '
           '<promise topic="b" tokens="3"/><async>beta</async><sync/>Next <promise topic="c"/><async>gamma!</async>end')


def _pasta_layout(n: int) -> tuple[list[int], torch.Tensor]:
    """Positions and a mask as a fork makes them: two branches at the same positions that cannot see each other."""
    layout = Layout(n)
    mask = layout.full_mask().clone()
    half = n // 2
    positions = list(range(half)) + list(range(half // 2, half // 2 + n - half))
    mask[half:, half // 2 : half] = False  # the second branch does not see the end of the first
    return positions, mask


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_logits_as_hugging_face_on_a_pasta_layout(family, dtype):
    model = tiny_model(family, dtype=dtype)
    ours, theirs = ModelRunner(model), ModelRunner(model, own_forward=False)
    assert ours.own_forward and not theirs.own_forward
    ids = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    positions, mask = _pasta_layout(len(ids))
    expected = theirs.forward(ids, positions, mask)
    got = ours.forward(ids, positions, mask)
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    else:  # bf16: the fused projections give the same products; allow one rounding step of the logits
        torch.testing.assert_close(got, expected, atol=0.02, rtol=0.02)
        assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_cached_engine_on_our_forward_matches_the_hugging_face_engine(family):
    """Every thread's logits at every step, through the slot cache: our forward pass vs the module's."""
    model = tiny_model(family)
    ours = Interpreter(model, TOK)
    theirs = Interpreter(model, TOK)
    theirs.runner = ModelRunner(model, own_forward=False)
    assert ours.runner.own_forward
    prompt = ours.prompt_ids("hello there")
    a = ours.generate(prompt, teacher=TEACHER, record_logits=True)
    b = theirs.generate(prompt, teacher=TEACHER, record_logits=True)
    assert a.annotated == b.annotated == TEACHER
    assert len(a.logits) == len(b.logits)
    for (threads_a, rows_a), (threads_b, rows_b) in zip(a.logits, b.logits):
        assert threads_a == threads_b
        torch.testing.assert_close(rows_a, rows_b, atol=2e-5, rtol=1e-5)
    free_a = ours.generate(prompt, record_logits=False)
    free_b = theirs.generate(prompt, record_logits=False)
    assert free_a.annotated == free_b.annotated


@pytest.mark.parametrize("family,reason", [("gemma", "model type"), ("mistral", "sliding"), ("gemma3", "model type")])
def test_other_models_fall_back_to_the_hugging_face_module(family, reason):
    model = tiny_model(family)
    assert not LlamaForward.supports(model)
    assert not ModelRunner(model).own_forward
    with pytest.raises(ValueError, match=reason):
        LlamaForward(model)


def test_eager_attention_is_not_mirrored():
    model = tiny_model("llama", attn="eager")
    assert not ModelRunner(model).own_forward


def test_fused_weights_are_views_and_a_second_runner_copies_nothing():
    model = tiny_model("llama")
    attention = model.model.layers[0].self_attn
    before = [p.detach().clone() for p in (attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)]
    first = ModelRunner(model)
    fused = first._target.layers[0].qkv.weight
    assert attention.q_proj.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    for p, b in zip((attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight), before):
        assert torch.equal(p, b)
    second = ModelRunner(model)
    assert second._target.layers[0].qkv.weight.data_ptr() == fused.data_ptr()


def test_in_place_updates_and_casts_are_followed():
    model = tiny_model("llama")
    ours, theirs = ModelRunner(model), ModelRunner(model, own_forward=False)
    ids = list(range(60, 90))
    positions, mask = list(range(len(ids))), Layout(len(ids)).full_mask()
    before = ours.forward(ids, positions, mask)
    with torch.no_grad():  # a training step changes weights in place
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
        model.model.layers[0].self_attn.v_proj.weight.add_(0.05)
    after = ours.forward(ids, positions, mask)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, theirs.forward(ids, positions, mask), atol=2e-5, rtol=1e-5)
    model.to(torch.float64)  # a cast makes new tensors: the fused matrices are rebuilt from them
    torch.testing.assert_close(ours.forward(ids, positions, mask), theirs.forward(ids, positions, mask),
                               atol=1e-9, rtol=1e-9)
