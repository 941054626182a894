"""``monitor_store`` on synthetic store histories, on both backends (SQLite,
and PostgreSQL in a fresh schema per test): each alarm fires on the fault
it is for and stays quiet on the same history without it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from cdss.errors import InvalidArgument, StoreError
from cdss.monitor import Fault, MonitorSettings, monitor_store, simulate, write_store

START = date(2026, 1, 1)
DAYS = 60
UNTIL = START + timedelta(days=DAYS)  # the window is the last 14 days
RATES = {"R-COMMON": 0.2, "R-MID": 0.05, "R-RARE": 0.005}
LOINC_NEW = "http://loinc.org|99999-9"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("pg_url"))


def _run(location: str, faults: Sequence[Fault] = (), seed: int = 3,
         **settings: Any) -> dict[str, Any]:
    write_store(location, simulate(rates=RATES, days=DAYS, calls_per_day=300, start=START,
                                   faults=faults, seed=seed))
    return monitor_store(location, until=UNTIL, settings=MonitorSettings(**settings))


def _alarms(report: dict[str, Any], kind: str, rule: str | None = None) -> list[dict[str, Any]]:
    return [a for a in report["alarms"] if a["kind"] == kind
            and (rule is None or a.get("rule") == rule)]


def test_a_fault_free_history_raises_no_alarm(location: str) -> None:
    report = _run(location)
    assert report["alarms"] == []
    rules = {r["rule"]: r for r in report["services"][0]["rules"]}
    assert set(rules) == set(RATES)
    assert rules["R-COMMON"]["baseline"]["rate"] == pytest.approx(0.2, abs=0.02)
    series = rules["R-COMMON"]["series"]
    assert len(series) == 14 and all(p["lower"] < p["rate"] < p["upper"] for p in series)


def test_a_silenced_rule_is_named_with_its_onset(location: str) -> None:
    report = _run(location, [Fault("silence", DAYS - 10, "R-MID")])
    silent = _alarms(report, "silent")
    assert [a["rule"] for a in silent] == ["R-MID"]
    onset = (START + timedelta(days=DAYS - 10)).isoformat()
    assert silent[0]["since"] == onset
    assert silent[0]["expected"] >= 7 and silent[0]["observed"] == 0
    # detected within three days of the onset at ~15 expected firings a day
    assert date.fromisoformat(silent[0]["period"]) - date.fromisoformat(onset) <= \
        timedelta(days=3)
    assert "none in the store" in silent[0]["likely_cause"][0]
    assert not _alarms(report, "silent", "R-COMMON") and not _alarms(report, "drop", "R-COMMON")


def test_a_rare_rule_is_not_called_silent_before_zero_is_implausible(location: str) -> None:
    # 0.5% of ~300 calls: ~1.5 expected a day; 7 expected takes about five days
    report = _run(location, [Fault("silence", DAYS - 3, "R-RARE")])
    assert not _alarms(report, "silent")


def test_a_rare_rule_silenced_for_ten_days_is_silent(location: str) -> None:
    report = _run(location, [Fault("silence", DAYS - 10, "R-RARE")])
    assert [a["rule"] for a in _alarms(report, "silent")] == ["R-RARE"]


def test_a_halved_rate_is_a_drop_with_its_size(location: str) -> None:
    report = _run(location, [Fault("scale", DAYS - 10, "R-COMMON", 0.5)])
    drops = _alarms(report, "drop", "R-COMMON")
    assert len(drops) == 1 and not _alarms(report, "silent")
    assert drops[0]["baseline_rate"] == pytest.approx(0.2, abs=0.02)
    assert drops[0]["change"] < 0.8
    assert date.fromisoformat(drops[0]["period"]) >= START + timedelta(days=DAYS - 10)


def test_a_doubled_rate_is_a_surge(location: str) -> None:
    report = _run(location, [Fault("scale", DAYS - 7, "R-MID", 2.0)])
    assert [a["rule"] for a in _alarms(report, "surge")] == ["R-MID"]
    assert not _alarms(report, "drop")


def test_a_new_lab_code_is_the_likely_cause_of_the_drop(location: str) -> None:
    report = _run(location, [Fault("unmapped", DAYS - 8, "R-COMMON", 0.6, LOINC_NEW)])
    unmapped = _alarms(report, "unmapped")
    assert [(a["code"], a["change"]) for a in unmapped] == [(LOINC_NEW, "appeared")]
    drops = _alarms(report, "drop", "R-COMMON")
    assert drops and any(LOINC_NEW in c for c in drops[0]["likely_cause"])


def test_a_version_change_names_the_rules_whose_rates_moved(location: str) -> None:
    report = _run(location, [Fault("version", DAYS - 7, "R-MID", 3.0, ruleset="rs@2.0.0")])
    versions = _alarms(report, "version")
    assert len(versions) == 1
    v = versions[0]
    assert (v["from"]["ruleset"], v["to"]["ruleset"]) == ("rs@1.0.0", "rs@2.0.0")
    assert v["period"] == (START + timedelta(days=DAYS - 7)).isoformat()
    assert [m["rule"] for m in v["rules_moved"]] == ["R-MID"]
    surge = _alarms(report, "surge", "R-MID")
    assert surge and "rs@2.0.0" in surge[0]["likely_cause"][0]


def test_an_override_rate_that_rises_is_an_alarm_with_its_reasons(location: str) -> None:
    report = _run(location, [Fault("override", DAYS - 14, "R-COMMON", 0.7)])
    found = _alarms(report, "override")
    assert [a["rule"] for a in found] == ["R-COMMON"]
    assert found[0]["rate"] > 0.5 > found[0]["baseline_rate"]
    assert found[0]["reasons"][0]["reason"] == "not-relevant"
    rules = {r["rule"]: r for r in report["services"][0]["rules"]}
    assert len(rules["R-COMMON"]["override"]["trend"]) == 14


def test_weekly_periods_see_the_same_silence(location: str) -> None:
    write_store(location, simulate(rates=RATES, days=200, calls_per_day=300, start=START,
                                   faults=[Fault("silence", 180, "R-MID")], seed=5))
    report = monitor_store(location, until=START + timedelta(days=203),
                           settings=MonitorSettings(period="week", window=6, baseline=20))
    assert [a["rule"] for a in _alarms(report, "silent")] == ["R-MID"]
    assert all(date.fromisoformat(p["period"]).weekday() == 0
               for p in report["services"][0]["rules"][0]["series"])


def test_bad_settings_and_missing_stores_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="period"):
        MonitorSettings(period="month")
    with pytest.raises(InvalidArgument, match="window"):
        MonitorSettings(window=0)
    with pytest.raises(StoreError, match="no store file"):
        monitor_store(tmp_path / "absent.sqlite3")
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        monitor_store(tmp_path / "junk.sqlite3")
