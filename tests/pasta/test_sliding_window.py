"""Sliding-window families against Hugging Face's own forward: plain text decoded by the engine, token by token
from its cache, gives the logits HF computes over the whole sequence with its own masks (where the window cuts:
the text is longer than the window), for both attention implementations. Windows by position inside a Pasta layout
are covered by the oracle tests (`test_interpreter`, `test_batch`)."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.llama_forward import LlamaForward
from pasta.model_config import sliding_window
from pasta.interpreter import Interpreter

TOK = ByteTokenizer()
TEXT = "The quick brown fox jumps over the lazy dog, twice."


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["mistral", "phi3", "qwen2-sliding", "gemma3", "llama"])
def test_engine_matches_hf_forward(family, attn):
    model = tiny_model(family, attn=attn)
    interp = Interpreter(model, TOK, limits=DecodeLimits(max_new_tokens=200))
    prompt = [TOK.bos_token_id] + TOK.encode("q", False)
    result = interp.generate(prompt, teacher=TEXT, mode="sequential", record_logits=True)
    assert result.annotated == TEXT
    ids = prompt + TOK.encode(TEXT, add_special_tokens=False) + [TOK.eos_token_id]
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([ids])).logits[0].float()
    ours = torch.cat([logits for _, logits in result.logits])
    assert len(ids) > 3 * 8  # the window (8; 24 for gemma3) really cuts
    # Row j of ours predicts token len(prompt) + j; HF's row i predicts token i + 1.
    torch.testing.assert_close(ours, hf[len(prompt) - 1 : len(prompt) - 1 + len(ours)], atol=1e-4, rtol=1e-4)


def test_window_is_detected_for_each_convention():
    assert sliding_window(tiny_model("mistral").config) == (8, False)
    assert sliding_window(tiny_model("qwen2-sliding").config) == (8, True)
    assert sliding_window(tiny_model("gemma3").config) == (24, True)
    assert sliding_window(tiny_model("llama").config) is None
    assert sliding_window(tiny_model("qwen2").config) is None
    # our own forward pass applies no window: it takes exactly the models without one
    assert LlamaForward.supports(tiny_model("qwen2")) and LlamaForward.supports(tiny_model("llama"))
    assert not LlamaForward.supports(tiny_model("mistral"))
    assert not LlamaForward.supports(tiny_model("qwen2-sliding"))
