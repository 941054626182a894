"""Every ruleset shipped with cdss keeps every invariant of cdss.testing.

For each version found in the rulesets folder (a new version is checked as
soon as its file exists), on records generated from its own value sets and
aimed at its own thresholds:

1. no exception but a CDSSError; byte-identical JSON for the same record, in
   any resource order, on either engine;
2. the same conclusions whatever the units, duplicates and irrelevant
   resources;
3. red flags win over exercise advice;
4. the monotonicity the file declares holds, and each declaration is put to
   the test;
5. every rule fires on some generated record.

Below them: regression tests of invariant violations the kit found in the
engine, named after what went wrong.
"""

from __future__ import annotations

import copy
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

import cdss
from cdss.facts import parse_time
from cdss.rulesets import available_rulesets
from cdss.testing import Report, check_ruleset, clinical_summary
from cdss.testing._invariants import _in_other_offsets

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

SPECS = sorted(available_rulesets())
EXAMPLES = 200


def _explain(report: Report) -> str:
    lines = [f"{report.ruleset}: seed {report.seed}"]
    for failure in report.failures:
        lines += [f"FAILED {failure.property}: {failure.message}", f"as_of: {failure.as_of}",
                  failure.record_json()]
    if report.dead_rules:
        lines.append(f"dead rules: {report.dead_rules}")
    return "\n".join(lines)


@pytest.fixture(scope="module", params=[(spec, seed) for spec in SPECS for seed in (0, 1)],
                ids=lambda p: f"{p[0]}-seed{p[1]}")
def report(request: pytest.FixtureRequest) -> Report:
    spec, seed = request.param
    return check_ruleset(spec, max_examples=EXAMPLES, seed=seed)


def test_every_invariant_holds(report: Report) -> None:
    assert report.ok, _explain(report)
    assert all(p.passed for p in report.properties)


def test_generated_records_raise_no_error(report: Report) -> None:
    assert report.errors == {}
    assert report.examples >= EXAMPLES


def test_every_rule_fires_while_exploring(report: Report) -> None:
    assert report.dead_rules == []
    assert [rule for rule, fired in report.coverage.items() if not fired] == []


def test_every_invariant_is_put_to_the_test(report: Report) -> None:
    unexercised = [p.name for p in report.properties if p.checked == 0]
    assert unexercised == []
    declared = [p for p in report.properties if p.name.startswith("monotonicity[")]
    ruleset = cdss.load_ruleset(report.ruleset)
    assert len(declared) == len(ruleset.file.invariants)


# --------------------------------------------------------------------------- #
# Invariant violations the kit found in the engine (cdss/facts.py, since fixed)
# --------------------------------------------------------------------------- #
AS_OF = "2026-01-01T00:00:00+00:00"
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01", "gender": "female"}


def _potassium(version: str, status: str, value: float,
               issued: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": "obs-1", "meta": {"versionId": version},
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2025-12-30T08:00:00Z",
        "valueQuantity": {"value": value, "unit": "mmol/L",
                          "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    }
    if issued is not None:
        res["issued"] = issued
    return res


def _conclusions(record: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(clinical_summary(cdss.evaluate(record, ruleset="plantar-cramps@1.0.0",
                                                       as_of=AS_OF)))


def test_an_issued_time_in_another_utc_offset_keeps_the_latest_version() -> None:
    """Observation.issued was compared as text: the superseded version won."""
    # version 1 (3.2, final) was issued at 09:00Z, written as 11:00+02:00;
    # version 2 (3.9, amended) was issued at 10:00Z and supersedes it
    in_utc = [PATIENT, _potassium("1", "final", 3.2, "2025-12-30T09:00:00Z"),
              _potassium("2", "amended", 3.9, "2025-12-30T10:00:00Z")]
    with_offset = copy.deepcopy(in_utc)
    with_offset[1]["issued"] = "2025-12-30T11:00:00+02:00"
    assert _conclusions(with_offset) == _conclusions(in_utc)
    assert b"hypokalemia" not in _conclusions(with_offset)  # version 2 (3.9) is the latest


def test_two_versions_without_issued_time_do_not_depend_on_order() -> None:
    """Two usable versions of one Observation, same time, no issued: the
    first in the input used to win."""
    record = [PATIENT, _potassium("1", "final", 3.2), _potassium("2", "amended", 3.9)]
    reordered = [record[0], record[2], record[1]]
    assert _conclusions(record) == _conclusions(reordered)
    assert b"hypokalemia" not in _conclusions(record)  # version 2 (3.9) is the latest


# --------------------------------------------------------------------------- #
# Time-zone invariance at the finding lookback edge (the record that failed:
# PC-SCI-01/03 fired on it and not on the same instants in another offset)
# --------------------------------------------------------------------------- #
OFFSETS = [timezone(timedelta(minutes=m)) for m in (-600, -300, 0, 90, 330, 840)]
_EDGE = datetime(2025, 1, 1, tzinfo=timezone.utc)  # 365 days before AS_OF: still inside


def _sciatica(effective: str) -> list[dict[str, Any]]:
    """Radiating leg pain and low back pain, both charted at ``effective``."""
    local = cdss.load_ruleset("plantar-cramps@1.0.0").valuesets.systems["local"]
    return [PATIENT, *({"resourceType": "Observation", "id": f"finding-{n}", "status": "final",
                        "code": {"coding": [{"system": local, "code": code}]},
                        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": effective,
                        "valueBoolean": True}
                       for n, code in enumerate(("radiating-leg-pain", "low-back-pain-symptom")))]


def _fired(record: list[dict[str, Any]], engine: str) -> list[str]:
    result = cdss.evaluate(record, ruleset="plantar-cramps@1.0.0", as_of=AS_OF, engine=engine)
    return [t.rule_id for t in result.trace]


@pytest.mark.parametrize(("when", "fires"), [(_EDGE, True), (_EDGE - timedelta(seconds=1), False),
                                             (_EDGE + timedelta(hours=23), True)])
@pytest.mark.parametrize("engine", ["rete", "reference"])
def test_sciatica_fires_alike_on_the_same_instants_in_every_utc_offset(
        when: datetime, fires: bool, engine: str) -> None:
    """The failure was a firing lost at random by durable-rules' background
    timer threads (cdss/engine.py, since fixed); this pins what must hold
    instead, at the edge of the 365-day finding lookback: an instant is an
    instant, in whatever offset it is written, on every evaluation."""
    expected = ["PC-SCI-01", "PC-SCI-03"] if fires else []
    for zone in OFFSETS:
        written = when.astimezone(zone).isoformat()
        for _ in range(20):
            assert _fired(_sciatica(written), engine) == expected, written


def test_a_date_without_a_time_keeps_its_day_and_is_not_rewritten_in_another_offset() -> None:
    """A date-only value has no offset: it is the day that starts at
    00:00Z (inside the lookback on its 365th day), and the kit's time-zone
    variant leaves it as it is while rewriting every date-time."""
    record = [*_sciatica("2025-01-01"), {**_sciatica("2025-06-01T08:00:00Z")[1], "id": "x"}]
    assert _fired(record, "rete") == ["PC-SCI-01", "PC-SCI-03"]
    seen: list[list[dict[str, Any]]] = []

    @settings(max_examples=30, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_in_other_offsets(record))
    def check(variant: list[dict[str, Any]]) -> None:
        seen.append(variant)
        assert [r.get("effectiveDateTime") for r in variant[1:3]] == ["2025-01-01"] * 2
        moved = variant[3]["effectiveDateTime"]
        assert parse_time(moved) == parse_time("2025-06-01T08:00:00Z")
        assert _conclusions(variant) == _conclusions(record)

    check()
    assert len({v[3]["effectiveDateTime"] for v in seen}) > 1  # several offsets were drawn


def test_checking_a_ruleset_leaves_no_thread_that_could_run_engine_actions() -> None:
    """What lost the firings: durable-rules' Host ran two timer threads that
    took pending actions out of the C engine behind the engine's lock, so a
    rule fired on one record and not on an equivalent one (a different rule
    each run; here PC-SCI-01/03 on the time-zone variant)."""
    before = set(threading.enumerate())
    report = check_ruleset("plantar-cramps@1.0.0", max_examples=30, seed=0,
                           properties=["time-zone-invariance", "determinism"])
    assert report.ok, _explain(report)
    assert [t for t in threading.enumerate() if isinstance(t, threading.Timer)] == []
    assert set(threading.enumerate()) <= before
