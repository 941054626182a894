"""plantar-cramps 1.4.0, the clinical safety review: what the cases cannot show.

The answers of each review item are clinical cases (``rulesets/plantar-cramps/
cases/3xx-*.yaml``); here are the citations (S10), the declared population and
its note (S11), the severity tiers as data (S1, S2) and the drug codes (S3, S4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import cdss
from cdss.rulesets import builtin_folder
from tests.support.builders import RXNORM, finding, lab, patient

RS = cdss.load_ruleset("plantar-cramps@1.4.0")
RULES = {r.id: r.rule for r in RS.rules}
AS_OF = "2026-03-01"


def _cites(rule_id: str) -> tuple[str, str]:
    c = RULES[rule_id].citation
    return c.source, c.section


def test_potassium_guidance_cites_kdigo_section_3_11() -> None:
    for rule in RS.file.rules:
        if rule.citation.source == "kdigo_ckd_2024":
            assert "potassium in CKD" not in rule.citation.section, rule.id
    for rule_id in ("PC-HK-01", "PC-HK-02", "PC-HK-03", "PC-ORD-02", "PC-ORD-04"):
        source, section = _cites(rule_id)
        assert source == "kdigo_ckd_2024" and section.startswith("3.11"), rule_id


def test_magnesium_food_suppression_does_not_cite_kdigo() -> None:
    suppressing = [r for r in RS.file.rules for a in r.then
                   if a.suppress and a.suppress.plan == "magnesium-rich-foods"]
    assert {r.id for r in suppressing} >= {"PC-CKD-03", "PC-MG-04", "PC-DIAL-01"}
    assert all(r.citation.source != "kdigo_ckd_2024" for r in suppressing)


def test_data_requests_cite_the_specification_not_the_seed() -> None:
    for rule_id in ("PC-DATA-01", "PC-DATA-02"):
        assert _cites(rule_id) == ("specification", "6. Missing data is a finding")


def test_severe_electrolyte_rules_cite_guidance_not_practice() -> None:
    severe = [r for r in RS.file.rules for a in r.then
              if (a.flag and a.flag.code in ("hypokalemia", "hypomagnesemia",
                                             "hyperkalemia-risk")
                  and a.flag.severity in ("high", "critical"))
              or a.plan in ("prompt-electrolyte-review", "urgent-medical-assessment-first")]
    assert {r.id for r in severe} >= {"PC-K-03", "PC-K-04", "PC-MG-03", "PC-LYTE-01",
                                      "PC-HK-04", "PC-HK-05"}
    for rule in severe:
        assert rule.citation.source in ("ukka_hyperkalaemia", "hypokalaemia_pathways",
                                        "reference_intervals"), rule.id


def test_the_specification_cited_has_the_sections_cited() -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "rulesets"
           / "plantar-cramps-specification.md").read_text(encoding="utf-8")
    headings = {line.lstrip("#").strip() for line in doc.splitlines() if line.startswith("#")}
    for rule in RS.file.rules:
        if rule.citation.source == "specification":
            heading = rule.citation.section.split(" (")[0]
            assert heading in headings, (rule.id, heading)


def test_tiers_are_thresholds_in_the_file() -> None:
    assert RS.threshold("potassium_urgent_high") == 6.0
    assert RS.threshold("potassium_critical_high") == 6.5
    assert RS.threshold("potassium_critical_low") == 2.5
    assert RS.boundaries["potassium"] == (2.5, 3.0, 3.5, 5.0, 6.0, 6.5)


def test_a_site_can_move_a_tier_without_code(tmp_path: Path) -> None:
    folder = tmp_path / "plantar-cramps"
    folder.mkdir()
    data = yaml.safe_load(RS.path.read_text(encoding="utf-8"))
    data["version"] = "1.4.1"
    data["thresholds"]["potassium_critical_high"]["value"] = 7.0
    for name in RS.file.valuesets:
        (folder / name).write_text((RS.path.parent / name).read_text(encoding="utf-8"))
    (folder / "1.4.1.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    record = [patient(), lab("k", "2823-3", 6.8, "mmol/L", when="2026-02-20")]
    site = cdss.evaluate(record, ruleset="plantar-cramps@1.4.1", paths=[tmp_path], as_of=AS_OF)
    shipped = cdss.evaluate(record, ruleset=RS, as_of=AS_OF)
    shipped_flag, site_flag = shipped.flag("hyperkalemia-risk"), site.flag("hyperkalemia-risk")
    assert shipped_flag is not None and shipped_flag.severity == "critical"
    assert site_flag is not None and site_flag.severity == "high"


def _facts(record: list[dict[str, Any]]) -> cdss.Facts:
    return cdss.extract_facts(record, ruleset=RS, as_of=AS_OF)


def test_a_record_outside_the_population_gets_a_note() -> None:
    young = cdss.evaluate([patient(birth="2010-06-01"), finding("c", "leg-cramps")],
                          ruleset=RS, as_of=AS_OF)
    note = next(n for n in young.data_quality if n.code == "outside-population")
    assert note.resource == "Patient/p1" and "below 18" in note.message
    assert young.plan == [] and {s.category for s in young.suppressed} >= {"exercise", "diet"}
    adult = cdss.evaluate([patient(birth="2008-03-01"), finding("c", "leg-cramps")],
                          ruleset=RS, as_of=AS_OF)
    assert not [n for n in adult.data_quality if n.code == "outside-population"]
    assert adult.plan
    # an unknown age is not outside the population: no note, adult advice
    unknown = cdss.evaluate([patient(birth=None), finding("c", "leg-cramps")],
                            ruleset=RS, as_of=AS_OF)
    assert not [n for n in unknown.data_quality if n.code == "outside-population"]


def test_earlier_versions_declare_no_population() -> None:
    old = cdss.evaluate([patient(birth="2010-06-01"), finding("c", "leg-cramps")],
                        ruleset="plantar-cramps@1.3.0", as_of=AS_OF)
    assert old.plan and not [n for n in old.data_quality if n.code == "outside-population"]


def _med(code: str, display: str) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": "m", "status": "active",
            "subject": {"reference": "Patient/p1"},
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code,
                                                      "display": display}]}}


@pytest.mark.parametrize(("code", "display", "concept"), [
    ("2562816", "finerenone 10 MG Oral Tablet", "potassium_sparing_diuretic"),
    ("9999999", "Finerenone 40 MG Oral Tablet", "potassium_sparing_diuretic"),
    ("1011739", "aliskiren 300 MG Oral Tablet", "renin_inhibitor"),
    ("198335", "sulfamethoxazole 800 MG / trimethoprim 160 MG Oral Tablet", "trimethoprim"),
    ("9999998", "Trimethoprim 200 MG Oral Tablet", "trimethoprim"),
    ("979492", "losartan potassium 50 MG Oral Tablet", "arb"),
])
def test_drugs_that_raise_the_potassium_are_read(code: str, display: str, concept: str) -> None:
    facts = _facts([patient(), _med(code, display)])
    assert facts.get(concept) is not None
    assert facts.get("potassium_supplement") is None


@pytest.mark.parametrize(("system", "code"), [
    ("http://hl7.org/fhir/sid/icd-10-cm", "Z99.2"), ("http://hl7.org/fhir/sid/icd-10-cm", "N18.6"),
    ("http://snomed.info/sct", "105502003"), ("http://snomed.info/sct", "443143006"),
])
def test_dialysis_is_read_from_the_codes_ehrs_send(system: str, code: str) -> None:
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p1"},
                 "clinicalStatus": {"coding": [{
                     "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                     "code": "active"}]},
                 "code": {"coding": [{"system": system, "code": code}]}}
    assert _facts([patient(), condition]).get("dialysis_dx") is not None


def test_every_new_case_states_what_the_earlier_versions_answered() -> None:
    cases = sorted((builtin_folder() / "plantar-cramps" / "cases").glob("3*.yaml"))
    assert len(cases) >= 30
    changed = 0
    for path in cases:
        expected = yaml.safe_load(path.read_text())["expected"]
        assert "1.4.0" in expected and len(expected) >= 2, path.name
        older = [v for k, v in expected.items() if k != "1.4.0"]
        changed += any(v != expected["1.4.0"] for v in older)
    # the rest are the cases where 1.4.0 must not fire (and does not)
    assert changed >= 18
