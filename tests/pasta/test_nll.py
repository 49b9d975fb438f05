"""The answer NLL (a quality proxy) through the runner equals the model's own plain forward pass."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.eval.nll import answer_nll

TOK = ByteTokenizer()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_answer_nll_equals_the_plain_forward(family):
    model = tiny_model(family)
    prompt = [TOK.bos_token_id] + TOK.encode("Question?", add_special_tokens=False)
    answer = "an answer of a few words"
    answer_ids = TOK.encode(answer, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + answer_ids])).logits[0].float()
    expected = -torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(1, torch.tensor(answer_ids)[:, None]).mean()
    assert answer_nll(model, TOK, prompt, answer) == pytest.approx(float(expected), abs=1e-5)
    assert answer_nll(model, TOK, prompt, "") is None
    # Another answer scores differently: the value depends on the tokens, not just their count.
    assert answer_nll(model, TOK, prompt, "zzzz zzzz zzzz zzzz zzzz") != pytest.approx(float(expected), abs=1e-3)
