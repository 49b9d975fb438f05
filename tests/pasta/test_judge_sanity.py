"""Judge sanity pairs: a judge that cannot tell a real answer from an empty, one-word or looping one is flagged."""

from __future__ import annotations

import math

import pytest

from pasta.eval.answer_stats import repetition_rate
from pasta.eval.judge import OrderResult
from pasta.eval.judge_sanity import _binomial_p, bad_answers, judge_sanity

CASES = [(f"Question {i}?", f"Answer {i} has several distinct words. It also has a second sentence number {i}.")
         for i in range(4)]


class AlwaysA:
    """Position bias and nothing else: both orders cancel to a tie."""

    name = "always-a"

    def compare(self, instruction, output_a, output_b):
        return OrderResult(0.0, "text")


class Sensible:
    """Prefers the answer with more distinct words and less repetition."""

    name = "sensible"

    def compare(self, instruction, output_a, output_b):
        def score(text):
            return len(set(text.split())) - 50 * repetition_rate(text)

        return OrderResult(1.0 if score(output_b) > score(output_a) else 0.0, "text")


def test_bad_answers_are_bad():
    bad = bad_answers("First sentence here. Second one.")
    assert bad["empty"] == "" and bad["one_word"] == "First"
    assert bad["looping"].count("First sentence here.") == 12 and repetition_rate(bad["looping"]) > 0.8


def test_a_position_biased_judge_is_not_better_than_chance():
    result = judge_sanity(AlwaysA(), CASES)
    assert result.pairs == 12 and result.accuracy == 0.5
    assert not result.better_than_chance and "NOT better than chance" in result.verdict


def test_a_sensible_judge_passes():
    result = judge_sanity(Sensible(), CASES)
    assert result.accuracy == 1.0 and result.by_kind == {"empty": 1.0, "one_word": 1.0, "looping": 1.0}
    assert result.p_value == pytest.approx(2**-12) and result.better_than_chance


def test_binomial_tail():
    assert _binomial_p(0, 5) == 1.0
    assert _binomial_p(5, 5) == pytest.approx(1 / 32)
    assert _binomial_p(4, 5) == pytest.approx(6 / 32)
    assert _binomial_p(3.5, 5) == pytest.approx(sum(math.comb(5, k) for k in (3, 4, 5)) / 32)


def test_no_pairs():
    assert judge_sanity(Sensible(), [("q", "  ")]).accuracy is None
