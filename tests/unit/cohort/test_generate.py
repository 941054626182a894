"""The cohort generator: deterministic bulk NDJSON with the variety the
plantar-cramps ruleset reads, valid FHIR, lines not sorted by patient."""

from __future__ import annotations

import gzip
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

import cdss
from cdss.cohort import generate_cohort
from cdss.errors import InvalidArgument
from tests.support.cohort import group_by_patient, read_ndjson

AS_OF = date(2026, 3, 1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_cohort(600, seed=5, out=tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def resources(generated: Any) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in generated.files:
        for res in read_ndjson(path):
            by_type[res["resourceType"]].append(res)
    return by_type


def test_the_files_and_the_manifest(generated: Any) -> None:
    names = sorted(p.name for p in generated.out.iterdir())
    assert names == ["AllergyIntolerance.ndjson", "Condition.ndjson", "Encounter.ndjson",
                     "MedicationRequest.ndjson", "Observation.1.ndjson", "Observation.2.ndjson",
                     "Patient.ndjson", "manifest.json"]
    manifest = orjson.loads(generated.manifest.read_bytes())
    assert manifest["transactionTime"] == "2026-03-01T00:00:00Z"
    for item in manifest["output"]:
        lines = read_ndjson(generated.out / item["url"])
        assert item["count"] == len(lines) > 0
        assert {r["resourceType"] for r in lines} == {item["type"]}
    assert generated.patients == 600


def test_the_same_seed_gives_the_same_bytes(generated: Any, tmp_path: Path) -> None:
    again = generate_cohort(600, seed=5, out=tmp_path / "again")
    for a, b in zip(generated.files, again.files, strict=True):
        assert a.read_bytes() == b.read_bytes()
    other = generate_cohort(600, seed=6, out=tmp_path / "other")
    assert other.files[1].read_bytes() != generated.files[1].read_bytes()
    packed = generate_cohort(50, seed=5, out=tmp_path / "gz", gzip_files=True)
    packed2 = generate_cohort(50, seed=5, out=tmp_path / "gz2", gzip_files=True)
    assert packed.files[0].name == "Patient.ndjson.gz"
    assert packed.files[0].read_bytes() == packed2.files[0].read_bytes()
    assert gzip.decompress(packed.files[0].read_bytes()).count(b"\n") == 50


def test_lines_are_not_sorted_by_patient_and_patients_span_files(generated: Any) -> None:
    subjects = [r["subject"]["reference"] for r in read_ndjson(generated.files[1])]
    assert subjects != sorted(subjects)
    per_file = [{r["subject"]["reference"] for r in read_ndjson(p)} for p in generated.files[1:3]]
    assert len(per_file[0] & per_file[1]) > 50


def _labs(resources: dict[str, list[dict[str, Any]]], codes: set[str]) -> list[dict[str, Any]]:
    return [r for r in resources["Observation"]
            if r["code"]["coding"][0]["code"] in codes and "valueQuantity" in r]


def test_potassium_around_every_threshold_in_several_units(
        resources: dict[str, list[dict[str, Any]]]) -> None:
    labs = _labs(resources, {"2823-3", "6298-4", "77142-8"})
    values = {r["valueQuantity"]["value"] * 1.0 for r in labs}
    for threshold in (3.0, 3.5, 5.0):
        assert any(v < threshold for v in values) and any(v > threshold for v in values)
        assert threshold in values
    assert {r["valueQuantity"]["unit"] for r in labs} >= {"mmol/L", "meq/L"}
    assert {r["code"]["coding"][0]["code"] for r in labs} >= {"2823-3", "6298-4"}  # serum, blood


def test_magnesium_in_three_units_around_its_thresholds(
        resources: dict[str, list[dict[str, Any]]]) -> None:
    labs = _labs(resources, {"2601-3", "19123-9", "2593-2", "21377-7"})
    factor = {"mmol/L": 1.0, "meq/L": 2.0, "mg/dL": 2.4305, "mg/dl": 2.4305}
    assert {r["valueQuantity"]["unit"] for r in labs} >= {"mmol/L", "meq/L", "mg/dL"}
    mmol = {round(r["valueQuantity"]["value"] / factor[r["valueQuantity"]["unit"]], 2)
            for r in labs}
    for threshold in (0.5, 0.7):
        assert threshold in mmol
        assert any(v < threshold for v in mmol) and any(v > threshold for v in mmol)


@pytest.mark.parametrize(("codes", "threshold"), [
    ({"2951-2", "2947-0"}, 145), ({"2692-2"}, 295), ({"2965-2", "5811-5"}, 1.030),
    ({"98979-8", "62238-1", "33914-3"}, 30), ({"98979-8", "62238-1", "33914-3"}, 45),
    ({"98979-8", "62238-1", "33914-3"}, 60)])
def test_other_labs_around_their_thresholds(resources: dict[str, list[dict[str, Any]]],
                                            codes: set[str], threshold: float) -> None:
    values = [r["valueQuantity"]["value"] for r in _labs(resources, codes)]
    assert any(v < threshold for v in values) and any(v > threshold for v in values)
    assert any(v == threshold for v in values)


def test_statuses_stale_and_future_results(resources: dict[str, list[dict[str, Any]]]) -> None:
    statuses = {r["status"] for r in resources["Observation"]}
    assert {"final", "preliminary", "entered-in-error", "amended"} <= statuses
    ages = [(AS_OF - date.fromisoformat(r["effectiveDateTime"][:10])).days
            for r in _labs(resources, {"2823-3", "6298-4", "77142-8"})]
    assert any(age > 90 for age in ages) and any(age < 0 for age in ages)
    assert any(r["valueQuantity"].get("comparator") == "<" for r in resources["Observation"]
               if "valueQuantity" in r)
    assert _labs(resources, {"3094-0", "6299-2"}) and _labs(resources, {"2160-0", "14682-9"})


def test_findings_conditions_medications_and_allergies(
        resources: dict[str, list[dict[str, Any]]]) -> None:
    local = "https://cdss.dev/fhir/CodeSystem/findings"
    findings = [r for r in resources["Observation"] if r["code"]["coding"][0]["system"] == local]
    codes = {r["code"]["coding"][0]["code"] for r in findings}
    assert {"leg-cramps", "heel-pain", "first-step-pain", "saddle-anaesthesia"} <= codes
    cramps = [r for r in findings if r["code"]["coding"][0]["code"] == "leg-cramps"]
    assert any(r.get("bodySite", {}).get("coding", [{}])[0].get("code") == "calf"
               for r in cramps)
    assert any(c["code"]["coding"][0]["code"] == "nocturnal"
               for r in cramps for c in r.get("component", []))
    systems = {r["code"]["coding"][0]["system"] for r in resources["Condition"]}
    assert systems == {"http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"}
    verification = {r["verificationStatus"]["coding"][0]["code"]
                    for r in resources["Condition"]}
    assert "entered-in-error" in verification
    rs = cdss.load_ruleset("plantar-cramps@1.0.0")
    classes = set()
    for med in resources["MedicationRequest"]:
        classes |= rs.terminology.concepts_of(med["medicationCodeableConcept"])
    assert {"thiazide_diuretic", "loop_diuretic", "potassium_sparing_diuretic",
            "ace_inhibitor", "arb"} <= classes
    allergies = set()
    for allergy in resources["AllergyIntolerance"]:
        allergies |= rs.terminology.concepts_of(
            [allergy.get("code"), *(x.get("substance") for x in allergy.get("reaction", []))])
    assert "nut_allergy" in allergies
    assert resources["Encounter"]


def test_every_patient_is_valid_fhir_and_reads_alike_in_both_modes(generated: Any) -> None:
    rs = cdss.load_ruleset("plantar-cramps@1.0.0")
    groups = sorted(group_by_patient(generated.files).items())
    flags: set[str] = set()
    for _, record in groups[:120]:
        strict = cdss.evaluate(record, ruleset=rs, as_of="2026-03-01")
        lean = cdss.evaluate(record, ruleset=rs, as_of="2026-03-01", mode="lean")
        assert strict.to_json() == lean.to_json()
        flags.update(f.code for f in strict.flags)
    assert {"hypokalemia", "hypomagnesemia", "dehydration-suspected",
            "plantar-fasciitis-pattern"} <= flags


def test_ages_and_sexes(resources: dict[str, list[dict[str, Any]]]) -> None:
    births = [date.fromisoformat(p["birthDate"]) for p in resources["Patient"]
              if "birthDate" in p]
    assert min(births) >= AS_OF - timedelta(days=92 * 365)
    assert max(births) <= AS_OF - timedelta(days=18 * 365)
    assert len(births) < len(resources["Patient"])  # some without a birth date
    assert {p["gender"] for p in resources["Patient"]} >= {"female", "male"}


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        generate_cohort(-1, out=tmp_path)
    with pytest.raises(InvalidArgument):
        generate_cohort(10, out=tmp_path, observation_files=1)
    with pytest.raises(InvalidArgument):
        generate_cohort(10, seed="x", out=tmp_path)  # type: ignore[arg-type]


def test_the_generate_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    result = CliRunner().invoke(app, ["generate", "--patients", "20", "--seed", "1", "--out",
                                      str(tmp_path / "g"), "--gzip"])
    assert result.exit_code == 0, result.output
    assert "20 Patient" in result.output
    assert (tmp_path / "g" / "Observation.2.ndjson.gz").exists()
