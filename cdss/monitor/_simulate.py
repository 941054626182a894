"""Synthetic store histories: what a service's store holds after months of
calls, with faults injected on purpose (a rule silenced, a rate halved, a
code the terminology stops mapping, a version upgrade that changes rules).
The benchmark measures the monitor's detection on them and the tests build
their cases from them; nothing here touches patient data, there is none.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

__all__ = ["DayCounts", "Fault", "simulate", "write_store"]

#: Relative call volume by weekday (Monday first): clinics are quiet at weekends.
WEEKLY = (1.15, 1.1, 1.1, 1.05, 1.0, 0.35, 0.25)


@dataclass
class DayCounts:
    """One service's counts on one day, as the store keeps them."""

    day: date
    service: str
    ruleset: str
    sha256: str
    calls: int
    firings: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    #: (rule, outcome, reason code or None, count)
    feedback: list[tuple[str, str, str | None, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Fault:
    """A fault from ``day`` (an index into the simulated days): ``silence``
    (the rule stops firing), ``scale`` (its rate times ``factor``),
    ``unmapped`` (a new code ``code`` appears in a share ``factor`` of calls
    and takes that share of the rule's firings away: a lab feed's new code),
    ``version`` (the ruleset becomes ``ruleset`` and the rule's rate is
    scaled by ``factor``), ``override`` (the rule's override share becomes
    ``factor``)."""

    kind: str
    day: int
    rule: str = ""
    factor: float = 0.0
    code: str = ""
    ruleset: str = ""


def _poisson_binomial(rng: random.Random, n: int, p: float) -> int:
    """A binomial draw, fast for large ``n`` (normal beyond 50 expected)."""
    if p <= 0 or n <= 0:
        return 0
    if p >= 1:
        return n
    mean = n * p
    if mean > 50:
        return max(0, min(n, round(rng.gauss(mean, (mean * (1 - p)) ** 0.5))))
    return sum(1 for _ in range(n) if rng.random() < p) if n <= 400 else \
        _binomial_by_waiting(rng, n, p)


def _binomial_by_waiting(rng: random.Random, n: int, p: float) -> int:
    """A binomial draw by geometric waiting times (exact; cheap for small n·p)."""
    import math

    log_q = math.log1p(-p)
    x, i = 0, 0
    while True:
        i += int(math.log(1.0 - rng.random()) / log_q) + 1
        if i > n:
            return x
        x += 1


def simulate(*, rates: Mapping[str, float], days: int, calls_per_day: float,
             start: date, faults: Sequence[Fault] = (), seed: int = 0,
             service: str = "svc", ruleset: str = "rs@1.0.0", sha256: str = "a" * 64,
             override_share: float = 0.2, feedback_share: float = 0.3,
             unmapped_base: Mapping[str, float] | None = None) -> list[DayCounts]:
    """``days`` of one service's counts: calls per day around ``calls_per_day``
    with :data:`WEEKLY` seasonality (Poisson-like), each rule firing in its
    share ``rates[rule]`` of calls (binomial), feedback on a share of the
    firings with ``override_share`` overridden, and the ``faults``."""
    rng = random.Random(seed)
    out = []
    for i in range(days):
        day = start + timedelta(days=i)
        mean = calls_per_day * WEEKLY[day.weekday()]
        calls = max(0, round(rng.gauss(mean, mean ** 0.5)))
        current = dict(rates)
        overrides = dict.fromkeys(rates, override_share)
        version, version_sha = ruleset, sha256
        unmapped = {code: _poisson_binomial(rng, calls, share)
                    for code, share in (unmapped_base or {}).items()}
        for fault in faults:
            if i < fault.day:
                continue
            if fault.kind == "silence":
                current[fault.rule] = 0.0
            elif fault.kind == "scale":
                current[fault.rule] *= fault.factor
            elif fault.kind == "unmapped":
                current[fault.rule] *= 1 - fault.factor
                unmapped[fault.code] = _poisson_binomial(rng, calls, fault.factor)
            elif fault.kind == "version":
                version = fault.ruleset
                version_sha = hashlib.sha256(fault.ruleset.encode()).hexdigest()
                if fault.rule:
                    current[fault.rule] *= fault.factor
            elif fault.kind == "override":
                overrides[fault.rule] = fault.factor
        firings = {rule: _poisson_binomial(rng, calls, p) for rule, p in current.items()}
        feedback: list[tuple[str, str, str | None, int]] = []
        for rule, fired in firings.items():
            answered = _poisson_binomial(rng, fired, feedback_share)
            over = _poisson_binomial(rng, answered, overrides[rule])
            if over:
                feedback.append((rule, "overridden", "not-relevant", over))
            if answered - over:
                feedback.append((rule, "accepted", None, answered - over))
        out.append(DayCounts(day, service, version, version_sha, calls,
                             {r: n for r, n in firings.items() if n},
                             {c: n for c, n in unmapped.items() if n}, feedback))
    return out


def write_store(location: str | Path, history: Sequence[DayCounts]) -> None:
    """Write ``history`` into the store at ``location`` (created, or migrated,
    first), each day's counts under its noon hour."""
    from cdss.service._backends import backend_for, migrate

    backend = backend_for(location)
    try:
        migrate(backend)
        conn = backend.connect()
        try:
            with backend.transaction(conn):
                for d in history:
                    hour = f"{d.day.isoformat()}T12:00:00Z"
                    conn.execute("INSERT INTO service_calls VALUES (?, ?, ?, ?, ?)",
                                 (hour, d.service, d.ruleset, d.sha256, d.calls))
                    conn.executemany(
                        "INSERT INTO rule_calls VALUES (?, ?, ?, ?, ?, ?)",
                        [(hour, d.service, d.ruleset, d.sha256, rule, n)
                         for rule, n in d.firings.items()])
                    conn.executemany(
                        "INSERT INTO cards_shown VALUES (?, ?, ?, ?, ?, ?)",
                        [(hour, d.service, d.ruleset, rule, "flag", n)
                         for rule, n in d.firings.items()])
                    conn.executemany(
                        "INSERT INTO unmapped_codes VALUES (?, ?, ?, ?, ?)",
                        [(hour, d.service, *code.rsplit("|", 1), n)
                         for code, n in d.unmapped.items()])
                    rows = []
                    for rule, outcome, reason, n in d.feedback:
                        for k in range(n):
                            at = f"{d.day.isoformat()}T13:{k // 60 % 60:02d}:{k % 60:02d}Z"
                            rows.append((d.service, f"{rule}-{d.day}-{outcome}-{k}", d.ruleset,
                                         d.sha256, "flag", f'["{rule}"]', outcome, at, at,
                                         "http://example.org/reasons" if reason else None,
                                         reason, None, 0, None, 0))
                    conn.executemany(
                        "INSERT INTO feedback (service, card, ruleset, sha256, kind, rules, "
                        "outcome, outcome_at, received_at, reason_system, reason_code, "
                        "reason_display, has_comment, comment, accepted_suggestions) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        finally:
            conn.close()
    finally:
        backend.close()
