"""The shipped SQL on FHIR views, run by a runner someone else wrote.

``tests/tools/sof.mjs`` runs them with ``evalSqlOnFhir`` of @medplum/core (the
version locked in tests/tools/package-lock.json) over the FHIR output of a
screen. Stated in words:

1. Every view gives the rows the assessments say: the patients, flags,
   severities, rules, texts and evidence items of assessments.parquet (and of
   assessments.ndjson, where the table has no column for them), referrals and
   plan items.
2. Every view gives the rows of the tests' own runner over fhirpathpy
   (``tests.support.sof.run_view``), column by column and row by row.
3. The comparison can fail: a view with one column's path changed, or a
   screen without one patient's resources, gives rows that differ.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cdss.cohort import VIEWS, screen, view_definition
from tests.support.cohort import AS_OF, RULESET, read_ndjson, shared_cohort, write_ndjson
from tests.support.sof import Row, expected_rows, fhir_resources, mismatch, run_view
from tests.support.tools import run_node


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a screen with the FHIR output."""
    out = tmp_path_factory.mktemp("screen")
    screen([shared_cohort(tmp_path_factory).out], ruleset=RULESET, as_of=AS_OF, out=out,
           workers=0, partitions=4, formats=["fhir"])
    return out


@pytest.fixture(scope="module")
def expected(screened: Path) -> dict[str, list[Row]]:
    return expected_rows(screened)


def _write_view(path: Path, view: dict[str, Any]) -> Path:
    path.write_text(json.dumps(view), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def view_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The views as :func:`cdss.cohort.view_definition` gives them, as files."""
    folder = tmp_path_factory.mktemp("views")
    return [_write_view(folder / f"{name}.json", view_definition(name)) for name in VIEWS]


def _medplum(view_files: list[Path], fhir: Path) -> dict[str, list[Row]]:
    """medplum's rows of every view over the FHIR files in ``fhir``, by view."""
    found = run_node("sof.mjs", *view_files, fhir)
    return {name: found[view_definition(name)["name"]] for name in VIEWS}


@pytest.fixture(scope="module")
def medplum(screened: Path, view_files: list[Path]) -> dict[str, list[Row]]:
    return _medplum(view_files, screened / "fhir")


@pytest.mark.parametrize("name", VIEWS)
def test_medplum_gives_the_rows_of_the_assessments(
        medplum: dict[str, list[Row]], expected: dict[str, list[Row]], name: str) -> None:
    diff = mismatch(medplum[name], expected[name])
    assert expected[name] and not diff, diff


@pytest.mark.parametrize("name", VIEWS)
def test_medplum_gives_the_rows_of_our_runner(
        medplum: dict[str, list[Row]], screened: Path, name: str) -> None:
    ours = run_view(view_definition(name), fhir_resources(screened))
    theirs = medplum[name]
    columns = {column for row in ours for column in row}
    assert ours and columns == {column for row in theirs for column in row}
    for column in sorted(columns):
        assert Counter(r[column] for r in theirs) == Counter(r[column] for r in ours), column
    diff = mismatch(theirs, ours)
    assert not diff, diff


def test_a_changed_column_path_gives_other_rows(
        screened: Path, expected: dict[str, list[Row]], tmp_path: Path) -> None:
    view = view_definition("flags")
    column = next(c for c in view["select"][0]["column"] if c["name"] == "severity")
    column["path"] = "severity"  # DetectedIssue.severity, where critical is high
    rows = run_node("sof.mjs", _write_view(tmp_path / "flags.json", view),
                    screened / "fhir")[view["name"]]
    want = expected["flags"]
    assert any(r["severity"] == "critical" for r in want)
    assert mismatch(rows, want)
    assert not mismatch(rows, [{**r, "severity": r["fhir_severity"]} for r in want])


def test_a_screen_without_one_patients_resources_gives_other_rows(
        screened: Path, expected: dict[str, list[Row]], view_files: list[Path],
        tmp_path: Path) -> None:
    patient = min({r["patient"] for r in expected["referrals"]}
                  & {r["patient"] for r in expected["plan_items"]})
    for path in sorted((screened / "fhir").glob("*.ndjson")):
        write_ndjson(tmp_path / path.name, [
            res for res in read_ndjson(path)
            if (res.get("subject") or res.get("patient") or {}).get("reference") != patient])
    found = _medplum(view_files, tmp_path)
    for name in VIEWS:
        assert mismatch(found[name], expected[name]), name
        assert not mismatch(found[name], [r for r in expected[name]
                                          if r["patient"] != patient]), name
