from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import cdss
from cdss.cli import app
from tests.support.builders import bundle, finding, patient
from tests.support.paths import ROOT

RUNNER = CliRunner()


def _record(tmp_path: Path) -> Path:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bundle(patient(), finding("c", "leg-cramps", nocturnal=True))))
    return path


def test_evaluate_prints_readable_text(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["evaluate", str(_record(tmp_path)), "--as-of", "2026-02-01",
                                 "--ruleset", "plantar-cramps@1.0.0"])
    assert result.exit_code == 0, result.output
    assert "Ruleset plantar-cramps@1.0.0" in result.output
    assert "Gently stretch the calves" in result.output
    assert "order Potassium" in result.output


def test_evaluate_json_is_the_assessment(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["evaluate", str(_record(tmp_path)), "--as-of", "2026-02-01",
                                 "--format", "json", "--ruleset", "plantar-cramps@1.0.0"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["ruleset"]["version"] == "1.0.0"
    assert {p["code"] for p in data["plan"]} >= {"bedtime-calf-stretch"}


def test_bad_file_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = RUNNER.invoke(app, ["evaluate", str(bad)])
    assert result.exit_code == 2
    assert "malformed JSON" in result.output and "Traceback" not in result.output


def test_rulesets_and_schema_commands() -> None:
    listed = RUNNER.invoke(app, ["rulesets"])
    assert listed.exit_code == 0 and "plantar-cramps@1.0.0" in listed.output
    default = cdss.load_ruleset().spec
    marked = [line.split()[0] for line in listed.output.splitlines() if " default " in line]
    assert marked == [default]
    schema = RUNNER.invoke(app, ["schema"])
    assert schema.exit_code == 0 and json.loads(schema.output)["title"] == "RulesetFile"


SITE = "http://hospital.example/fhir/CodeSystem/symptoms"
SITE_MAP = ROOT / "examples" / "site" / "concept-map.yaml"


def _site_record(tmp_path: Path) -> Path:
    path = tmp_path / "site.json"
    path.write_text(json.dumps(bundle(patient(), finding("c", "NC-17", system=SITE,
                                                         when="2026-02-20"))))
    return path


def test_evaluate_reads_a_sites_codes_through_a_concept_map(tmp_path: Path) -> None:
    record = str(_site_record(tmp_path))
    plain = RUNNER.invoke(app, ["evaluate", record, "--as-of", "2026-03-01", "--format", "json"])
    mapped = RUNNER.invoke(app, ["evaluate", record, "--as-of", "2026-03-01", "--format", "json",
                                 "--concept-map", str(SITE_MAP)])
    assert plain.exit_code == 0 and mapped.exit_code == 0, mapped.output
    before, after = json.loads(plain.output), json.loads(mapped.output)
    assert before["data_requests"] == [] and any(
        n["code"] == "unmapped-code" and n["coding"] == f"{SITE}|NC-17"
        for n in before["data_quality"])
    assert sorted(d["analyte"] for d in after["data_requests"]) == ["magnesium", "potassium"]
    assert after["ruleset"]["sha256"] != before["ruleset"]["sha256"]


def test_a_bad_concept_map_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("ruleset: plantar-cramps\nmaps:\n"
                   "  - {system: s, code: c, concept: leg_crampz}\n")
    result = RUNNER.invoke(app, ["evaluate", str(_site_record(tmp_path)), "--concept-map",
                                 str(bad)])
    assert result.exit_code == 2 and "leg_cramps" in result.output
    assert "Traceback" not in result.output


def test_evaluate_reads_times_without_a_zone_in_the_given_zone(tmp_path: Path) -> None:
    path = tmp_path / "naive.json"
    path.write_text(json.dumps(bundle(patient(), finding("c", "leg-cramps",
                                                         when="2026-02-20T23:30:00"))))
    result = RUNNER.invoke(app, ["evaluate", str(path), "--as-of", "2026-03-01", "--format",
                                 "json", "--timezone", "America/New_York"])
    assert result.exit_code == 0, result.output
    notes = [n for n in json.loads(result.output)["data_quality"] if n["code"] == "no-time-zone"]
    assert notes and "2026-02-20T23:30:00-05:00" in notes[0]["message"]
    bad = RUNNER.invoke(app, ["evaluate", str(path), "--timezone", "Mars/Olympus"])
    assert bad.exit_code == 2 and "Mars/Olympus" in bad.output


def test_evaluate_can_refuse_a_record_with_an_unreadable_resource(tmp_path: Path) -> None:
    path = tmp_path / "bad-lab.json"
    lab = {"resourceType": "Observation", "id": "k", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
           "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-02-20",
           "valueQuantity": {"value": "low", "unit": "mmol/L"}}
    path.write_text(json.dumps(bundle(patient(), lab)))
    kept = RUNNER.invoke(app, ["evaluate", str(path), "--as-of", "2026-03-01", "--format",
                               "json"])
    assert kept.exit_code == 0 and json.loads(kept.output)["incomplete"] is True
    refused = RUNNER.invoke(app, ["evaluate", str(path), "--on-invalid", "refuse"])
    assert refused.exit_code == 2 and "Observation/k" in refused.output


def test_screen_diff_and_test_ruleset_take_a_concept_map(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "Patient.ndjson").write_text(json.dumps(patient()) + "\n")
    (export / "Observation.ndjson").write_text(
        json.dumps(finding("c", "NC-17", system=SITE, when="2026-02-20")) + "\n")
    out = tmp_path / "out"
    result = RUNNER.invoke(app, ["screen", str(export), "--ruleset", "plantar-cramps",
                                 "--as-of", "2026-03-01", "--out", str(out), "--workers", "0",
                                 "--concept-map", str(SITE_MAP)])
    assert result.exit_code == 0, result.output
    (line,) = (out / "assessments.ndjson").read_text().splitlines()
    assert sorted(d["analyte"] for d in json.loads(line)["data_requests"]) == [
        "magnesium", "potassium"]
    result = RUNNER.invoke(app, ["diff", str(export), "--from", "plantar-cramps@1.1.0",
                                 "--to", "plantar-cramps@1.2.0", "--as-of", "2026-03-01",
                                 "--workers", "0", "--format", "json",
                                 "--concept-map", str(SITE_MAP)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["patients"] == 1
    mapped = __import__("cdss").load_ruleset("plantar-cramps@1.2.0", concept_maps=[SITE_MAP])
    assert report["to"]["sha256"] == mapped.sha256  # the site's map, not the plain ruleset
    result = RUNNER.invoke(app, ["test-ruleset", "plantar-cramps@1.2.0", "--max-examples", "5",
                                 "--concept-map", str(SITE_MAP)])
    assert result.exit_code in (0, 1), result.output
    assert mapped.sha256[:16] in result.output
