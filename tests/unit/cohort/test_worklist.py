"""The screen's worklist: the patients to act on, in order, with their evidence.

Stated in words:

1. The worklist lists exactly the patients whose Assessment (as
   ``cdss.evaluate`` gives it) has a flag, referral or data request, ordered
   by highest severity, then first flag, then patient reference.
2. Its evidence is the value and unit as charted, with the date charted.
3. Without identifiers, neither the worklist files nor the report hold a
   patient reference or a resource id.
4. A screen stopped and resumed writes byte-identical worklist files.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from cdss.assessment import SEVERITY_RANK, Assessment
from cdss.cohort import GeneratedCohort
from cdss.cohort import _screen as cohort_mod
from cdss.cohort._worker import PartitionCounts
from tests.support.cohort import (
    AS_OF,
    interrupted_screen,
    screen_cohort,
    shared_expected,
)


@pytest.fixture(scope="module")
def expected(cohort: GeneratedCohort) -> dict[str, Assessment]:
    return {ref: Assessment.model_validate_json(data)
            for ref, data in shared_expected(cohort).items()}


def _screen(inputs: Any, out: Path, **kwargs: Any) -> cohort_mod.ScreenSummary:
    kwargs.setdefault("partitions", 5)
    return screen_cohort(inputs, out, **kwargs)


@pytest.fixture(scope="module")
def screened(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
             ) -> cohort_mod.ScreenSummary:
    return _screen([cohort.out], tmp_path_factory.mktemp("worklist"))


@pytest.fixture(scope="module")
def anonymous(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
              ) -> cohort_mod.ScreenSummary:
    return _screen([cohort.out], tmp_path_factory.mktemp("anonymous"), identifiers=False,
                   worklist_shown=20)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _expected_order(expected: dict[str, Assessment]) -> list[str]:
    """The patients to act on, in the documented order, computed here."""
    acting = [(ref, a) for ref, a in expected.items()
              if a.flags or a.referrals or a.data_requests]

    def order(item: tuple[str, Assessment]) -> tuple[int, str, str]:
        ref, a = item
        worst = max((SEVERITY_RANK[f.severity] for f in a.flags), default=-1)
        first = a.flags[0].code if a.flags else ""
        return -worst, first, ref

    return [ref for ref, _ in sorted(acting, key=order)]


def test_the_worklist_lists_the_patients_to_act_on_in_order(
        screened: cohort_mod.ScreenSummary, expected: dict[str, Assessment]) -> None:
    rows = _csv(screened.out / "worklist.csv")
    order = _expected_order(expected)
    assert 0 < len(order) < len(expected)  # the cohort has patients on and off it
    assert [r["patient"] for r in rows] == order
    assert [r["row"] for r in rows] == [str(i) for i in range(1, len(order) + 1)]
    assert screened.worklist == {"patients": len(order), "identifiers": True,
                                 "shown": len(order)}
    severities = [r["highest_severity"] for r in rows]
    assert "critical" in severities and severities[0] == "critical"
    for row in rows:
        a = expected[row["patient"]]
        assert row["highest_severity"] == (a.highest_severity or "")
        assert row["flag_codes"] == "; ".join(f.code for f in a.flags)
        for f in a.flags:
            assert f"{f.display} ({f.severity})" in row["flags"]
        for r in a.referrals:
            assert f"{r.display} ({r.urgency})" in row["referrals"]
        assert row["data_requests"] == "; ".join(d.display for d in a.data_requests)


def test_the_parquet_worklist_has_the_rows_of_the_csv(
        screened: cohort_mod.ScreenSummary) -> None:
    table = pq.read_table(screened.out / "worklist.parquet").to_pylist()
    rows = _csv(screened.out / "worklist.csv")
    assert len(table) == len(rows)
    for parquet_row, csv_row in zip(table, rows, strict=True):
        assert {k: str(v) for k, v in parquet_row.items()} == csv_row


def test_the_evidence_is_the_value_and_unit_as_charted(
        screened: cohort_mod.ScreenSummary, expected: dict[str, Assessment]) -> None:
    rows = {r["patient"]: r for r in _csv(screened.out / "worklist.csv")}
    labs = 0
    converted = 0
    for ref, row in rows.items():
        for flag in expected[ref].flags:
            for ev in flag.evidence:
                if "charted_value" not in ev.values:
                    continue
                labs += 1
                charted = f"{ev.fact.replace('_', ' ')} {ev.values['charted_value']}"
                if ev.values["charted_unit"] not in ("", "1"):
                    charted += f" {ev.values['charted_unit']}"
                charted += f" on {ev.values['charted_at']}"
                assert charted in row["evidence"]
                if ev.values["charted_unit"] != ev.values["unit"]:
                    converted += 1  # charted in another unit than the rules compared
                    assert f" {ev.values['value']} {ev.values['unit']}" not in row["evidence"]
    assert labs > 10 and converted > 0


def _identifiers(cohort: GeneratedCohort) -> set[str]:
    """Every patient reference and resource id of the cohort's files."""
    found: set[str] = set()
    for path in cohort.files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        for line in data.splitlines():
            res = orjson.loads(line)
            found.add(str(res["id"]))
            if res["resourceType"] == "Patient":
                found.add(f"Patient/{res['id']}")
    return found


def test_without_identifiers_no_patient_or_resource_id_is_written(
        cohort: GeneratedCohort, anonymous: cohort_mod.ScreenSummary,
        screened: cohort_mod.ScreenSummary) -> None:
    ids = _identifiers(cohort)
    texts = {"report.html": (anonymous.out / "report.html").read_text(),
             "worklist.csv": (anonymous.out / "worklist.csv").read_text()}
    table = pq.read_table(anonymous.out / "worklist.parquet")
    assert "patient" not in table.column_names
    texts["worklist.parquet"] = "\n".join(str(v) for row in table.to_pylist()
                                          for v in row.values())
    for name, text in texts.items():
        assert "Patient/" not in text, name
        leaked = {i for i in ids if i in text}
        assert not leaked, (name, sorted(leaked)[:5])
    # the same rows otherwise, numbered
    named = _csv(screened.out / "worklist.csv")
    numbered = _csv(anonymous.out / "worklist.csv")
    assert numbered == [{k: v for k, v in r.items() if k != "patient"} for r in named]
    # the check can fail: the named screen's files do hold the references
    assert any(r["patient"] in ids for r in named)
    assert "Patient/" in (screened.out / "report.html").read_text()
    assert anonymous.worklist["identifiers"] is False


def test_resuming_a_finished_screen_keeps_its_identifiers_setting(
        cohort: GeneratedCohort, anonymous: cohort_mod.ScreenSummary) -> None:
    from cdss.errors import CohortError

    again = _screen([cohort.out], anonymous.out, identifiers=False, resume=True)
    assert again.worklist == anonymous.worklist
    with pytest.raises(CohortError, match="identifiers"):
        _screen([cohort.out], anonymous.out, identifiers=True, resume=True)


def test_a_resumed_screen_writes_byte_identical_worklist_files(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "resumed"
    interrupted_screen(monkeypatch, 4, [cohort.out], out, partitions=5)
    assert not (out / "worklist.csv").exists()
    parts = out / ".cdss-screen" / "parts"
    assert len(list(parts.glob("*.worklist"))) == 3
    # a partition finished by a version without worklist files is done again
    next(iter(sorted(parts.glob("*.worklist")))).unlink()
    resumed = _screen([cohort.out], out, resume=True)
    assert resumed.timings["partitions_reused"] == 2
    for name in ("worklist.csv", "worklist.parquet"):
        assert (out / name).read_bytes() == (screened.out / name).read_bytes(), name
    assert resumed.demographics == screened.demographics


def test_the_demographic_tallies_match_the_patients(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary,
        expected: dict[str, Assessment]) -> None:
    from datetime import date

    people = screened.demographics
    assert sum(people["age_bands"].values()) == screened.assessed
    assert sum(people["sexes"].values()) == screened.assessed
    patients: dict[str, dict[str, Any]] = {}
    for path in cohort.files:
        for line in path.read_bytes().splitlines():
            res = orjson.loads(line)
            if res["resourceType"] == "Patient":
                patients[f"Patient/{res['id']}"] = res
    as_of = date.fromisoformat(AS_OF)
    by_sex: dict[str, dict[str, int]] = {}
    by_band: dict[str, dict[str, int]] = {}
    for ref, a in expected.items():
        patient = patients[ref]
        sex = patient.get("gender") or "unknown"
        born = date.fromisoformat(patient["birthDate"]) if "birthDate" in patient else None
        if born is None:
            band = "unknown"
        else:
            years = (as_of.year - born.year
                     - ((as_of.month, as_of.day) < (born.month, born.day)))
            band = ("0-17" if years < 18 else "18-39" if years < 40 else "40-64"
                    if years < 65 else "65-79" if years < 80 else "80+")
        for f in a.flags:
            by_sex.setdefault(f.code, {}).setdefault(sex, 0)
            by_sex[f.code][sex] += 1
            by_band.setdefault(f.code, {}).setdefault(band, 0)
            by_band[f.code][band] += 1
    assert people["flags_by_sex"] == {c: dict(sorted(v.items()))
                                      for c, v in sorted(by_sex.items())}
    assert people["flags_by_age_band"] == {c: dict(sorted(v.items()))
                                           for c, v in sorted(by_band.items())}


def test_an_earlier_done_marker_without_the_new_tallies_is_read() -> None:
    marker = orjson.dumps({
        "kind": "screen", "partition": 3, "patients": 2, "errors": 0, "resources": 9,
        "assessed": 2, "left_out": 0, "changed": 0, "unchanged": 0,
        "tallies": {"flags": {"hypokalemia": 1}, "severity": {"moderate": 1, "none": 1}},
        "seconds": 0.5, "pid": 1, "peak_rss_mb": None})
    counts = PartitionCounts.from_json(marker)
    assert counts.tally("flags") == {"hypokalemia": 1}
    assert counts.tally("flags_by_sex") == {}
