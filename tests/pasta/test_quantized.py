"""4-bit decoding (pasta.quantized, `quantize="int4"`): weights on a Q4_1 grid come back exactly; the kernels
compute x W^T with the dequantized weights; our forward pass with int4 weights matches the Hugging Face module
running the same dequantized weights (LoRA adapters unmerged included); the cached engine matches the no-cache
oracle on the same int4 weights; what cannot be quantized says why."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.layout import Layout
from pasta.llama_forward import LlamaForward
from pasta.quantized import (GROUP, Int4Linear, Int8Linear, dequantize_groups, fbgemm_available, int4_available,
                             quantize_groups)
from pasta.reference import reference_generate
from pasta.runner import ModelRunner

pytestmark = pytest.mark.skipif(not int4_available(), reason="no int4 CPU kernel in this PyTorch")
TOK = ByteTokenizer()


def _q4_1_weight(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """A weight as a GGUF Q4_1 file holds it: per group of 32, min + q * step, with q = 0 and 15 both present."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k // GROUP, GROUP), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    step = (torch.rand(n, k // GROUP, 1, generator=g) * 0.01 + 1e-3).half().float()
    low = (torch.randn(n, k // GROUP, 1, generator=g) * 0.05).half().float()
    return (low + q * step).reshape(n, k)


def test_a_q4_1_weight_is_recovered_exactly():
    w = _q4_1_weight(48, 96)
    q, step, low = quantize_groups(w)
    assert int(q.min()) == 0 and int(q.max()) == 15
    torch.testing.assert_close(dequantize_groups(q, step, low), w, atol=1e-7, rtol=0)


def test_any_weight_is_within_half_a_step():
    w = torch.randn(40, 64)
    q, step, low = quantize_groups(w)
    error = (dequantize_groups(q, step, low) - w).abs().reshape(40, 2, GROUP)
    assert bool((error <= step[..., None] / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize_groups(torch.randn(4, 40))


def test_int4_and_int8_kernels_multiply_by_their_dequantized_weights():
    w = _q4_1_weight(64, 128)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    four = Int4Linear(w)
    # the kernel's levels are the file's, up to the bf16 rounding of each group's step and zero
    torch.testing.assert_close(four.dequantized(), w, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(four(x).float(), x.float() @ four.dequantized().t(), atol=0.05, rtol=0.02)
    eight = Int8Linear(torch.randn(100, 128), kernel="int8pack")
    torch.testing.assert_close(eight(x).float(), x.float() @ eight.dequantized().t(), atol=0.05, rtol=0.02)


@pytest.mark.skipif(not fbgemm_available(), reason="no fbgemm/x86 quantized engine in this PyTorch")
def test_the_fbgemm_head_rounds_only_the_activation_to_8_bits():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(100, 128, generator=g)
    fast, exact = Int8Linear(weight), Int8Linear(weight, kernel="int8pack")
    assert fast.kernel == "fbgemm"
    torch.testing.assert_close(fast.dequantized(), exact.dequantized(), atol=0, rtol=0)  # the same int8 weights
    x = torch.randn(3, 128, generator=g)
    expected = x @ fast.dequantized().t()
    # the activation goes to 8 bits over its range (zero included): each input is off by at most half a level
    level = (x.max().clamp_min(0) - x.min().clamp_max(0)) / 255
    bound = fast.dequantized().abs().sum(1) * level / 2 + 1e-4
    error = (fast(x) - expected).abs()
    assert bool((error <= bound).all()), float((error / bound).max())
    assert float(error.max()) > 0  # it did round the activation (this is not the float path)
    assert (fast(x).argmax(-1) == expected.argmax(-1)).all()
    with pytest.raises(ValueError, match="'fbgemm' or 'int8pack'"):
        Int8Linear(weight, kernel="int4")


def _dequantized_copy(model: torch.nn.Module, runner: ModelRunner) -> torch.nn.Module:
    """The Hugging Face module with the weights the int4 runner actually multiplies by (LoRA layers left as
    they are): the oracle for our quantized forward pass."""
    import copy

    clone = copy.deepcopy(model)
    ours = runner._target
    for layer, fused in zip(clone.model.layers, ours.layers):
        a, m = layer.self_attn, layer.mlp
        for mods, lin in (([a.q_proj, a.k_proj, a.v_proj], fused.qkv), ([a.o_proj], fused.o),
                          ([m.gate_proj, m.up_proj], fused.gate_up), ([m.down_proj], fused.down)):
            weight, start = lin.dequantized(), 0
            for mod in mods:
                base = getattr(mod, "base_layer", mod)
                rows = base.weight.shape[0]
                base.weight.data = weight[start : start + rows].to(base.weight.dtype).clone()
                start += rows
    head = ours.lm_head.dequantized().to(clone.lm_head.weight.dtype)
    clone.lm_head.weight = torch.nn.Parameter(head)  # untied: the embeddings stay as they were
    return clone


def _ids_layout(n: int = 36):
    ids = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(2)).tolist()
    return ids, list(range(n)), Layout(n).full_mask()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_int4_forward_matches_the_module_on_the_same_weights(family):
    model = tiny_model(family, dtype=torch.bfloat16)
    runner = ModelRunner(model, quantize="int4")
    assert runner.own_forward and runner.quantize == "int4"
    oracle = ModelRunner(_dequantized_copy(model, runner), own_forward=False)
    ids, positions, mask = _ids_layout()
    got, expected = runner.forward(ids, positions, mask), oracle.forward(ids, positions, mask)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.05)
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    plain = ModelRunner(model, own_forward=False).forward(ids, positions, mask)
    assert not torch.allclose(got, plain, atol=1e-3)  # it did quantize


def test_an_unmerged_lora_adapter_runs_beside_the_int4_weights():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter something to say
            torch.nn.init.normal_(p, std=0.2)
    decoder = peft_model.get_base_model().eval()
    assert not LlamaForward.supports(decoder)  # unmerged LoRA in bf16: the module runs it
    runner = ModelRunner(decoder, quantize="int4")
    oracle = ModelRunner(_dequantized_copy(decoder, runner), own_forward=False)
    ids, positions, mask = _ids_layout()
    got = runner.forward(ids, positions, mask)
    torch.testing.assert_close(got, oracle.forward(ids, positions, mask), atol=0.05, rtol=0.05)
    with peft_model.disable_adapter():
        without = ModelRunner(decoder, quantize="int4").forward(ids, positions, mask)
    assert (got - without).abs().max() > 0.05  # the adapter changed the logits


def test_cached_int4_engine_matches_the_no_cache_oracle():
    model = tiny_model("llama", dtype=torch.bfloat16)
    interp = Interpreter(model, TOK, quantize="int4")
    teacher = 'Tips:\n<promise topic="a" tokens="5"/><async>one two three</async><promise topic="b"/><async>beta</async><sync/>end'
    prompt = interp.prompt_ids("hello")
    result = interp.generate(prompt, teacher=teacher, record_logits=True)
    oracle = reference_generate(interp.runner, interp.start(prompt, teacher=teacher))
    assert len(result.logits) == len(oracle)
    for (threads_a, a), (threads_b, b) in zip(result.logits, oracle):
        assert threads_a == threads_b
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_what_cannot_be_quantized_says_why():
    with pytest.raises(ValueError, match="model type"):
        ModelRunner(tiny_model("gemma"), quantize="int4")
    with pytest.raises(ValueError, match="None or 'int4'"):
        ModelRunner(tiny_model("llama"), quantize="int3")
    with pytest.raises(ValueError, match="choose one of"):
        Interpreter(tiny_model("llama"), TOK, compile=True, quantize="int4")
