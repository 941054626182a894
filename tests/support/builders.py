"""Builders of small FHIR R4 resources for tests (the tests make their own data)."""

from __future__ import annotations

from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://cdss.dev/fhir/CodeSystem/findings"
UCUM = "http://unitsofmeasure.org"
PID = "p1"


def patient(pid: str = PID, *, birth: str | None = "1970-05-01",
            gender: str | None = "female") -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid}
    if birth:
        res["birthDate"] = birth
    if gender:
        res["gender"] = gender
    return res


def lab(oid: str, code: str, value: Any, unit: str | None, *, when: str = "2026-01-10",
        status: str = "final", pid: str = PID, ucum: bool = True,
        **extra: Any) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity["unit"] = unit
        if ucum:
            quantity.update(system=UCUM, code=unit)
    res = {
        "resourceType": "Observation", "id": oid, "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when, "valueQuantity": quantity,
    }
    res.update(extra)
    return res


def finding(oid: str, code: str, *, present: bool | None = True, system: str = LOCAL,
            when: str = "2026-01-10", site: str | None = None, nocturnal: bool | None = None,
            status: str = "final", pid: str = PID) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation", "id": oid, "status": status,
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
    }
    if present is not None:
        res["valueBoolean"] = present
    if site:
        res["bodySite"] = {"coding": [{"system": LOCAL, "code": site}]}
    if nocturnal is not None:
        res["component"] = [{"code": {"coding": [{"system": LOCAL, "code": "nocturnal"}]},
                             "valueBoolean": nocturnal}]
    return res


def condition(cid: str, code: str, *, system: str = SNOMED, clinical: str | None = "active",
              verification: str | None = None, pid: str = PID,
              onset: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Condition", "id": cid,
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    if clinical:
        res["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "code": clinical}]}
    if verification:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": verification}]}
    if onset:
        res["onsetDateTime"] = onset
    return res


def medication(mid: str, code: str, *, system: str = RXNORM, status: str = "active",
               pid: str = PID, kind: str = "MedicationRequest") -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": kind, "id": mid, "status": status,
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
    }
    if kind == "MedicationRequest":
        res["intent"] = "order"
    return res


def allergy(aid: str, code: str, *, system: str = SNOMED, pid: str = PID,
            clinical: str | None = "active", verification: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "AllergyIntolerance", "id": aid,
        "code": {"coding": [{"system": system, "code": code}]},
        "patient": {"reference": f"Patient/{pid}"},
    }
    if clinical:
        res["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
            "code": clinical}]}
    if verification:
        res["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "code": verification}]}
    return res


def bundle(*resources: dict[str, Any], kind: str = "collection",
           urn: bool = False) -> dict[str, Any]:
    entries = []
    for res in resources:
        entry: dict[str, Any] = {"resource": res}
        if urn:
            entry["fullUrl"] = f"urn:uuid:{res['id']}"
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "entry": entries}
