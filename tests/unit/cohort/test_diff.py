"""Version diff: which patients' flags and plans change between two versions
of a ruleset, and how.

Two versions of a small ruleset are written for the test: 1.1.0 raises the
potassium threshold (3.5 -> 3.8 mmol/L) and makes low magnesium a high-severity
flag. Each patient is built to show one kind of change.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cdss.cli import app
from cdss.cohort import diff
from cdss.cohort._worker import compare
from tests.support.builders import finding, lab
from tests.support.cohort import AS_OF, write_ndjson
from tests.support.rulesets import MINI_RULESET, write_ruleset


@pytest.fixture
def versions(tmp_path: Path) -> Path:
    folder = tmp_path / "rulesets"
    write_ruleset(folder, MINI_RULESET)
    newer: dict[str, Any] = copy.deepcopy(MINI_RULESET)
    newer["version"] = "1.1.0"
    newer["thresholds"]["k_low"]["value"] = 3.8
    for rule in newer["rules"]:
        if rule["id"] == "M-MG-01":
            rule["then"][0]["flag"]["severity"] = "high"
    write_ruleset(folder, newer)
    return folder


@pytest.fixture
def cohort_in(tmp_path: Path) -> Path:
    data = tmp_path / "in"
    write_ndjson(data / "Patient.ndjson",
                 [{"resourceType": "Patient", "id": p} for p in ("a", "b", "c")]
                 # an unreadable Patient: the record is refused under both versions
                 + [{"resourceType": "Patient", "id": "d", "birthDate": "soon"}])
    write_ndjson(data / "Observation.ndjson", [
        lab("k-a", "2823-3", 3.6, "mmol/L", pid="a"),      # low only under 1.1.0
        finding("cr-a", "leg-cramps", pid="a"),
        lab("k-b", "2823-3", 3.0, "mmol/L", pid="b"),      # low under both
        lab("mg-b", "2601-3", 0.6, "mmol/L", pid="b"),     # moderate -> high
        lab("k-c", "2823-3", 4.5, "mmol/L", pid="c"),      # normal under both
        lab("k-d", "2823-3", 3.0, "mmol/L", pid="d"),
    ])
    return data


def test_diff_reports_each_change(versions: Path, cohort_in: Path, tmp_path: Path) -> None:
    report = diff(cohort_in, from_ruleset="mini@1.0.0", to_ruleset="mini@1.1.0", as_of=AS_OF,
                  paths=[versions], workers=0, out=tmp_path / "diff.json")
    assert (report.patients, report.changed, report.unchanged, report.errors) == (4, 2, 1, 1)
    rules = {c["patient"]: c.get("rules") for c in report.changes}
    by_patient = {c["patient"]: {k: v for k, v in c.items() if k != "rules"}
                  for c in report.changes}
    assert list(by_patient) == ["Patient/a", "Patient/b", "Patient/d"]
    assert rules["Patient/b"] == [{"rule": "M-MG-01", "item": "flag", "code": "low-mg",
                                   "change": "changed"}]
    assert rules["Patient/d"] is None  # an error row: no rules
    assert by_patient["Patient/a"] == {
        "patient": "Patient/a",
        "flags": {"added": ["low-k"]},
        "plan": {"added": ["eat-bananas"], "removed": ["stretch"]},
        "highest_severity": {"from": None, "to": "moderate"},
    }
    assert by_patient["Patient/b"] == {
        "patient": "Patient/b",
        "flags": {"severity": [{"code": "low-mg", "from": "moderate", "to": "high"}]},
        "highest_severity": {"from": "moderate", "to": "high"},
    }
    assert set(by_patient["Patient/d"]["error"]) == {"from", "to"}
    assert report.tallies["flags_added"] == {"low-k": 1}
    assert report.tallies["severity_changed"] == {"low-mg: moderate -> high": 1}
    assert report.tallies["plan_removed"] == {"stretch": 1}
    written = orjson.loads((tmp_path / "diff.json").read_bytes())
    assert written["changes"] == report.changes
    assert written["from"]["version"] == "1.0.0" and written["to"]["version"] == "1.1.0"


def test_a_version_against_itself_changes_nothing(versions: Path, cohort_in: Path) -> None:
    report = diff(cohort_in, from_ruleset="mini@1.1.0", to_ruleset="mini@1.1.0", as_of=AS_OF,
                  paths=[versions], workers=0)
    assert (report.changed, report.unchanged, report.errors) == (0, 3, 1)
    assert [c["patient"] for c in report.changes] == ["Patient/d"]


def test_compare_is_empty_for_equal_assessments(versions: Path) -> None:
    import cdss

    rs = cdss.load_ruleset("mini@1.0.0", paths=[versions])
    record = [lab("k", "2823-3", 3.0, "mmol/L"), finding("f", "leg-cramps")]
    a = cdss.evaluate(record, ruleset=rs, as_of=AS_OF)
    assert compare(a, a) == {}
    newer = cdss.load_ruleset("mini@1.1.0", paths=[versions])
    b = cdss.evaluate([lab("k", "2823-3", 3.7, "mmol/L")], ruleset=newer, as_of=AS_OF)
    assert compare(a, b) == {"plan": {"removed": ["eat-bananas"]}}


def test_the_diff_command(versions: Path, cohort_in: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    same = runner.invoke(app, ["diff", str(cohort_in), "--from", "plantar-cramps@1.0.0",
                               "--to", "plantar-cramps@1.0.0", "--as-of", AS_OF,
                               "--workers", "0", "--out", str(tmp_path / "same.json")])
    assert same.exit_code == 0, same.output
    assert "0 changed" in same.output
    assert orjson.loads((tmp_path / "same.json").read_bytes())["counts"]["changed"] == 0
    table = runner.invoke(app, ["diff", str(cohort_in), "--from", "mini@1.0.0", "--to",
                                "mini@1.1.0", "--as-of", AS_OF, "--workers", "0",
                                "--rulesets", str(versions)])
    assert table.exit_code == 0, table.output
    assert "Patient/a" in table.output and "+low-k" in table.output
    as_json = runner.invoke(app, ["diff", str(cohort_in), "--from", "mini@1.0.0", "--to",
                                  "mini@1.1.0", "--as-of", AS_OF, "--workers", "0",
                                  "--rulesets", str(versions), "--format", "json"])
    assert orjson.loads(as_json.stdout)["counts"]["changed"] == 2
    missing = runner.invoke(app, ["diff", str(cohort_in), "--from", "mini@9.0.0", "--to",
                                  "mini@1.1.0", "--rulesets", str(versions)])
    assert missing.exit_code == 2 and "mini@9.0.0" in missing.output


def test_the_shipped_versions_can_be_compared(tmp_path: Path) -> None:
    """plantar-cramps 1.0.0 -> 1.1.0 over a generated cohort: every patient is
    accounted for once (the content of 1.1.0 is tested with the ruleset)."""
    from cdss.cohort import generate_cohort

    cohort = generate_cohort(80, seed=2, out=tmp_path / "in")
    report = diff(cohort.out, from_ruleset="plantar-cramps@1.0.0",
                  to_ruleset="plantar-cramps@1.1.0", as_of=AS_OF, workers=0)
    assert report.patients == 80
    assert report.changed + report.unchanged + report.errors == 80
    assert len(report.changes) == report.changed + report.errors
    assert [c["patient"] for c in report.changes] == sorted(c["patient"] for c in report.changes)
