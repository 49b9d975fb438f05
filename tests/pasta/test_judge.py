"""The pairwise judge against a real loopback OpenAI-compatible server: order swapping, logprob weighting,
text parsing, failures; and the local Hugging Face judge against a direct computation."""

from __future__ import annotations

import math
import re

import pytest
import torch
from openai_stub import OpenAIStub, Reply, chat_reply
from tiny import ByteTokenizer, tiny_model

from pasta.eval.judge import (
    LocalJudge,
    OpenAIJudge,
    judge_messages,
    judge_pair,
    parse_choice,
    preference_from_logprobs,
)
from pasta.openai_client import OpenAIClient

torch.set_num_threads(1)

GOOD, BAD = "GOOD ANSWER", "bad answer"


def _outputs(req) -> tuple[str, str]:
    """(output A, output B) as shown in the judge prompt."""
    found = re.findall(r'"output": """(.*?)"""', req.last_user_text, flags=re.S)
    assert len(found) == 2, req.last_user_text
    return found[0], found[1]


def _logprobs(pa: float, pb: float, first: str = "A") -> dict:
    top = [{"token": "A", "logprob": math.log(pa)}, {"token": "B", "logprob": math.log(pb)},
           {"token": "The", "logprob": math.log(0.05)}]
    return {"content": [{"token": first, "logprob": math.log(max(pa, pb)), "top_logprobs": top}]}


def _judge(stub, **kw) -> OpenAIJudge:
    return OpenAIJudge(OpenAIClient(stub.base_url, max_retries=0), "judge-model", **kw)


def test_content_judge_sees_both_orders_and_prefers_good():
    def handler(req):
        a, b = _outputs(req)
        return chat_reply("A" if a == GOOD else "B")  # a judge that reads the content, no logprobs

    with OpenAIStub(handler) as stub:
        j = judge_pair(_judge(stub), "Say something", baseline=BAD, candidate=GOOD)
        reqs = stub.requests_to("chat/completions")
    assert j.preference == 1.0
    assert len(reqs) == 2
    # First call: baseline is A, candidate B; second call: swapped.
    assert _outputs(reqs[0]) == (BAD, GOOD)
    assert _outputs(reqs[1]) == (GOOD, BAD)
    assert reqs[0].json["logprobs"] is True and reqs[0].json["top_logprobs"] == 5
    assert reqs[0].json["temperature"] == 0.0 and reqs[0].json["model"] == "judge-model"
    assert reqs[0].messages[0]["role"] == "system"
    assert "Say something" in reqs[0].last_user_text
    assert j.candidate_second.method == "text" and j.candidate_first.method == "text"


def test_position_bias_cancels():
    with OpenAIStub(lambda req: chat_reply("A")) as stub:  # always picks the first output
        j = judge_pair(_judge(stub), "q", baseline=BAD, candidate=GOOD)
    assert j.preference == 0.5


def test_logprob_weighted_preference():
    # Order 1 (candidate = B): P(A)=0.6, P(B)=0.3 -> 1/3.  Order 2 (candidate = A): P(A)=0.8, P(B)=0.1 -> 8/9.
    replies = [chat_reply("A", logprobs=_logprobs(0.6, 0.3)), chat_reply("A", logprobs=_logprobs(0.8, 0.1))]
    with OpenAIStub(replies) as stub:
        j = judge_pair(_judge(stub), "q", baseline=BAD, candidate=GOOD)
    assert j.candidate_second.method == "logprobs"
    assert j.candidate_second.pref_b == pytest.approx(1 / 3)
    assert j.candidate_first.pref_b == pytest.approx(1 / 9)
    assert j.preference == pytest.approx((1 / 3 + 8 / 9) / 2)


def test_logprobs_skip_leading_whitespace_token_and_merge_spellings():
    lp = {"content": [
        {"token": " ", "logprob": -0.1, "top_logprobs": [{"token": " ", "logprob": -0.1}]},
        {"token": "B", "logprob": math.log(0.5), "top_logprobs": [
            {"token": "B", "logprob": math.log(0.5)}, {"token": " B", "logprob": math.log(0.2)},
            {"token": "A", "logprob": math.log(0.1)}]},
    ]}
    with OpenAIStub([chat_reply(" B", logprobs=lp)]) as stub:
        r = _judge(stub).compare("q", "x", "y")
    assert r.method == "logprobs"
    assert r.pref_b == pytest.approx(0.7 / 0.8)


def test_unparsed_and_error_orders_are_dropped():
    replies = [chat_reply("I cannot decide."), chat_reply("B")]  # order 2: candidate is A, judge says B
    with OpenAIStub(replies) as stub:
        j = judge_pair(_judge(stub), "q", baseline=BAD, candidate=GOOD)
    assert j.candidate_second.method == "unparsed" and j.candidate_second.pref_b is None
    assert j.preference == 0.0
    with OpenAIStub([Reply.error(400, "bad request"), Reply.error(400, "bad request")]) as stub:
        j = judge_pair(_judge(stub), "q", baseline=BAD, candidate=GOOD)
    assert j.preference is None
    assert j.candidate_first.method == "error" and "400" in j.candidate_first.raw


def test_no_logprobs_flag_and_identical_answers():
    with OpenAIStub(lambda req: chat_reply("B")) as stub:
        judge = _judge(stub, logprobs=False)
        assert judge.compare("q", "x", "y").pref_b == 1.0
        assert "logprobs" not in stub.requests[0].json
        j = judge_pair(judge, "q", baseline="same text", candidate="same text ")
        assert j.identical and j.preference == 0.5
        assert len(stub.requests) == 1  # identical answers are not sent to the judge


@pytest.mark.parametrize("text,expected", [
    ("A", "A"), ("B", "B"), (" B.", "B"), ("**A**", "A"), ('"B"', "B"), ("Model B", "B"),
    ("Model identifier: A\nbecause", "A"), ("B is better", "B"),
    ("A lot of things", None), ("a", None), ("The best is A", None), ("", None), ("AB", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


def test_preference_from_logprobs_edge_cases():
    assert preference_from_logprobs([]) is None
    assert preference_from_logprobs([{"token": "The", "logprob": -0.1}]) is None
    assert preference_from_logprobs([{"token": "B", "logprob": 0.0}]) == 1.0
    assert preference_from_logprobs([{"token": "A", "logprob": math.log(0.25)},
                                     {"token": "B", "logprob": math.log(0.75)}]) == pytest.approx(0.75)


def test_local_judge_matches_direct_computation():
    torch.manual_seed(0)
    model, tok = tiny_model(seed=3), ByteTokenizer()
    judge = LocalJudge(model, tok, name="tiny")
    r = judge.compare("q?", "first", "second")
    # No chat template: the judge reads the same transcript every prompt path falls back to (pasta.chat).
    text = "".join(f"{m['role']}: {m['content']}\n" for m in judge_messages("q?", "first", "second")) + "assistant: "
    ids = tok.encode(text)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)
    pa, pb = float(probs[ord("A")]), float(probs[ord("B")])  # byte tokens: single spellings only
    assert r.method == "logprobs"
    assert r.pref_b == pytest.approx(pb / (pa + pb), rel=1e-5)
    j = judge_pair(judge, "q?", baseline="first", candidate="second")
    swapped = judge.compare("q?", "second", "first")
    assert j.preference == pytest.approx((r.pref_b + 1 - swapped.pref_b) / 2)
