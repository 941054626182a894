"""Per-rule monitoring of the service, from its store: the firing rate of
each rule per call and period, control limits from a baseline window, and
the alarms that say a rule stopped working (``cdss monitor --store``).

A rule *fires* in a call when the call's answer issued a card of that rule
(``rule_calls``); its rate is firings over the calls the service answered
in the period (``service_calls``). The baseline is the ``baseline`` periods
before the monitored window of ``window`` periods; the baseline rate
``p0`` is pooled over it. In each period of the window:

* **limits** (``drop``/``surge``): the firings fall outside the exact
  binomial probability limits at the period's calls and ``p0`` (each tail
  :data:`~cdss.monitor._stats.ALPHA`, as three sigmas of a normal);
* **CUSUM** (``drop``/``surge``): a binomial CUSUM for a halved or a doubled
  rate passes its threshold (a sustained change too small for one period);
* **silent**: the rule has not fired for a run of periods over which it was
  expected to fire at least ``silent_expected`` times (P(0) = e^-E);
* **version**: the ruleset version or content hash changed, with the rules
  whose rates differ across the change;
* **override**: the share of a rule's answered cards overridden rose;
* **unmapped**: a code no concept maps appeared or grew.

Each alarm names the service, rule, period, size and the likely cause the
store can tell (a version change, an unmapped code appearing near the onset).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from cdss.errors import InvalidArgument
from cdss.monitor._stats import ALPHA, Cusum, compare_rates, limits, wilson

__all__ = ["ALARM_KINDS", "MonitorSettings", "monitor_store", "period_of"]

#: Every kind of alarm, in the order a report lists them.
ALARM_KINDS = ("silent", "drop", "surge", "version", "override", "unmapped")
_PERIODS = ("day", "week")


@dataclass(frozen=True)
class MonitorSettings:
    """The settings of a monitoring run; the defaults are those the benchmark
    (``bench/monitor_detection.py``) measured."""

    #: ``day`` or ``week`` (ISO weeks, from Monday).
    period: str = "day"
    #: Periods monitored, up to ``until``.
    window: int = 14
    #: Periods before the window whose pooled rate is the baseline.
    baseline: int = 28
    #: One tail of the per-period limits.
    alpha: float = ALPHA
    #: Expected firings over a run of zeros above which the run is an alarm.
    silent_expected: float = 7.0
    #: Threshold of the CUSUMs for a halved and a doubled rate.
    cusum_h: float = 7.0
    #: Significance of a rate that moved across a version change, an override
    #: rate that rose, an unmapped code that grew.
    significance: float = 0.001
    #: Least calls in the window with a new unmapped code for an alarm.
    unmapped_min: int = 5
    #: Least answered cards (accepted or overridden) in the window for an
    #: override alarm.
    override_min: int = 10
    #: Periods either side of an onset in which a new unmapped code or a
    #: version change is named as its likely cause.
    cause_periods: int = 3

    def __post_init__(self) -> None:
        if self.period not in _PERIODS:
            raise InvalidArgument(f"period must be one of {', '.join(_PERIODS)}, "
                                  f"not {self.period!r}")
        for name in ("window", "baseline"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1 period")
        if not 0 < self.alpha < 0.5 or not 0 < self.significance < 0.5:
            raise InvalidArgument("alpha and significance must lie between 0 and 0.5")
        if self.silent_expected <= 0 or self.cusum_h <= 0:
            raise InvalidArgument("silent_expected and cusum_h must be positive")


def period_of(day: date, period: str) -> date:
    """The first day of the period ``day`` falls in."""
    return day - timedelta(days=day.weekday()) if period == "week" else day


def _step(period: str) -> timedelta:
    return timedelta(days=7 if period == "week" else 1)


def _day(text: str) -> date:
    return date.fromisoformat(text[:10])


# --------------------------------------------------------------------------- #
# What the store holds, per period
# --------------------------------------------------------------------------- #
@dataclass
class _History:
    """The store's counts in the periods of a run, per service."""

    periods: list[date]
    calls: dict[str, Counter[date]]
    versions: dict[str, dict[date, Counter[tuple[str, str]]]]
    firings: dict[str, dict[str, Counter[date]]]
    by_version: dict[str, dict[tuple[str, str], Counter[str]]]
    calls_by_version: dict[str, Counter[tuple[str, str]]]
    unmapped: dict[str, dict[str, Counter[date]]]
    feedback: dict[str, dict[str, dict[date, Counter[str]]]]
    reasons: dict[str, dict[str, Counter[str]]]


def _read(location: str | Path, periods: list[date], settings: MonitorSettings) -> _History:
    from cdss.service._store import read_store

    start = periods[0]
    end = periods[-1] + _step(settings.period)
    since = f"{start.isoformat()}T00:00:00Z"
    until = f"{end.isoformat()}T00:00:00Z"
    valid = set(periods)

    def bucket(text: str) -> date | None:
        p = period_of(_day(text), settings.period)
        return p if p in valid else None

    h = _History(periods, defaultdict(Counter), defaultdict(lambda: defaultdict(Counter)),
                 defaultdict(lambda: defaultdict(Counter)),
                 defaultdict(lambda: defaultdict(Counter)), defaultdict(Counter),
                 defaultdict(lambda: defaultdict(Counter)),
                 defaultdict(lambda: defaultdict(lambda: defaultdict(Counter))),
                 defaultdict(lambda: defaultdict(Counter)))
    args = (since, until)
    with read_store(location) as conn:
        for hour, service, ruleset, sha, calls in conn.execute(
                "SELECT hour, service, ruleset, sha256, calls FROM service_calls "
                "WHERE hour >= ? AND hour < ?", args):
            p = bucket(hour)
            if p is not None:
                h.calls[service][p] += calls
                h.versions[service][p][(ruleset, sha)] += calls
                h.calls_by_version[service][(ruleset, sha)] += calls
        for hour, service, ruleset, sha, rule, calls in conn.execute(
                "SELECT hour, service, ruleset, sha256, rule, calls FROM rule_calls "
                "WHERE hour >= ? AND hour < ?", args):
            p = bucket(hour)
            if p is not None:
                h.firings[service][rule][p] += calls
                h.by_version[service][(ruleset, sha)][rule] += calls
        for hour, service, system, code, calls in conn.execute(
                "SELECT hour, service, system, code, calls FROM unmapped_codes "
                "WHERE hour >= ? AND hour < ?", args):
            p = bucket(hour)
            if p is not None:
                h.unmapped[service][f"{system}|{code}"][p] += calls
        for at, service, rules, outcome, code, display in conn.execute(
                "SELECT outcome_at, service, rules, outcome, reason_code, reason_display "
                "FROM feedback WHERE outcome_at >= ? AND outcome_at < ? AND rules IS NOT NULL",
                args):
            p = bucket(at)
            if p is None:
                continue
            for rule in orjson.loads(rules) or [""]:
                h.feedback[service][rule][p][outcome] += 1
                if outcome == "overridden" and code is not None:
                    h.reasons[service][rule][f"{code}" + (f" ({display})" if display else "")] \
                        += 1
    return h


# --------------------------------------------------------------------------- #
# The analysis
# --------------------------------------------------------------------------- #
def _rate(x: int, n: int) -> float | None:
    return round(x / n, 6) if n else None


def _ratio(rate: float | None, p0: float) -> float | None:
    return round(rate / p0, 3) if rate is not None and p0 > 0 else None


def _rule_series(service: str, rule: str, h: _History, settings: MonitorSettings,
                 base: list[date], window: list[date]) -> tuple[dict[str, Any],
                                                                list[dict[str, Any]]]:
    calls, fired = h.calls[service], h.firings[service][rule]
    xb, nb = sum(fired[p] for p in base), sum(calls[p] for p in base)
    p0 = xb / nb if nb else 0.0
    series: list[dict[str, Any]] = []
    alarms: list[dict[str, Any]] = []
    drop = Cusum(p0, 0.5, settings.cusum_h)
    surge = Cusum(p0, 2.0, settings.cusum_h)
    # a run of zeros may have started in the baseline
    streak_from: date | None = None
    streak_expected = 0.0
    for p in base:
        if fired[p] == 0 and calls[p]:
            streak_from = streak_from or p
            streak_expected += p0 * calls[p]
        elif fired[p]:
            streak_from, streak_expected = None, 0.0
    silent_raised = False
    first: dict[str, dict[str, Any]] = {}
    for p in window:
        x, n = fired[p], calls[p]
        point: dict[str, Any] = {"period": p.isoformat(), "calls": n, "firings": x,
                                 "rate": _rate(x, n), "signals": []}
        if n and p0 > 0:
            lo, hi = limits(n, p0, alpha=settings.alpha)
            point.update(lower=round(lo / n, 6), upper=round(hi / n, 6),
                         expected=round(p0 * n, 3))
            if x < lo:
                point["signals"].append("drop")
            elif x > hi:
                point["signals"].append("surge")
            if drop.update(x, n) and "drop" not in point["signals"]:
                point["signals"].append("drop")
            if surge.update(x, n) and "surge" not in point["signals"]:
                point["signals"].append("surge")
            if x == 0:
                streak_from = streak_from or p
                streak_expected += p0 * n
                if streak_expected >= settings.silent_expected and not silent_raised:
                    silent_raised = True
                    point["signals"].append("silent")
                    first["silent"] = {
                        "kind": "silent", "service": service, "rule": rule,
                        "period": p.isoformat(), "since": streak_from.isoformat(),
                        "expected": round(streak_expected, 2), "observed": 0,
                        "baseline_rate": round(p0, 6),
                        "message": (f"{rule} of {service} has not fired since "
                                    f"{streak_from.isoformat()}: {streak_expected:.1f} "
                                    f"firings expected, none seen")}
            else:
                streak_from, streak_expected = None, 0.0
        for kind in ("drop", "surge"):
            if kind in point["signals"]:
                found = first.setdefault(kind, {
                    "kind": kind, "service": service, "rule": rule, "period": p.isoformat(),
                    "periods": [], "baseline_rate": round(p0, 6), "rate": point["rate"],
                    "change": _ratio(point["rate"], p0), "expected": point.get("expected"),
                    "observed": x})
                found["periods"].append(p.isoformat())
        series.append(point)
    for kind, alarm in first.items():
        if kind in ("drop", "surge"):
            alarm["message"] = (f"{rule} of {service} {'fell' if kind == 'drop' else 'rose'} "
                                f"to {alarm['rate'] or 0:.2%} of calls on {alarm['period']} "
                                f"(baseline {p0:.2%}, x{alarm['change'] or 0:g})")
            if kind == "drop" and alarm["periods"]:
                alarm["onset"] = alarm["periods"][0]
        alarms.append(alarm)
    lo_b, hi_b = wilson(xb, nb)
    rule_row = {"rule": rule, "baseline": {"firings": xb, "calls": nb, "rate": _rate(xb, nb),
                                           "interval": [round(lo_b, 6), round(hi_b, 6)]},
                "series": series}
    return rule_row, alarms


def _version_alarms(service: str, h: _History, settings: MonitorSettings,
                    window: list[date]) -> list[dict[str, Any]]:
    out = []
    every = [*h.periods]
    previous: tuple[str, str] | None = None
    for p in every:
        versions = h.versions[service].get(p)
        if not versions:
            continue
        current = versions.most_common(1)[0][0]
        if previous is not None and current != previous and p in window:
            old_rules, new_rules = h.by_version[service][previous], h.by_version[service][current]
            n_old = h.calls_by_version[service][previous]
            n_new = h.calls_by_version[service][current]
            moved: list[dict[str, Any]] = []
            for rule in sorted(set(old_rules) | set(new_rules)):
                x1, x2 = old_rules[rule], new_rules[rule]
                pvalue = compare_rates(x1, n_old, x2, n_new)
                if pvalue < settings.significance:
                    moved.append({"rule": rule, "before": _rate(x1, n_old),
                                  "after": _rate(x2, n_new), "p_value": float(f"{pvalue:.3g}"),
                                  "change": _ratio(_rate(x2, n_new), x1 / n_old if n_old else 0)})
            out.append({
                "kind": "version", "service": service, "rule": None, "period": p.isoformat(),
                "from": {"ruleset": previous[0], "sha256": previous[1]},
                "to": {"ruleset": current[0], "sha256": current[1]}, "rules_moved": moved,
                "message": (f"{service} changed from {previous[0]} ({previous[1][:12]}) to "
                            f"{current[0]} ({current[1][:12]}) on {p.isoformat()}; rates moved: "
                            + (", ".join(m["rule"] for m in moved) or "none"))})
        previous = current
    return out


def _override(service: str, h: _History, settings: MonitorSettings, base: list[date],
              window: list[date]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows: dict[str, Any] = {}
    alarms = []
    for rule, by_period in sorted(h.feedback[service].items()):
        def counts(periods: Iterable[date], by: Mapping[date, Counter[str]] = by_period
                   ) -> tuple[int, int]:
            over = sum(by[p]["overridden"] for p in periods if p in by)
            answered = over + sum(by[p]["accepted"] for p in periods if p in by)
            return over, answered

        ob, nb = counts(base)
        ow, nw = counts(window)
        trend = []
        for p in window:
            o, n = counts([p])
            trend.append({"period": p.isoformat(), "overridden": o, "answered": n,
                          "rate": _rate(o, n)})
        reasons = [{"reason": r, "count": c} for r, c in h.reasons[service][rule].most_common()]
        rows[rule] = {"rule": rule, "baseline": {"overridden": ob, "answered": nb,
                                                 "rate": _rate(ob, nb)},
                      "window": {"overridden": ow, "answered": nw, "rate": _rate(ow, nw)},
                      "trend": trend, "reasons": reasons}
        if nw >= settings.override_min and nb and ow / nw > ob / nb:
            pvalue = compare_rates(ob, nb, ow, nw)
            if pvalue < settings.significance:
                alarms.append({
                    "kind": "override", "service": service, "rule": rule,
                    "period": window[0].isoformat(), "baseline_rate": _rate(ob, nb),
                    "rate": _rate(ow, nw), "p_value": float(f"{pvalue:.3g}"),
                    "reasons": reasons[:5],
                    "message": (f"{rule} of {service}: {ow / nw:.0%} of answered cards "
                                f"overridden in the window (baseline {ob / nb:.0%})"
                                + (f"; most given reason: {reasons[0]['reason']}"
                                   if reasons else ""))})
    return rows, alarms


def _unmapped(service: str, h: _History, settings: MonitorSettings, base: list[date],
              window: list[date]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    calls = h.calls[service]
    nb, nw = sum(calls[p] for p in base), sum(calls[p] for p in window)
    rows, alarms = [], []
    for code, by_period in sorted(h.unmapped[service].items()):
        xb = sum(by_period[p] for p in base)
        xw = sum(by_period[p] for p in window)
        seen = [p for p in window if by_period[p]]
        row: dict[str, Any] = {"code": code, "baseline": {"calls": xb, "rate": _rate(xb, nb)},
               "window": {"calls": xw, "rate": _rate(xw, nw)},
               "first_seen": seen[0].isoformat() if seen else None}
        rows.append(row)
        if not xw:
            continue
        if xb == 0 and xw >= settings.unmapped_min:
            change = "appeared"
        elif xb and nb and nw and xw / nw > 2 * xb / nb \
                and compare_rates(xb, nb, xw, nw) < settings.significance:
            change = "grew"
        else:
            continue
        # the period from which it is seen (appeared) or above its baseline (grew)
        onset = seen[0]
        if change == "grew":
            p0 = xb / nb
            onset = next((p for p in window if calls[p] and by_period[p] > 2 * p0 * calls[p]),
                         seen[0])
        alarms.append({"kind": "unmapped", "service": service, "rule": None,
                       "period": onset.isoformat(), "code": code, "change": change,
                       "baseline_rate": row["baseline"]["rate"], "rate": row["window"]["rate"],
                       "message": (f"code {code} {change} unmapped in {service}'s data from "
                                   f"{onset.isoformat()} ({xw} calls in the window)")})
    return rows, alarms


def _causes(alarms: list[dict[str, Any]], settings: MonitorSettings) -> None:
    """Name, on each silent or drop (or surge) alarm, what near its onset may
    explain it: a version change that moved the rule, a new unmapped code."""
    step = _step(settings.period)
    near = step * settings.cause_periods
    for alarm in alarms:
        if alarm["kind"] not in ("silent", "drop", "surge"):
            continue
        onset = date.fromisoformat(alarm.get("since") or alarm.get("onset") or alarm["period"])
        causes = []
        for other in alarms:
            if other["service"] != alarm["service"]:
                continue
            when = date.fromisoformat(other["period"])
            if abs(when - onset) > near:
                continue
            if other["kind"] == "version" and any(m["rule"] == alarm["rule"]
                                                  for m in other["rules_moved"]):
                causes.append(f"ruleset changed from {other['from']['ruleset']} to "
                              f"{other['to']['ruleset']} on {other['period']}")
            elif other["kind"] == "unmapped":
                causes.append(f"terminology drift: code {other['code']} {other['change']} "
                              f"unmapped on {other['period']}")
        if not causes:
            causes.append("none in the store: check the data feed's codes (a lab or "
                          "medication code change, a value set) and the rule's inputs")
        alarm["likely_cause"] = causes


def monitor_store(location: str | Path, *, until: date | None = None,
                  settings: MonitorSettings | None = None) -> dict[str, Any]:
    """The monitoring report of the store at ``location`` (a file or a
    ``postgresql://`` URL): per service and rule, the series of the window
    with its limits, the baseline, and the alarms (see the module's doc).
    ``until`` (default today, UTC) is the first day after the window.
    :class:`~cdss.errors.StoreError` when the store cannot be read."""
    settings = settings or MonitorSettings()
    step = _step(settings.period)
    end = period_of(until or datetime.now(timezone.utc).date(), settings.period)
    count = settings.baseline + settings.window
    periods = [end - step * (count - i) for i in range(count)]
    base, window = periods[:settings.baseline], periods[settings.baseline:]
    h = _read(location, periods, settings)
    services = []
    alarms: list[dict[str, Any]] = []
    for service in sorted(set(h.calls) | set(h.unmapped)):
        rules = []
        for rule in sorted(h.firings[service]):
            if rule == "":
                continue
            row, found = _rule_series(service, rule, h, settings, base, window)
            rules.append(row)
            alarms.extend(found)
        versions = _version_alarms(service, h, settings, window)
        alarms.extend(versions)
        overrides, found = _override(service, h, settings, base, window)
        alarms.extend(found)
        for row in rules:
            row["override"] = overrides.get(row["rule"])
        unmapped, found = _unmapped(service, h, settings, base, window)
        alarms.extend(found)
        services.append({
            "service": service,
            "calls": [{"period": p.isoformat(), "calls": h.calls[service][p]} for p in periods],
            "versions": [{"period": p.isoformat(), "ruleset": v[0], "sha256": v[1],
                          "calls": n}
                         for p in periods for v, n in sorted(h.versions[service][p].items())],
            "rules": rules, "unmapped_codes": unmapped})
    _causes(alarms, settings)
    alarms.sort(key=lambda a: (ALARM_KINDS.index(a["kind"]), a["service"], a["rule"] or "",
                               a["period"]))
    return {"source": "store", "settings": asdict(settings),
            "baseline": {"from": base[0].isoformat(), "until": window[0].isoformat()},
            "window": {"from": window[0].isoformat(), "until": end.isoformat()},
            "services": services, "alarms": alarms,
            "alarm_counts": dict(Counter(a["kind"] for a in alarms))}
