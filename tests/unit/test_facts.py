"""Facts: latest in window, unknown is not absent, ignored data is noted."""

from __future__ import annotations

import pytest

import cdss
from cdss.errors import InputError
from tests.support.builders import (
    ICD10CM,
    LOINC,
    allergy,
    condition,
    finding,
    lab,
    medication,
    patient,
)

AS_OF = "2026-03-01"


def facts(*resources: dict) -> cdss.Facts:
    return cdss.extract_facts(list(resources), ruleset="plantar-cramps@1.0.0", as_of=AS_OF,
                              on_invalid="refuse")


def values(fs: cdss.Facts, name: str) -> dict:
    """The values of the fact ``name``, which must be there."""
    fact = fs.get(name)
    assert fact is not None, f"no {name} fact"
    return dict(fact.values)


def notes(fs: cdss.Facts) -> set[tuple[str, str | None]]:
    return {(n.code, n.resource) for n in fs.data_quality}


def test_age_and_sex_at_as_of() -> None:
    fs = facts(patient(birth="1970-03-02", gender="female"))
    assert values(fs, "patient") == {"age": 55, "sex": "female"}
    assert values(facts(patient(birth=None, gender=None)), "patient") == {}


def test_latest_lab_in_window_wins_with_its_source() -> None:
    fs = facts(patient(), lab("old", "2823-3", 3.1, "mmol/L", when="2026-01-01"),
               lab("new", "6298-4", 4.2, "mmol/L", when="2026-02-20"))
    fact = fs.get("potassium")
    assert fact is not None and fact.sources == ("Observation/new",)
    assert fact.values["value"] == 4.2 and fact.values["status"] == "determinate"


def test_lab_outside_lookback_counts_as_missing() -> None:
    fs = facts(patient(), lab("k", "2823-3", 3.1, "mmol/L", when="2025-10-01"))
    assert fs.get("potassium") is None
    assert ("outside-lookback", "Observation/k") in notes(fs)


def test_lab_on_the_last_day_of_lookback_is_used() -> None:
    fs = facts(patient(), lab("k", "2823-3", 3.1, "mmol/L", when="2025-12-01"))  # 90 days
    assert values(fs, "potassium")["value"] == 3.1


def test_entered_in_error_cancelled_preliminary_and_future_are_ignored_and_noted() -> None:
    fs = facts(patient(),
               lab("e", "2823-3", 2.0, "mmol/L", status="entered-in-error"),
               lab("c", "2823-3", 2.0, "mmol/L", status="cancelled"),
               lab("p", "2823-3", 2.0, "mmol/L", status="preliminary"),
               lab("f", "2823-3", 2.0, "mmol/L", when="2026-04-01"))
    assert fs.get("potassium") is None
    assert {("entered-in-error", "Observation/e"), ("cancelled", "Observation/c"),
            ("not-final", "Observation/p"), ("future-dated", "Observation/f")} <= notes(fs)


def test_final_beats_a_later_preliminary() -> None:
    fs = facts(patient(), lab("fin", "2823-3", 3.9, "mmol/L", when="2026-02-01"),
               lab("pre", "2823-3", 2.9, "mmol/L", when="2026-02-02", status="preliminary"))
    assert values(fs, "potassium")["value"] == 3.9


def test_unconvertible_unit_is_indeterminate_and_noted() -> None:
    fs = facts(patient(), lab("k", "2823-3", 3.1, "g/furlong"))
    fact = values(fs, "potassium")
    assert fact is not None and fact["status"] == "indeterminate" and "value" not in fact
    assert ("indeterminate", "Observation/k") in notes(fs)


def test_a_bound_is_indeterminate() -> None:
    obs = lab("k", "2823-3", 3.0, "mmol/L")
    obs["valueQuantity"]["comparator"] = "<"
    assert values(facts(patient(), obs), "potassium")["status"] == "indeterminate"


def test_absurd_magnitude_is_an_input_error() -> None:
    with pytest.raises(InputError) as info:
        facts(patient(), lab("k", "2823-3", 4500, "mmol/L"))
    assert (info.value.resource_type, info.value.resource_id) == ("Observation", "k")
    assert info.value.field == "valueQuantity.value"


def test_magnesium_units_agree() -> None:
    a = values(facts(patient(), lab("m", "19123-9", 1.70135, "mg/dL")), "magnesium")
    b = values(facts(patient(), lab("m", "2601-3", 0.7, "mmol/L")), "magnesium")
    c = values(facts(patient(), lab("m", "2601-3", 1.4, "meq/L")), "magnesium")
    assert a["value"] == pytest.approx(b["value"]) == pytest.approx(c["value"])


def test_bun_creatinine_ratio_is_computed_when_not_reported() -> None:
    recent = "2026-02-20"  # hydration markers look back 30 days
    fs = facts(patient(), lab("b", "3094-0", 30, "mg/dL", when=recent),
               lab("c", "2160-0", 1.0, "mg/dL", when=recent))
    ratio = fs.get("bun_creatinine_ratio")
    assert ratio is not None and ratio.values["value"] == 30 and ratio.values["computed"]
    assert ratio.sources == ("Observation/b", "Observation/c")
    reported = facts(patient(), lab("b", "3094-0", 30, "mg/dL", when=recent),
                     lab("c", "2160-0", 1.0, "mg/dL", when=recent),
                     lab("r", "3097-3", 12, "{ratio}", when=recent))
    stale = facts(patient(), lab("b", "3094-0", 30, "mg/dL", when=recent),
                  lab("c", "2160-0", 1.0, "mg/dL", when="2026-01-10"))
    assert stale.get("bun_creatinine_ratio") is None
    assert values(reported, "bun_creatinine_ratio")["value"] == 12


def test_findings_present_absent_and_unknown() -> None:
    fs = facts(patient(), finding("a", "leg-cramps", site="calf", nocturnal=True),
               finding("b", "saddle-anaesthesia", present=False))
    assert values(fs, "leg_cramps") == {"status": "present", "site": "calf", "nocturnal": True,
                                        "age_days": 50}
    assert values(fs, "saddle_anaesthesia") == {"status": "absent", "age_days": 50}
    assert fs.get("bladder_dysfunction") is None  # unknown: no fact, never "absent"


def test_latest_finding_record_wins() -> None:
    fs = facts(patient(), finding("a", "leg-cramps", when="2026-01-01"),
               finding("b", "leg-cramps", present=False, when="2026-02-01"))
    assert values(fs, "leg_cramps") == {"status": "absent", "age_days": 28}


def test_conditions_in_snomed_and_icd10cm_active_only() -> None:
    assert facts(patient(), condition("c", "202882003")).get("plantar_fasciitis_dx")
    assert facts(patient(), condition("c", "M72.2", system=ICD10CM)).get("plantar_fasciitis_dx")
    assert facts(patient(), condition("c", "202882003", clinical="resolved")).get(
        "plantar_fasciitis_dx") is None
    refuted = facts(patient(), condition("c", "202882003", verification="refuted"))
    assert refuted.get("plantar_fasciitis_dx") is None
    assert ("refuted", "Condition/c") in notes(refuted)


def test_a_neuropathy_due_to_diabetes_is_both() -> None:
    fs = facts(patient(), condition("c", "368581000119106"))
    assert fs.get("peripheral_neuropathy_dx") and fs.get("diabetes_dx")


def test_medication_classes_active_only() -> None:
    fs = facts(patient(), medication("m1", "316049"), medication("m2", "1719286",
                                                                 status="stopped"))
    assert fs.get("thiazide_diuretic") is not None
    assert fs.get("loop_diuretic") is None
    statement = facts(patient(), medication("m3", "316049", kind="MedicationStatement"))
    assert statement.get("thiazide_diuretic") is not None


def test_allergy_active_and_not_refuted() -> None:
    assert facts(patient(), allergy("a", "91935009")).get("nut_allergy") is not None
    assert facts(patient(), allergy("a", "91935009", verification="refuted")).get(
        "nut_allergy") is None


def test_facts_are_immutable_and_sorted() -> None:
    fs = facts(patient(), lab("k", "2823-3", 3.1, "mmol/L"), condition("c", "202882003"))
    assert [f.id for f in fs.items] == sorted(f.id for f in fs.items)
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic raises its own type
        fs.items[0].name = "x"  # type: ignore[misc]
    assert LOINC  # builders and facts agree on the system


def test_medication_class_from_ingredient_name_when_the_code_is_unknown() -> None:
    med = medication("m", "99999999")  # a clinical-drug code not in the value sets
    med["medicationCodeableConcept"]["coding"][0]["display"] = "Spironolactone 25 MG Oral Tablet"
    fs = facts(patient(), med)
    assert fs.get("potassium_sparing_diuretic") is not None
    assert ("medication-by-name", "MedicationRequest/m") in notes(fs)
    unrelated = medication("n", "1")
    unrelated["medicationCodeableConcept"]["text"] = "Metformin 500 MG"
    assert facts(patient(), unrelated).items == facts(patient()).items


def test_issued_times_compare_across_time_zones() -> None:
    a = lab("k", "2823-3", 3.2, "mmol/L", when="2026-02-20T08:00:00Z",
            issued="2026-02-20T11:00:00+02:00")  # 09:00Z
    b = lab("k", "2823-3", 3.9, "mmol/L", when="2026-02-20T08:00:00Z", status="amended",
            issued="2026-02-20T10:00:00Z")
    for order in ([a, b], [b, a]):
        assert values(facts(patient(), *order), "potassium")["value"] == 3.9


def test_the_latest_version_of_one_observation_wins_in_any_order() -> None:
    v1 = lab("k", "2823-3", 3.2, "mmol/L", meta={"versionId": "2"})
    v2 = lab("k", "2823-3", 3.9, "mmol/L", status="amended", meta={"versionId": "10"})
    for order in ([v1, v2], [v2, v1]):
        assert values(facts(patient(), *order), "potassium")["value"] == 3.9


def test_regression_a_string_false_is_never_read_as_present() -> None:
    # "false" (a string the strict models accept as a boolean) was read as present;
    # FHIR JSON writes booleans as JSON booleans, so both intake modes refuse it
    for text in ("false", "true"):
        obs = finding("c", "leg-cramps")
        obs["valueBoolean"] = text
        for mode in ("strict", "lean"):
            with pytest.raises(InputError) as info:
                cdss.extract_facts([patient(), obs], ruleset="plantar-cramps", as_of=AS_OF,
                                   mode=mode, on_invalid="refuse")
            assert (info.value.resource_id, info.value.field) == ("c", "valueBoolean")
