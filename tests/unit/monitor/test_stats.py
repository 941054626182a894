"""The statistics against values worked out by hand or by their definition:
exact binomial tails, probability limits holding their false-alarm rate,
the conditional test, Wilson intervals and the CUSUM."""

from __future__ import annotations

import math

import pytest

from cdss.monitor._stats import ALPHA, Cusum, binom_ge, binom_le, compare_rates, limits, wilson


def _pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


@pytest.mark.parametrize(("n", "p"), [(10, 0.3), (60, 0.01), (200, 0.2), (1000, 0.002)])
def test_binomial_tails_match_the_sum_of_the_distribution(n: int, p: float) -> None:
    for k in (0, 1, 2, n // 10, n // 2, n):
        below = sum(_pmf(i, n, p) for i in range(k + 1))
        above = sum(_pmf(i, n, p) for i in range(k, n + 1))
        assert binom_le(k, n, p) == pytest.approx(below, rel=1e-9, abs=1e-300)
        assert binom_ge(k, n, p) == pytest.approx(above, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("n", "p"), [(60, 0.01), (200, 0.05), (5000, 0.2)])
def test_limits_leave_at_most_alpha_in_each_tail(n: int, p: float) -> None:
    lo, hi = limits(n, p)
    assert binom_le(lo - 1, n, p) < ALPHA <= binom_le(lo, n, p)
    assert binom_ge(hi + 1, n, p) < ALPHA <= binom_ge(hi, n, p)


def test_a_rare_rule_has_no_lower_limit_where_zero_is_plausible() -> None:
    # 60 calls at 1%: zero firings happens 55% of days, never a signal
    assert limits(60, 0.01)[0] == 0
    # 2,000 calls at 1%: 20 expected, zero is far below the lower limit
    assert limits(2000, 0.01)[0] > 5


def test_compare_rates_tells_a_halved_rate_from_chance() -> None:
    assert compare_rates(100, 1000, 50, 1000) < 0.001
    assert compare_rates(100, 1000, 95, 1000) > 0.5
    assert compare_rates(0, 10, 0, 10) == 1.0


def test_wilson_interval_holds_the_estimate_and_stays_in_zero_one() -> None:
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.08  # the rule of three, roughly
    lo, hi = wilson(30, 100)
    assert lo < 0.3 < hi and hi - lo == pytest.approx(0.18, abs=0.01)


def test_the_cusum_signals_a_halved_rate_and_not_the_baseline() -> None:
    halved = Cusum(0.1, 0.5, 7.0)
    steady = Cusum(0.1, 0.5, 7.0)
    assert any(halved.update(10, 200) for _ in range(5))  # 5% of 200 a day: halved
    assert not any(steady.update(20, 200) for _ in range(60))  # 10% exactly
