"""Bad input in a cohort: an error row or a clear message, and every other
patient still screened.

A resource that belongs to a patient but is bad makes that patient's row an
error row (naming the resource, field, file and line); a resource that cannot
be attributed to any patient (a truncated line, no subject, an unknown type
without a subject) is a resource error row with its file and line; a file
that cannot be read as NDJSON is a file error row; input that leaves nothing
to screen is a CohortError.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdss.cohort import CohortError, screen
from tests.support.builders import condition, lab
from tests.support.cohort import (
    AS_OF,
    RULESET,
    assessment_lines,
    read_ndjson,
    screen_cohort,
    write_ndjson,
)


def _patients(*ids: str) -> list[dict[str, Any]]:
    return [{"resourceType": "Patient", "id": pid, "gender": "female",
             "birthDate": "1970-01-01"} for pid in ids]


def _base(folder: Path) -> Path:
    """Three patients, each with a low potassium."""
    write_ndjson(folder / "Patient.ndjson", _patients("a", "b", "c"))
    write_ndjson(folder / "Observation.ndjson",
                 [lab(f"k-{p}", "2823-3", 3.1, "mmol/L", pid=p) for p in "abc"])
    return folder


def _assessed(out: Path) -> list[str]:
    return [orjson.loads(line)["patient"] for line in assessment_lines(out)]


def _errors(out: Path) -> list[dict[str, Any]]:
    return read_ndjson(out / "errors.ndjson")


def test_a_truncated_line_is_a_resource_error_with_file_and_line(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    good = orjson.dumps(lab("k2-b", "2823-3", 3.0, "mmol/L", pid="b"))
    write_ndjson(data / "Observation.2.ndjson", [good, good[: len(good) // 2], good])
    summary = screen_cohort(data, tmp_path / "out")
    (error,) = _errors(tmp_path / "out")
    assert error["kind"] == "resource" and error["error"] == "malformed-json"
    assert error["file"].endswith("Observation.2.ndjson") and error["line"] == 2
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/b", "Patient/c"]
    assert summary.resource_errors == 1 and summary.balanced
    assert summary.errors_by_kind == {"malformed-json": 1}


def test_a_malformed_first_line_is_one_error_row(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    first, second = (orjson.dumps(lab(f"k{i}-b", "2823-3", 3.0, "mmol/L", pid="b"))
                     for i in (2, 3))
    write_ndjson(data / "Observation.2.ndjson", [first[: len(first) // 2], first, second])
    summary = screen_cohort(data, tmp_path / "out")
    errors = _errors(tmp_path / "out")
    assert [(e["kind"], e["error"], e["line"]) for e in errors] == [
        ("resource", "malformed-json", 1)]
    assert errors[0]["file"].endswith("Observation.2.ndjson")
    assert summary.resource_errors == 1 and summary.errors_by_kind == {"malformed-json": 1}
    resources = summary.resources
    assert resources["resources"] == (resources["attributed"]
                                      + resources["not_patient_specific"]
                                      + resources["resource_errors"])
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/b", "Patient/c"]


@pytest.mark.parametrize("mode", ["lean", "strict"])
@pytest.mark.parametrize("shape", ["ndjson", "bundle"])
def test_a_patient_whose_patient_resource_is_refused_is_an_error_row(
        tmp_path: Path, mode: str, shape: str) -> None:
    """A Patient whose id is a number (FHIR ids are text) is refused; its
    patient's record is then refused as cdss.evaluate refuses it, with an
    error row tied to the patient, not assessed as if age and sex were
    unknown."""
    import cdss
    from cdss.errors import InputError

    refused = {"resourceType": "Patient", "id": 123, "gender": "male",
               "birthDate": "1940-01-01"}
    potassium = lab("k-123", "2823-3", 3.1, "mmol/L", pid="123")
    data = _base(tmp_path / "in")
    if shape == "ndjson":
        write_ndjson(data / "Patient.2.ndjson", [refused])
        write_ndjson(data / "Observation.2.ndjson", [potassium])
    else:
        data = tmp_path / "bundles"
        data.mkdir()
        potassium["subject"] = {"reference": "urn:uuid:p123"}
        (data / "b.json").write_bytes(orjson.dumps({
            "resourceType": "Bundle", "type": "collection", "entry": [
                {"fullUrl": "urn:uuid:p123", "resource": refused},
                {"resource": potassium}]}))
    summary = screen(data, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "out", workers=0,
                     mode=mode)
    (error,) = _errors(tmp_path / "out")
    assert (error["kind"], error["patient"], error["error"]) == ("patient", "Patient/123",
                                                                 "input")
    assert (error["resource_type"], error["resource_id"], error["field"]) == (
        "Patient", "123", "id")
    if shape == "ndjson":
        assert error["file"].endswith("Patient.2.ndjson") and error["line"] == 1
    with pytest.raises(InputError) as refusal:  # what the single-record API says
        cdss.evaluate([refused, lab("k-123", "2823-3", 3.1, "mmol/L", pid="123")],
                      ruleset=RULESET, as_of=AS_OF, mode=mode)
    assert error["reason"] == str(refusal.value)
    assert _assessed(tmp_path / "out") == (["Patient/a", "Patient/b", "Patient/c"]
                                           if shape == "ndjson" else [])
    assert (summary.patient_errors, summary.resource_errors) == (1, 0)
    assert summary.errors_by_kind == {"input": 1} and summary.balanced


def test_a_resource_without_a_subject_is_a_resource_error(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    orphan = lab("lost", "2823-3", 3.0, "mmol/L")
    del orphan["subject"]
    write_ndjson(data / "Observation.2.ndjson", [orphan])
    summary = screen_cohort(data, tmp_path / "out")
    (error,) = _errors(tmp_path / "out")
    assert (error["error"], error["resource_type"], error["resource_id"], error["line"]) == (
        "no-patient-reference", "Observation", "lost", 1)
    assert summary.assessed == 3


def test_an_unknown_resource_type(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    write_ndjson(data / "Odd.ndjson", [
        {"resourceType": "Observaton", "id": "x1"},  # names no patient
        {"resourceType": "Observaton", "id": "x2", "subject": {"reference": "Patient/b"}},
    ])
    summary = screen_cohort(data, tmp_path / "out")
    errors = {e["error"]: e for e in _errors(tmp_path / "out")}
    assert errors["unknown-resource-type"]["kind"] == "resource"
    assert errors["unknown-resource-type"]["line"] == 1
    # the one naming a patient is left out of that patient's record, who is still assessed
    left_out = errors["left-out"]
    assert (left_out["kind"], left_out["patient"]) == ("resource", "Patient/b")
    assert left_out["resource_type"] == "Observaton"
    assert left_out["file"].endswith("Odd.ndjson") and left_out["line"] == 2
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/b", "Patient/c"]
    assert (summary.patients, summary.assessed, summary.patient_errors) == (3, 3, 0)
    assert summary.resource_errors == 2 and summary.balanced


@pytest.mark.parametrize("mode", ["lean", "strict"])
def test_a_bad_resource_is_an_error_row_and_its_patient_still_assessed(tmp_path: Path,
                                                                      mode: str) -> None:
    data = _base(tmp_path / "in")
    write_ndjson(data / "Observation.2.ndjson",
                 [lab("bad", "2823-3", "three", "mmol/L", pid="c")])
    summary = screen(data, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "out", workers=0,
                     mode=mode)
    (error,) = _errors(tmp_path / "out")
    assert (error["kind"], error["patient"], error["error"]) == ("resource", "Patient/c",
                                                                 "left-out")
    assert (error["resource_type"], error["resource_id"], error["field"]) == (
        "Observation", "bad", "valueQuantity.value")
    assert error["file"].endswith("Observation.2.ndjson") and error["line"] == 1
    assert error["reason"]
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/b", "Patient/c"]
    assert summary.balanced and summary.patient_errors == 0 and summary.resource_errors == 1
    assert summary.errors_by_kind.get("left-out") == 1
    assessed_c = [orjson.loads(line) for line in
                  (tmp_path / "out" / "assessments.ndjson").read_bytes().splitlines()
                  if orjson.loads(line)["patient"] == "Patient/c"]
    assert assessed_c[0]["incomplete"] is True
    assert [lo["resource"] for lo in assessed_c[0]["left_out"]] == ["Observation/bad"]
    table_rows = __import__("pyarrow.parquet").parquet.read_table(
        tmp_path / "out" / "assessments.parquet").to_pylist()
    assert [(r["patient"], r["status"]) for r in table_rows] == [
        ("Patient/a", "assessed"), ("Patient/b", "assessed"), ("Patient/c", "assessed")]


def test_a_file_that_is_not_ndjson_is_a_file_error(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    (data / "pretty.ndjson").write_text('{\n  "resourceType": "Patient",\n  "id": "z"\n}\n')
    (data / "binary.ndjson").write_bytes(bytes(range(256)) * 40)
    summary = screen_cohort(data, tmp_path / "out")
    errors = _errors(tmp_path / "out")
    assert sorted((e["kind"], e["error"], Path(e["file"]).name) for e in errors) == [
        ("file", "not-ndjson", "binary.ndjson"), ("file", "not-ndjson", "pretty.ndjson")]
    assert summary.file_errors == 2 and summary.assessed == 3


def test_a_damaged_gzip_file_keeps_what_was_read(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    lines = b"".join(orjson.dumps(r) + b"\n" for r in _patients(*(f"g{i}" for i in range(50))))
    packed = gzip.compress(lines)
    (data / "More.ndjson.gz").write_bytes(packed[: len(packed) - 20])
    summary = screen_cohort(data, tmp_path / "out")
    (error,) = _errors(tmp_path / "out")
    assert (error["kind"], error["error"]) == ("file", "unreadable-file")
    assert summary.balanced and summary.assessed >= 3


def test_other_references_and_resources_of_no_patient(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    group_obs = lab("grp", "2823-3", 3.0, "mmol/L")
    group_obs["subject"] = {"reference": "Group/1"}
    absolute = lab("abs", "2823-3", 2.9, "mmol/L")
    absolute["subject"] = {"reference": "https://fhir.example.org/Patient/a"}
    write_ndjson(data / "Other.ndjson", [
        group_obs, absolute,
        {"resourceType": "Organization", "id": "org1", "name": "Clinic"},
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "subject": {"reference": "Patient/a"}},
        condition("c-d", "202882003", pid="d"),  # a patient with no Patient resource
    ])
    (data / "Other.ndjson").write_bytes((data / "Other.ndjson").read_bytes() + b"\n\n")
    summary = screen_cohort(data, tmp_path / "out")
    (error,) = _errors(tmp_path / "out")
    assert error["error"] == "not-a-patient-reference" and error["resource_id"] == "grp"
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/b", "Patient/c", "Patient/d"]
    rows = {orjson.loads(x)["patient"]: orjson.loads(x) for x in assessment_lines(
        tmp_path / "out")}
    potassium = [e for f in rows["Patient/a"]["flags"] for e in f["evidence"]
                 if e["fact"] == "potassium"]
    assert potassium and potassium[0]["values"]["value"] in (2.9, 3.1)
    assert rows["Patient/a"]["skipped_resources"] == {"Encounter": 1}
    assert summary.resources["not_patient_specific"] == 1
    assert summary.resources["blank"] == 2


@pytest.mark.parametrize("setup", ["empty", "unrelated", "missing"])
def test_nothing_to_screen_is_a_clear_cohort_error(tmp_path: Path, setup: str) -> None:
    folder = tmp_path / "in"
    if setup != "missing":
        folder.mkdir()
    if setup == "unrelated":
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(CohortError, match=r"no NDJSON|no such file"):
        screen_cohort(folder, tmp_path / "out")
    with pytest.raises(CohortError, match="no input"):
        screen_cohort([], tmp_path / "out")


def test_a_manifest_naming_a_missing_file(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    (data / "manifest.json").write_bytes(orjson.dumps({
        "transactionTime": "2026-03-01T00:00:00Z", "request": "x",
        "output": [{"type": "Patient", "url": "Patient.ndjson"},
                   {"type": "Condition", "url": "Condition.ndjson"}]}))
    with pytest.raises(CohortError, match=r"Condition\.ndjson"):
        screen_cohort(data, tmp_path / "out")


def test_an_empty_file_screens_no_one(tmp_path: Path) -> None:
    (tmp_path / "Patient.ndjson").write_bytes(b"")
    summary = screen_cohort(tmp_path / "Patient.ndjson", tmp_path / "out")
    assert (summary.patients, summary.assessed, summary.balanced) == (0, 0, True)
    assert (tmp_path / "out" / "assessments.ndjson").read_bytes() == b""


def test_bundle_files_with_problems(tmp_path: Path) -> None:
    folder = tmp_path / "bundles"
    folder.mkdir()
    good = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": _patients("a")[0]},
        {"resource": lab("k", "2823-3", 3.0, "mmol/L", pid="a")},
        {"fullUrl": "urn:uuid:none"}]}
    (folder / "a.json").write_bytes(orjson.dumps(good))
    (folder / "b.json").write_bytes(b'{"resourceType": "Bundle", "entry": [')
    (folder / "c.json").write_bytes(orjson.dumps({"hello": "world"}))
    (folder / "d.json").write_bytes(orjson.dumps([_patients("d")[0]]))
    summary = screen_cohort(folder, tmp_path / "out")
    kinds = sorted((e["kind"], e["error"]) for e in _errors(tmp_path / "out"))
    assert kinds == [("file", "not-fhir"), ("file", "not-json"), ("resource", "bad-bundle")]
    assert _assessed(tmp_path / "out") == ["Patient/a", "Patient/d"]
    assert summary.balanced


def test_the_command_reports_bad_input_clearly(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    result = CliRunner().invoke(app, ["screen", str(tmp_path / "nothing"), "--ruleset",
                                      RULESET, "--as-of", AS_OF, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output


def test_the_summary_and_report_list_the_most_frequent_unmapped_codes(tmp_path: Path) -> None:
    data = _base(tmp_path / "in")
    # the records chart heart rate under two displays, one more often; BMI under none
    hr = [lab(f"hr-{p}-{i}", "8867-4", 70, "/min", pid=p) for p in "abc" for i in (1, 2)]
    for res in hr:
        res["code"]["coding"][0]["display"] = "Pulse" if res["id"] == "hr-a-1" else "Heart rate"
    write_ndjson(data / "Observation.vitals.ndjson",
                 [*hr, lab("bmi-a", "39156-5", 24.0, "kg/m2", pid="a")])
    write_ndjson(data / "Condition.ndjson", [condition("x-b", "999999", pid="b")])
    summary = screen_cohort(data, tmp_path / "out")
    assert summary.unmapped_codes == {"http://loinc.org|8867-4": 3,
                                      "http://loinc.org|39156-5": 1,
                                      "http://snomed.info/sct|999999": 1}
    written = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert written["unmapped_codes"] == summary.unmapped_codes
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Codes that match no value set" in html and "http://loinc.org|8867-4" in html
    # with the display the records give the code most often; a code with none has none
    assert summary.displays["unmapped_codes"] == {"http://loinc.org|8867-4": "Heart rate"}
    assert "Heart rate (http://loinc.org|8867-4)" in html
