"""Per-token negative log-likelihood of an answer under a model: a quality proxy that needs no judge.

The plain answers of a Pasta model, scored by the original (untrained) model, next to the original model's own
answers: a fine-tune that keeps the original's distribution scores close to it; garbled or looping text scores
worse (greedy answers of the original itself are its most likely text, so they set a strict reference)."""

from __future__ import annotations

import torch

from ..runner import ModelRunner


def answer_nll(model, tokenizer, prompt_ids: list[int], answer: str) -> float | None:
    """Mean NLL (nats per token) of `answer`'s tokens after `prompt_ids`; None for an empty answer."""
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    if not answer_ids:
        return None
    ids = list(prompt_ids) + answer_ids
    logits = ModelRunner(model).causal(ids, logit_rows=list(range(len(prompt_ids) - 1, len(ids) - 1)))
    targets = torch.tensor(answer_ids, device=logits.device)
    return float(torch.nn.functional.cross_entropy(logits, targets))
