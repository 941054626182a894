from __future__ import annotations

from cdss.rulesets import ConceptMapEntry, ValueSetFile
from cdss.terminology import ICD10CM, SNOMED, Terminology

VS = ValueSetFile.model_validate({
    "systems": {"sct": SNOMED, "icd10cm": ICD10CM},
    "concepts": {
        "neuropathy": {"kind": "condition", "display": "N", "codes": [
            {"system": "sct", "code": "368581000119106", "verified": True},
            {"system": "icd10cm", "code": "E11.4", "verified": True, "prefix": True}]},
        "diabetes": {"kind": "condition", "display": "D", "codes": [
            {"system": "sct", "code": "368581000119106", "verified": True},
            {"system": "icd10cm", "code": "E11", "verified": True, "prefix": True}]},
        "pf": {"kind": "condition", "display": "PF", "codes": [
            {"system": "icd10cm", "code": "M72.2", "verified": True}]},
    },
})


def cc(system: str, code: str) -> dict[str, object]:
    return {"coding": [{"system": system, "code": code}]}


def test_one_code_may_mean_two_concepts() -> None:
    term = Terminology(VS)
    assert term.concepts_of(cc(SNOMED, "368581000119106")) == {"neuropathy", "diabetes"}


def test_icd10cm_prefixes_and_dotless_codes() -> None:
    term = Terminology(VS)
    assert term.concepts_of(cc(ICD10CM, "E11.42")) == {"neuropathy", "diabetes"}
    assert term.concepts_of(cc(ICD10CM, "E1142")) == {"neuropathy", "diabetes"}
    assert term.concepts_of(cc(ICD10CM, "E11.9")) == {"diabetes"}
    assert term.concepts_of(cc(ICD10CM, "M722")) == {"pf"}
    assert term.concepts_of(cc(ICD10CM, "M72.3")) == set()


def test_wrong_system_does_not_match() -> None:
    assert Terminology(VS).concepts_of(cc(ICD10CM, "368581000119106")) == set()


def test_site_concept_map_adds_a_local_code() -> None:
    local = "http://hospital.example/codes"
    term = Terminology(VS, [ConceptMapEntry(system=local, code="PF1", concept="pf")])
    assert term.concepts_of(cc(local, "PF1")) == {"pf"}
    assert Terminology(VS).concepts_of(cc(local, "PF1")) == set()


def test_malformed_codings_are_ignored() -> None:
    term = Terminology(VS)
    assert term.concepts_of({"coding": [None, {"system": SNOMED}, "x"]}) == set()
    assert term.concepts_of([cc(ICD10CM, "M72.2"), None]) == {"pf"}
