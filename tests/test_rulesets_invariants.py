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
from typing import Any

import orjson
import pytest

import cdss
from cdss.rulesets import available_rulesets
from cdss.testing import Report, check_ruleset, clinical_summary

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
    assert len(declared) == len(ruleset.source.invariants)


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
