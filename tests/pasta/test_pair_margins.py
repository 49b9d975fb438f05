"""scripts/pair_margins.py: the probabilities at the point where a pair's sides part equal the inference engine's own
teacher-forced log-probs of those two tokens (tiny random model)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.interpreter import Interpreter
from pasta.train.sft import chat_prompt_ids

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pair_margins.py"
spec = importlib.util.spec_from_file_location("pair_margins", SCRIPT)
pair_margins = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pair_margins)
TOK = ByteTokenizer()


def _engine_logprob_at(model, prompt_ids, annotated, k) -> float:
    result = Interpreter(model, TOK).generate(prompt_ids, teacher=annotated)
    return [lp for _, _, lp in result.logprobs][k]


def test_decision_probs_are_the_engines_at_the_parting_token():
    torch.manual_seed(0)
    model = tiny_model(seed=3)
    pair = {"prompt": "Tips?", "chosen": 'Tips: a <promise topic="x" tokens="3"/><async>b</async><sync/>c',
            "rejected": "Tips: plain text", "rejected_truncated": True}
    chosen_p, rejected_p = pair_margins.decision_probs(model, TOK, pair)
    ids = chat_prompt_ids(TOK, "Tips?")
    at = len("Tips: ")  # the byte tokenizer: one token per character; the sides part at 'a' / 'p'
    assert chosen_p == pytest.approx(math.exp(_engine_logprob_at(model, ids, pair["chosen"], at)), rel=1e-3)
    assert rejected_p == pytest.approx(math.exp(_engine_logprob_at(model, ids, "Tips: plain text", at)), rel=1e-3)
    assert pair_margins.decision_probs(model, TOK, {**pair, "rejected": pair["chosen"]}) is None
