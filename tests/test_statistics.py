"""The report's statistics (metrics.py), each against a value computed by hand or independently here: Holm, the paired
t-test, the sign test, the paired t-test's power from the noncentral t, the minimum detectable effect and the seeds
needed."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from starlora import metrics


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 = 0.04 raised to 0.06 (step-down)
    assert metrics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert metrics.holm([0.5, 0.6]) == [1.0, 1.0]  # 2 x 0.5 = 1, then max(1, 0.6): capped at 1
    assert metrics.holm([0.02]) == [0.02]  # a family of one is not adjusted
    adjusted = metrics.holm([0.01, float("nan"), 0.5])  # NaN is outside the family: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == 0.5
    assert metrics.holm([]) == []


def test_paired_t_and_sign_test_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = sqrt 12 with 2 df, whose CDF is 1/2 + t / (2 sqrt(t^2 + 2))
    t = math.sqrt(12)
    assert metrics.paired_t_p([1, 2, 3]) == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(t * t + 2))))
    assert math.isnan(metrics.paired_t_p([1.0]))
    # all exactly 0 (two strategies that picked alike): p 1, so Holm keeps the comparison in its family
    assert metrics.paired_t_p([0, 0, 0]) == 1.0 and metrics.holm([0.01, metrics.paired_t_p([0, 0])]) == [0.02, 1.0]
    # constant but not 0: the t statistic is undefined, not a certainty (the sign test speaks)
    assert np.isnan(metrics.paired_t_p([2, 2, 2]))
    # 3 wins, 1 loss, 1 tie (dropped): P(X >= 3) for Bin(4, 1/2) is 5/16, two-sided 10/16
    assert metrics.sign_test_p([1, 2, -1, 0, 3]) == pytest.approx(10 / 16)
    assert metrics.sign_test_p([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert metrics.sign_test_p([0, 0]) == 1.0 and math.isnan(metrics.sign_test_p([]))
    assert math.isnan(metrics.sign_test_p([float("nan")] * 2))  # no difference known, not no difference


def power_by_integration(delta, sd, n, alpha=0.05):
    """The paired t-test's power from its definition, without scipy's nct: T = (Z + nc) / sqrt(V / df) with
    Z ~ N(0, 1), V ~ chi2(df); |T| > c  <=>  Z > c sqrt(V/df) - nc  or  Z < -c sqrt(V/df) - nc; integrate over V."""
    df, nc = n - 1, delta * math.sqrt(n) / sd
    c = stats.t.ppf(1 - alpha / 2, df)

    def given(v):
        s = c * math.sqrt(v / df)
        return (stats.norm.sf(s - nc) + stats.norm.cdf(-s - nc)) * stats.chi2.pdf(v, df)

    return integrate.quad(given, 0, np.inf, limit=200)[0]


def test_power_of_known_cases():
    # G*Power, one-sample (paired) t-test, two-tailed alpha 0.05: d = 1 with n = 10 has power 0.8031, and d = 0.5 needs
    # n = 34 for 80% (actual power 0.8078)
    assert metrics.paired_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert metrics.paired_power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-4)
    assert metrics.seeds_needed(0.5, 1.0) == 34
    for delta, sd, n in [(1.0, 1.0, 10), (2.0, 1.8, 5), (-1.0, 2.5, 7), (0.3, 1.0, 3)]:
        assert metrics.paired_power(delta, sd, n) == pytest.approx(power_by_integration(delta, sd, n), abs=1e-6)
    assert metrics.paired_power(0.0, 1.0, 10) == pytest.approx(0.05)  # no effect: the test's level
    assert math.isnan(metrics.paired_power(1.0, 1.0, 1)) and math.isnan(metrics.paired_power(1.0, float("nan"), 5))
    assert 0.9 < metrics.paired_power(0.1, 1.0, 5000) <= 1.0  # far out, where scipy's nct returns NaN


def test_minimum_detectable_effect_and_seeds_needed_invert_each_other():
    for sd in (1.0, 1.8, 3.9):
        for n in (3, 5, 10):
            mde = metrics.min_detectable_delta(sd, n)
            assert metrics.paired_power(mde, sd, n) == pytest.approx(0.8, abs=1e-9)
            assert metrics.seeds_needed(mde * (1 + 1e-9), sd) == n  # n seeds detect their own MDE ...
            assert metrics.seeds_needed(mde * 0.99, sd) == n + 1  # ... and not a smaller effect
    # monotonic: a larger effect needs fewer seeds, a larger spread more
    needed = [metrics.seeds_needed(d, 1.8) for d in (0.5, 1.0, 1.5, 2.0, 3.0)]
    assert needed == sorted(needed, reverse=True) and len(set(needed)) == len(needed)
    spread = [metrics.seeds_needed(1.0, sd) for sd in (0.5, 1.0, 1.8, 3.9)]
    assert spread == sorted(spread) and len(set(spread)) == len(spread)
    # the audit of the committed study (issue 26): paired sd about 1.8 -> +2 needs about 9 seeds, +1 more than 25
    assert metrics.seeds_needed(2.0, 1.8) == 9 and metrics.seeds_needed(1.0, 1.8) > 25
    assert 2.9 < metrics.min_detectable_delta(1.8, 5) < 3.1  # five seeds: effects of about 3 points
    assert np.isnan(metrics.min_detectable_delta(0.0, 5)) and metrics.seeds_needed(1.0, 0.0) is None
    assert math.isnan(metrics.min_detectable_delta(1.0, 1)) and metrics.seeds_needed(1.0, float("nan")) is None
    assert metrics.seeds_needed(0.001, 1.8, most=1000) is None  # beyond the cap
