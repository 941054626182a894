"""The cohort generator: deterministic bulk NDJSON with the variety a
ruleset reads (the default one, or a site's), derived from its files, valid
FHIR, lines not sorted by patient."""

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
from cdss.units import convert
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
    magnesium = cdss.load_ruleset("plantar-cramps@1.0.0").valuesets.analytes["magnesium"]
    assert {r["valueQuantity"]["unit"] for r in labs} >= {"mmol/L", "meq/L", "mg/dL"}
    mmol = {round(convert(r["valueQuantity"]["value"], r["valueQuantity"]["unit"],
                          magnesium).value or -1.0, 2) for r in labs}
    for threshold in (0.5, 0.7):
        assert threshold in mmol
        assert any(v < threshold for v in mmol) and any(v > threshold for v in mmol)


@pytest.mark.parametrize(("codes", "threshold"), [
    ({"2951-2", "2947-0"}, 145), ({"2692-2"}, 295), ({"2965-2", "5811-5"}, 1.030),
    ({"98979-8", "62238-1", "33914-3"}, 30), ({"98979-8", "62238-1", "33914-3"}, 45)])
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


# --------------------------------------------------------------------------- #
# The content comes from the ruleset's files
# --------------------------------------------------------------------------- #
def _site_ruleset(tmp_path: Path) -> Any:
    """The mini ruleset of the conftest with a site's own thresholds and a red
    flag; its value sets know nothing of the default ruleset's other codes."""
    import copy

    from cdss.rulesets import load_ruleset_file
    from tests.support.rulesets import MINI_RULESET, MINI_VALUESETS, write_ruleset

    ruleset = copy.deepcopy(MINI_RULESET)
    ruleset["id"] = "site"
    ruleset["thresholds"] = {"k_low": {"value": 3.3, "unit": "mmol/L"},
                             "mg_low": {"value": 0.62, "unit": "mmol/L"}}
    ruleset["rules"].append(
        {"id": "S-RF-01", "title": "Numb saddle", "when": {"any": [{"fact": "saddle"}]},
         "then": [{"flag": {"code": "red", "display": "Red flag", "severity": "critical"}}],
         "rationale": "Red flag.", "citation": {"source": "test", "section": "5"}})
    valuesets = copy.deepcopy(MINI_VALUESETS)
    valuesets["concepts"]["saddle"] = {"kind": "finding", "display": "Saddle", "codes": [
        {"system": "local", "code": "site-saddle", "verified": True}]}
    return load_ruleset_file(write_ruleset(tmp_path / "rulesets", ruleset, valuesets))


def _by_type(files: Any) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in files:
        for res in read_ndjson(path):
            by_type[res["resourceType"]].append(res)
    return by_type


def _canonical(res: dict[str, Any], analyte: Any) -> float | None:
    quantity = res["valueQuantity"]
    return convert(quantity["value"], quantity.get("unit"), analyte).value


def test_a_site_ruleset_gives_only_its_own_codes_around_its_own_thresholds(
        tmp_path: Path) -> None:
    from cdss.rulesets import _content

    rs = _site_ruleset(tmp_path)
    cohort = generate_cohort(400, ruleset=rs, seed=3, out=tmp_path / "out")
    by_type = _by_type(cohort.files)
    ours = {(rs.valuesets.systems.get(c.system, c.system), c.code)
            for concept in rs.valuesets.concepts.values() for c in concept.codes}
    noise = {("http://loinc.org", lab[0]) for lab in _content.UNRELATED_LABS} | \
        {("http://snomed.info/sct", c[0]) for c in _content.UNRELATED_CONDITIONS}
    coded = {(c["system"], c["code"]) for rtype in ("Observation", "Condition")
             for r in by_type[rtype] for c in r["code"]["coding"]}
    sites = {(c["system"], c["code"]) for r in by_type["Observation"]
             for c in r.get("bodySite", {}).get("coding", [])}
    assert coded - noise <= ours and sites <= ours
    assert coded & ours == {c for c in ours if c[1] != "calf"}  # every code of a fact concept
    assert not by_type["MedicationRequest"] and not by_type["AllergyIntolerance"]
    for name, threshold in (("potassium", 3.3), ("magnesium", 0.62)):
        codes = {c.code for c in rs.valuesets.concepts[name].codes}
        values = [_canonical(r, rs.valuesets.analytes[name]) for r in by_type["Observation"]
                  if r["code"]["coding"][0]["code"] in codes]
        assert all(v is not None for v in values)
        numbers = [v for v in values if v is not None]
        assert threshold in numbers
        assert any(threshold - 0.01 <= v < threshold for v in numbers)
        assert any(threshold < v <= threshold + 0.01 for v in numbers)
    # just below and above the site's threshold, never the default ruleset's (3.5)
    potassium = {_canonical(r, rs.valuesets.analytes["potassium"])
                 for r in by_type["Observation"]
                 if r["code"]["coding"][0]["code"] in ("2823-3", "6298-4")}
    assert {3.299, 3.301} <= potassium and not {3.499, 3.501} & potassium
    # the red flag is rare, the other finding is not
    findings = [r["code"]["coding"][0]["code"] for r in by_type["Observation"]
                if r["category"][0]["coding"][0]["code"] == "exam"]
    assert 0 < findings.count("site-saddle") < findings.count("leg-cramps") / 3
    manifest = orjson.loads(cohort.manifest.read_bytes())
    assert manifest["request"].endswith("--ruleset site@1.0.0")


def test_every_lab_code_and_unit_is_one_the_ruleset_reads(
        resources: dict[str, list[dict[str, Any]]]) -> None:
    rs = cdss.load_ruleset()
    seen: dict[str, set[str]] = defaultdict(set)
    for res in resources["Observation"]:
        if res["category"][0]["coding"][0]["code"] != "laboratory":
            continue
        coding = res["code"]["coding"][0]
        concepts = rs.terminology.concepts_of_coding(coding["system"], coding["code"])
        assert len(concepts) == 1, coding
        name = next(iter(concepts))
        analyte = rs.valuesets.analytes[name]
        value = _canonical(res, analyte)
        assert value is not None, res["valueQuantity"]
        assert analyte.plausible is None or \
            analyte.plausible[0] <= value <= analyte.plausible[1]
        seen[name].add(coding["code"])
    for name in rs.valuesets.analytes:
        listed = {c.code for c in rs.valuesets.concepts[name].codes}
        assert seen[name] == listed, name  # every code the concept lists
    units = {r["valueQuantity"]["unit"] for r in resources["Observation"]
             if "valueQuantity" in r and "code" not in r["valueQuantity"]}
    assert {"mEq/L", "mg/dl"} & units  # some units as free text


def test_every_threshold_the_rules_compare_a_lab_with_is_generated_on_both_sides(
        resources: dict[str, list[dict[str, Any]]]) -> None:
    rs = cdss.load_ruleset()
    values: dict[str, list[float]] = defaultdict(list)
    for res in resources["Observation"]:
        if "valueQuantity" not in res or res["category"][0]["coding"][0]["code"] != "laboratory":
            continue
        coding = res["code"]["coding"][0]
        for name in rs.terminology.concepts_of_coding(coding["system"], coding["code"]):
            value = _canonical(res, rs.valuesets.analytes[name])
            if value is not None:
                values[name].append(round(value, 9))
    checked = 0
    for rule in rs.rules:
        for pattern in (*rule.all, *rule.any, *rule.none):
            for test in pattern.tests:
                if test.field == "value" and pattern.fact in rs.valuesets.analytes:
                    t = float(test.value)
                    assert t in values[pattern.fact], (pattern.fact, t)
                    assert any(v < t for v in values[pattern.fact])
                    assert any(v > t for v in values[pattern.fact])
                    checked += 1
    assert checked >= 9


def test_the_default_ruleset_cohort_screens_with_flags_of_several_kinds(
        generated: Any) -> None:
    rs = cdss.load_ruleset()
    lab_flags = {a.flag.code for r in rs.rules for a in r.rule.then if a.flag and any(
        p.fact in rs.valuesets.analytes for p in (*r.all, *r.any))}
    red_flags = {a.flag.code for r in rs.rules for a in r.rule.then
                 if a.flag and a.flag.severity == "critical"}
    flags: set[str] = set()
    severities: set[str] = set()
    for _, record in sorted(group_by_patient(generated.files).items())[:300]:
        for flag in cdss.evaluate(record, ruleset=rs, as_of="2026-03-01").flags:
            flags.add(flag.code)
            severities.add(flag.severity)
    assert len(flags & lab_flags) >= 2 and flags & red_flags
    assert {"low", "moderate", "critical"} <= severities


def test_the_ruleset_is_part_of_what_makes_the_bytes(tmp_path: Path) -> None:
    rs = _site_ruleset(tmp_path)
    one = generate_cohort(40, ruleset=rs, seed=1, out=tmp_path / "one")
    two = generate_cohort(40, ruleset=rs, seed=1, out=tmp_path / "two")
    assert [p.read_bytes() for p in one.files] == [p.read_bytes() for p in two.files]
    default = generate_cohort(40, seed=1, out=tmp_path / "default")
    named = generate_cohort(40, ruleset=cdss.load_ruleset().spec, seed=1, out=tmp_path / "named")
    assert [p.read_bytes() for p in default.files] == [p.read_bytes() for p in named.files]
    assert one.files[1].read_bytes() != default.files[1].read_bytes()
    with pytest.raises(InvalidArgument, match="ruleset"):
        generate_cohort(1, ruleset=3, out=tmp_path / "bad")  # type: ignore[arg-type]


def test_generating_imports_no_hypothesis(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from cdss.cohort import generate_cohort;"
            f"generate_cohort(5, out={str(tmp_path)!r});"
            "print('hypothesis' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_the_generate_command_takes_a_ruleset(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    path = _site_ruleset(tmp_path).path
    result = CliRunner().invoke(app, ["generate", "--patients", "10", "--out",
                                      str(tmp_path / "g"), "--ruleset", str(path)])
    assert result.exit_code == 0, result.output
    manifest = orjson.loads((tmp_path / "g" / "manifest.json").read_bytes())
    assert manifest["request"].endswith("--ruleset site@1.0.0")
    bad = CliRunner().invoke(app, ["generate", "--patients", "1", "--out", str(tmp_path / "h"),
                                   "--ruleset", "no-such-ruleset"])
    assert bad.exit_code != 0
