"""Facts from records coded as EHRs code them: sides, sites the codes imply,
codes that match nothing, and labs as charted (plantar-cramps 1.2.0)."""

from __future__ import annotations

from typing import Any

import cdss
from tests.support.builders import ICD10CM, SNOMED, condition, finding, lab, patient

AS_OF = "2026-03-01"
V12 = "plantar-cramps@1.2.0"


def facts(*resources: dict[str, Any], ruleset: str = V12) -> cdss.Facts:
    return cdss.extract_facts(list(resources), ruleset=ruleset, as_of=AS_OF)


def bilateral(fs: cdss.Facts) -> dict[str, Any] | None:
    fact = fs.get("bilateral_leg_symptoms")
    return None if fact is None else dict(fact.values)


def present(fs: cdss.Facts, name: str) -> dict[str, Any]:
    """The values of the fact ``name``, which must be there."""
    fact = fs.get(name)
    assert fact is not None, f"no {name} fact"
    return dict(fact.values)


def test_a_right_and_a_left_sciatica_code_are_bilateral_leg_symptoms() -> None:
    fs = facts(patient(), condition("r", "M54.31", system=ICD10CM, onset="2026-02-01"),
               condition("l", "M54.32", system=ICD10CM, onset="2026-02-10"))
    assert bilateral(fs) == {"status": "present", "age_days": 19, "laterality": "bilateral"}
    fact = fs.get("bilateral_leg_symptoms")
    assert fact is not None and fact.sources == ("Condition/l", "Condition/r")


def test_one_side_alone_is_not_bilateral() -> None:
    fs = facts(patient(), condition("r", "M54.31", system=ICD10CM, onset="2026-02-01"),
               condition("r2", "M54.41", system=ICD10CM, onset="2026-02-03"))
    assert bilateral(fs) is None


def test_pinned_versions_know_no_sides() -> None:
    for version in ("plantar-cramps@1.0.0", "plantar-cramps@1.1.0"):
        fs = facts(patient(), condition("r", "M54.31", system=ICD10CM, onset="2026-02-01"),
                   condition("l", "M54.32", system=ICD10CM, onset="2026-02-10"), ruleset=version)
        assert bilateral(fs) is None


def test_a_side_older_than_the_lookback_does_not_count() -> None:
    fs = facts(patient(), condition("r", "M54.31", system=ICD10CM, onset="2015-02-01"),
               condition("l", "M54.32", system=ICD10CM, onset="2026-02-10"))
    assert bilateral(fs) is None


def test_a_side_later_charted_absent_does_not_count() -> None:
    right = {"coding": [{"system": SNOMED, "code": "24028007"}]}
    left = {"coding": [{"system": SNOMED, "code": "7771000"}]}
    was = {**finding("a", "radiating-leg-pain", when="2026-01-05"), "bodySite": right}
    now_not = {**finding("b", "radiating-leg-pain", present=False, when="2026-01-20"),
               "bodySite": right}
    other = {**finding("c", "radiating-leg-pain", when="2026-02-01"), "bodySite": left}
    assert bilateral(facts(patient(), was, now_not, other)) is None
    assert present(facts(patient(), was, other), "bilateral_leg_symptoms")["status"] == "present"


def test_a_newer_charted_absence_of_bilateral_symptoms_is_believed() -> None:
    coded = [condition("r", "M54.31", system=ICD10CM, onset="2026-01-01"),
             condition("l", "M54.32", system=ICD10CM, onset="2026-01-02")]
    newer = finding("n", "bilateral-leg-symptoms", present=False, when="2026-02-20")
    older = finding("o", "bilateral-leg-symptoms", present=False, when="2025-12-20")
    assert present(facts(patient(), *coded, newer), "bilateral_leg_symptoms")["status"] == "absent"
    assert present(facts(patient(), *coded, older), "bilateral_leg_symptoms")["status"] == "present"


def test_a_bilateral_body_site_qualifier_is_bilateral() -> None:
    both = {"coding": [{"system": SNOMED, "code": "51440002"}]}
    fs = facts(patient(), {**condition("s", "23056005", onset="2026-02-01"), "bodySite": [both]})
    assert present(fs, "bilateral_leg_symptoms")["status"] == "present"


def test_a_calf_spasm_code_gives_the_calf_as_site() -> None:
    fs = facts(patient(), condition("c", "M62.831", system=ICD10CM, onset="2026-02-01"))
    assert present(fs, "leg_cramps")["site"] == "calf"
    # a recorded body site wins over the site the code implies
    fs = facts(patient(), {**condition("c", "M62.831", system=ICD10CM, onset="2026-02-01"),
                           "bodySite": [{"coding": [{"system": "https://cdss.dev/fhir/"
                                                     "CodeSystem/findings", "code": "thigh"}]}]})
    assert present(fs, "leg_cramps")["site"] == "thigh"


def test_codes_that_match_no_value_set_are_noted_by_code() -> None:
    vitals = [lab(f"v{i}", "8867-4", 70 + i, "/min") for i in range(3)]
    fs = facts(patient(), *vitals, condition("x", "999999"))
    notes = {n.message.split(" ")[0]: n for n in fs.data_quality if n.code == "unmapped-code"}
    assert set(notes) == {"http://loinc.org|8867-4", "http://snomed.info/sct|999999"}
    assert "3 resources" in notes["http://loinc.org|8867-4"].message
    assert notes["http://loinc.org|8867-4"].resource == "Observation/v0"


def test_a_lab_carries_its_value_as_charted() -> None:
    fs = facts(patient(), lab("m", "19123-9", 1.5, "mg/dL", when="2026-02-14"))
    values = present(fs, "magnesium")
    assert (values["charted_value"], values["charted_unit"], values["charted_at"]) == \
        (1.5, "mg/dL", "2026-02-14")
    assert values["value"] == float(f"{1.5 / 2.4305:.10g}")  # rules see full precision


def test_a_sleep_related_cramp_code_is_nocturnal_unless_a_component_says_otherwise() -> None:
    coded = condition("c", "G47.62", system=ICD10CM, onset="2026-02-01")
    assert present(facts(patient(), coded), "leg_cramps")["nocturnal"] is True
    observed = {**finding("o", "leg-cramps", nocturnal=False, when="2026-02-01"),
                "code": {"coding": [{"system": ICD10CM, "code": "G47.62"}]}}
    assert present(facts(patient(), observed), "leg_cramps")["nocturnal"] is False
    plain = condition("c", "R25.2", system=ICD10CM, onset="2026-02-01")
    assert "nocturnal" not in present(facts(patient(), plain), "leg_cramps")
