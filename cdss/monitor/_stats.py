"""The statistics of monitoring, in plain Python (no numpy or scipy): exact
binomial tails, the probability limits of a p-chart, a binomial CUSUM, the
conditional test of two rates and Wilson intervals.

Why exact tails rather than the textbook p-chart (mean ± 3 sigma): a rule firing in
1% of 60 calls a day has an expected 0.6 firings; its normal lower limit is
below zero, so a drop can never show, and its upper limit is crossed by
chance far more often than the 0.135% the three sigmas promise. Limits taken
from the binomial distribution itself keep the promised false-alarm rate at
every size (see docs/monitoring.md for the figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ALPHA", "Cusum", "binom_ge", "binom_le", "compare_rates", "limits", "wilson"]

#: The one-sided tail of a control limit: a normal's beyond three sigmas.
ALPHA = 0.00135
_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / (c if abs(c) > _TINY else _TINY)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / (c if abs(c) > _TINY else _TINY)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def binom_le(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return _betainc(n - k, k + 1, 1.0 - p)


def binom_ge(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return _betainc(k, n - k + 1, p)


def limits(n: int, p: float, *, alpha: float = ALPHA) -> tuple[int, int]:
    """The probability limits of a p-chart at ``n`` calls and rate ``p``, as
    counts: the least count not below the lower limit (P(X ≤ k) ≥ ``alpha``)
    and the greatest not above the upper (P(X ≥ k) ≥ ``alpha``). A count
    outside [lower, upper] is a signal."""
    if n <= 0:
        return 0, 0
    lo, hi = 0, n
    while lo < hi:  # the least k with P(X <= k) >= alpha
        mid = (lo + hi) // 2
        if binom_le(mid, n, p) >= alpha:
            hi = mid
        else:
            lo = mid + 1
    lower = lo
    lo, hi = 0, n
    while lo < hi:  # the greatest k with P(X >= k) >= alpha
        mid = (lo + hi + 1) // 2
        if binom_ge(mid, n, p) >= alpha:
            lo = mid
        else:
            hi = mid - 1
    return lower, lo


def wilson(x: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of ``x`` in ``n`` (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = x / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_rates(x1: int, n1: int, x2: int, n2: int) -> float:
    """The two-sided p-value that ``x1``/``n1`` and ``x2``/``n2`` share one
    rate: given the total ``x1 + x2``, the second's share is binomial with the
    second's share of the calls (exact, fine for rare rules and zeros)."""
    total = x1 + x2
    if total == 0 or n1 <= 0 or n2 <= 0:
        return 1.0
    share = n2 / (n1 + n2)
    tail = min(binom_le(x2, total, share), binom_ge(x2, total, share))
    return min(1.0, 2.0 * tail)


@dataclass
class Cusum:
    """A binomial CUSUM for a sustained change of rate from ``p0`` to
    ``p0 * ratio`` (0.5: halved; 2: doubled): the log-likelihood ratio of the
    periods so far, reset at zero, signals above ``h``. It sees a halved rate
    within days where a single day's limits need a much larger change."""

    p0: float
    ratio: float
    h: float
    score: float = 0.0

    def update(self, x: int, n: int) -> bool:
        """Add a period's ``x`` firings in ``n`` calls; whether it signals
        (the score then starts again from zero)."""
        p1 = min(max(self.p0 * self.ratio, 1e-12), 1 - 1e-12)
        p0 = min(max(self.p0, 1e-12), 1 - 1e-12)
        step = x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))
        self.score = max(0.0, self.score + step)
        if self.score > self.h:
            self.score = 0.0
            return True
        return False
