"""Pairwise judges: which of two answers to an instruction is better.

The prompt follows AlpacaEval 2's `weighted_alpaca_eval_gpt4_turbo` template (a leaderboard framing, the two
outputs as JSON-like records, "answer with the identifier only"), with the identifiers changed from `m`/`M` to
`A`/`B`, which small local judges tell apart more reliably.

Every comparison is made in both orders (baseline first, then candidate first) and the two preferences are
averaged, which cancels a judge's position bias. A preference is P(candidate is better):
- from log-probabilities when the endpoint returns them (`logprobs` + `top_logprobs` on the first answer
  token): p = P(B) / (P(A) + P(B)) summed over the tokens that spell each identifier ("A", " A", ...);
- else from the text: 1.0 or 0.0 for a clear "A"/"B" answer;
- else the order is recorded as unparsed and dropped (a prompt with both orders unparsed has no preference).
Two identical answers are a tie (0.5) without asking the judge.

`OpenAIJudge` talks to any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, hosted). `LocalJudge` scores
the two identifiers' next-token probabilities with a local Hugging Face chat model; with the small models that
run here it is a weak judge (strong position bias, little understanding), useful to exercise the pipeline
offline, not to draw conclusions.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..chat import prompt_ids as chat_prompt_ids

__all__ = [
    "SYSTEM_PROMPT",
    "judge_messages",
    "OrderResult",
    "PairJudgment",
    "Judge",
    "OpenAIJudge",
    "LocalJudge",
    "parse_choice",
    "preference_from_logprobs",
    "judge_pair",
]

SYSTEM_PROMPT = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based "
    "on the quality of their responses to a given instruction. This process will be used to create a leaderboard "
    "reflecting the most accurate and human-preferred answers."
)

USER_TEMPLATE = """I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": \"\"\"{instruction}\"\"\",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "A",
        "output": \"\"\"{output_a}\"\"\"
    }},
    {{
        "model_identifier": "B",
        "output": \"\"\"{output_b}\"\"\"
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): A or B.

## Best Model Identifier"""


def judge_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    user = USER_TEMPLATE.format(instruction=instruction, output_a=output_a, output_b=output_b)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@dataclass
class OrderResult:
    """One judge call. `pref_b` = P(the output shown as B is better), None when unparsed."""

    pref_b: float | None
    method: str  # logprobs | text | unparsed | error
    raw: str = ""


@dataclass
class PairJudgment:
    """Both orders of one comparison. `preference` = P(candidate better than baseline), None if both unparsed."""

    preference: float | None
    candidate_second: OrderResult | None = None  # A = baseline, B = candidate
    candidate_first: OrderResult | None = None  # A = candidate, B = baseline
    identical: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    name: str

    def compare(self, instruction: str, output_a: str, output_b: str) -> OrderResult: ...


# The identifier must be the whole first line (up to quotes, markdown and punctuation), optionally after "Model"
# / "Model identifier:", or be followed by "is better"/"wins": "A lot of ..." is not an answer.
_CHOICE = re.compile(
    r"""^[\s"'`*(\[]*(?:(?i:model)\s*(?:(?i:identifier))?\s*[:=]?\s*)?([AB])"""
    r"""(?:[\s"'`*)\].,:;!]*(?:$|\n)|\s+(?i:is\s+better|wins))"""
)


def parse_choice(text: str) -> str | None:
    """'A' or 'B' from a judge's answer ("B", " A.", "**B**", "Model A", '"B"', "B is better"), else None."""
    if not text:
        return None
    m = _CHOICE.match(text)
    if m is None:
        return None
    return m.group(1).upper()


def _identifier(token: str) -> str | None:
    t = token.strip().strip("\"'`*")
    return t if t in ("A", "B") else None


def preference_from_logprobs(top_logprobs: list[dict[str, Any]]) -> float | None:
    """P(B) / (P(A) + P(B)) from an OpenAI `top_logprobs` list ([{token, logprob}, ...]); None if neither."""
    mass = {"A": 0.0, "B": 0.0}
    for entry in top_logprobs or []:
        try:
            token, logprob = entry["token"], float(entry["logprob"])
        except (KeyError, TypeError, ValueError):
            continue
        ident = _identifier(token)
        if ident is not None and math.isfinite(logprob):
            mass[ident] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    if total <= 0:
        return None
    return mass["B"] / total


class OpenAIJudge:
    """A judge behind an OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, client, model: str, *, logprobs: bool = True, top_logprobs: int = 5, max_tokens: int = 4,
                 temperature: float = 0.0) -> None:
        self.client = client
        self.model = model
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.name = f"openai:{model}"

    def compare(self, instruction: str, output_a: str, output_b: str) -> OrderResult:
        from ..openai_client import OpenAIError, message_text

        params: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.logprobs:
            params.update(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            reply = self.client.chat(judge_messages(instruction, output_a, output_b), model=self.model, **params)
            text = message_text(reply)
        except OpenAIError as exc:
            return OrderResult(None, "error", str(exc)[:300])
        pref = _pref_from_reply_logprobs(reply)
        if pref is not None:
            return OrderResult(pref, "logprobs", text)
        choice = parse_choice(text)
        if choice is not None:
            return OrderResult(1.0 if choice == "B" else 0.0, "text", text)
        return OrderResult(None, "unparsed", text)


def _pref_from_reply_logprobs(reply: dict[str, Any]) -> float | None:
    """Preference from the first answer token that is an identifier (leading whitespace/quote tokens skipped)."""
    try:
        content = reply["choices"][0].get("logprobs") or {}
        content = content.get("content") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    for item in content:
        if not isinstance(item, dict):
            return None
        token = str(item.get("token", ""))
        if token.strip().strip("\"'`*") == "":
            continue  # whitespace or a quote before the identifier
        top = item.get("top_logprobs") or [{"token": token, "logprob": item.get("logprob", 0.0)}]
        return preference_from_logprobs(top)
    return None


class LocalJudge:
    """Next-token probabilities of 'A' and 'B' after the judge prompt, from a local causal LM (weak; see above)."""

    def __init__(self, model, tokenizer, *, name: str = "local") -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.name = f"local:{name}"
        self._torch = torch
        self._ids = {ident: self._identifier_ids(ident) for ident in ("A", "B")}
        if not self._ids["A"] or not self._ids["B"] or set(self._ids["A"]) & set(self._ids["B"]):
            raise ValueError("the judge's tokenizer has no distinct single tokens for 'A' and 'B'")

    def _identifier_ids(self, ident: str) -> list[int]:
        ids = set()
        for spelling in (ident, " " + ident):
            pieces = self.tokenizer.encode(spelling, add_special_tokens=False)
            if len(pieces) == 1:
                ids.add(int(pieces[0]))
        return sorted(ids)

    def prompt_ids(self, instruction: str, output_a: str, output_b: str) -> list[int]:
        return chat_prompt_ids(self.tokenizer, judge_messages(instruction, output_a, output_b))

    def compare(self, instruction: str, output_a: str, output_b: str) -> OrderResult:
        torch = self._torch
        from ..runner import ModelRunner

        ids = self.prompt_ids(instruction, output_a, output_b)
        logits = ModelRunner(self.model).causal(ids, logit_rows=[len(ids) - 1])[0]
        probs = torch.softmax(logits, dim=-1)
        pa = float(probs[self._ids["A"]].sum())
        pb = float(probs[self._ids["B"]].sum())
        if pa + pb <= 0:
            return OrderResult(None, "unparsed", "")
        return OrderResult(pb / (pa + pb), "logprobs", f"P(A)={pa:.4g} P(B)={pb:.4g}")


def judge_pair(judge: Judge, instruction: str, baseline: str, candidate: str) -> PairJudgment:
    """Both orders; the preference for the candidate is the mean over the orders that parsed."""
    if baseline.strip() == candidate.strip():
        return PairJudgment(preference=0.5, identical=True)
    second = judge.compare(instruction, baseline, candidate)  # candidate is B
    first = judge.compare(instruction, candidate, baseline)  # candidate is A
    prefs = []
    if second.pref_b is not None:
        prefs.append(second.pref_b)
    if first.pref_b is not None:
        prefs.append(1.0 - first.pref_b)
    preference = sum(prefs) / len(prefs) if prefs else None
    return PairJudgment(preference=preference, candidate_second=second, candidate_first=first)
