"""Speedup aggregation and win-rate statistics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pasta.eval.stats import bootstrap_geomean_ci, geomean, length_controlled_win_rate, win_rate


def test_geomean_hand_values():
    assert geomean([1, 2, 4]) == pytest.approx(2.0)
    assert geomean([2.0, 0.5]) == pytest.approx(1.0)  # a 2x and a 0.5x cancel (the arithmetic mean says 1.25)
    assert geomean([1.5]) == pytest.approx(1.5)
    assert geomean([1.2, 1.8, 3.0]) == pytest.approx((1.2 * 1.8 * 3.0) ** (1 / 3))


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")], [float("inf")]])
def test_geomean_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        geomean(bad)


def test_bootstrap_ci_hand_cases():
    assert bootstrap_geomean_ci([1.7] * 9) == pytest.approx((1.7, 1.7))
    # Two values: every resample's geomean is 1 * (4/1)^(k/2) for k = number of 4s drawn; the 95% interval of
    # k ~ Binomial(2, 1/2) is [0, 2], hence [1, 4].
    lo, hi = bootstrap_geomean_ci([1.0, 4.0], resamples=4000, seed=1)
    assert (lo, hi) == pytest.approx((1.0, 4.0))
    values = np.exp(np.random.default_rng(0).normal(np.log(1.5), 0.3, size=400))
    lo, hi = bootstrap_geomean_ci(values, resamples=2000, seed=0)
    g = geomean(values)
    assert lo < g < hi
    # Width matches the normal approximation of the mean log: 2 * 1.96 * sd / sqrt(n) on the log scale.
    expected = 2 * 1.96 * np.log(values).std(ddof=1) / math.sqrt(values.size)
    assert math.log(hi) - math.log(lo) == pytest.approx(expected, rel=0.15)
    assert bootstrap_geomean_ci(values, seed=3) == bootstrap_geomean_ci(values, seed=3)  # reproducible


def test_win_rate_and_se_hand_values():
    wr, se = win_rate([1, 0, 1, 1])
    assert wr == pytest.approx(75.0)
    # sd(ddof=1) of [1,0,1,1] = 0.5, / sqrt(4) = 0.25 -> 25 %
    assert se == pytest.approx(25.0)
    assert win_rate([0.5]) == (50.0, 0.0)
    with pytest.raises(ValueError):
        win_rate([1.2])


def test_lc_equals_win_rate_when_lengths_are_equal():
    prefs = [0.2, 0.9, 0.7, 0.4, 1.0]
    lc = length_controlled_win_rate(prefs, [0, 0, 0, 0, 0])
    wr, se = win_rate(prefs)
    assert lc.lc_win_rate == pytest.approx(wr, abs=0.05)  # only the tiny intercept penalty differs
    assert lc.lc_win_rate_se == pytest.approx(se, rel=0.01)


def test_lc_recovers_known_logistic_model():
    # Preferences set exactly to the model's probabilities: the fit must recover theta_0 = 0.4 (LC = sigmoid(0.4)).
    rng = np.random.default_rng(0)
    d = rng.normal(0, 300, size=500)
    s = d.std()
    theta0, theta1 = 0.4, 1.5
    prefs = 1 / (1 + np.exp(-(theta0 + theta1 * np.tanh(d / s))))
    lc = length_controlled_win_rate(prefs, d, l2_length=1e-6, l2_intercept=1e-9)
    assert lc.intercept == pytest.approx(theta0, abs=1e-4)
    assert lc.length_coef == pytest.approx(theta1, abs=1e-4)
    assert lc.lc_win_rate == pytest.approx(100 / (1 + math.exp(-theta0)), abs=0.01)


def test_lc_removes_a_pure_length_effect():
    # Preference driven by length only (intercept 0), and the system is mostly longer: the raw win rate is ~75 %,
    # the LC win rate (the prediction at equal length) must come back to ~50 %.
    rng = np.random.default_rng(1)
    d = rng.normal(150, 150, size=40)
    prefs = 1 / (1 + np.exp(-2 * np.tanh(d / d.std())))
    wr, _ = win_rate(prefs)
    lc = length_controlled_win_rate(prefs, d)
    assert wr > 70
    assert lc.lc_win_rate == pytest.approx(50, abs=2)


def test_lc_stays_finite_on_separable_data():
    d = [100, 200, 150, 300, 250, 120, 180, 220, -200, -150]
    prefs = [1.0 if x > 0 else 0.0 for x in d]  # longer always wins
    lc = length_controlled_win_rate(prefs, d)
    assert lc.length_coef > 1.0
    assert math.isfinite(lc.intercept) and math.isfinite(lc.lc_win_rate_se)
    assert lc.lc_win_rate < 80.0  # below the raw win rate


def test_lc_input_checks():
    with pytest.raises(ValueError):
        length_controlled_win_rate([0.5, 0.5], [1.0])
    with pytest.raises(ValueError):
        length_controlled_win_rate([], [])


def test_wilson_interval_known_values_and_coverage():
    from pasta.eval.stats import wilson_interval

    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # z^2 / (n + z^2)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(4, 23)
    assert lo < 4 / 23 < hi and (1 - hi, 1 - lo) == pytest.approx(wilson_interval(19, 23))  # symmetric
    assert wilson_interval(4, 23, level=0.5)[1] < hi  # a lower level, a narrower interval
    # coverage: for a true share of 0.2 and n = 25, about 95% of binomial draws give an interval that holds it
    import random

    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        k = sum(rng.random() < 0.2 for _ in range(25))
        low, high = wilson_interval(k, 25)
        hits += low <= 0.2 <= high
    assert 0.92 <= hits / 2000 <= 0.98
    for bad in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ValueError, match="wilson_interval"):
            wilson_interval(*bad)
