"""Lean intake: the same facts as strict intake on valid input, and bad input
as an InputError naming the resource type, id and field.

Stated in words, then as properties:

1. On any valid record (every shape the facts read: labs in several units and
   statuses, findings with every kind of value, conditions, medications,
   allergies, unused resource types, extra fields the facts ignore), lean and
   strict intake give identical facts, or the identical error from the facts.
2. Whatever JSON comes in, lean intake gives a record or a CDSSError.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cdss
from cdss.errors import CDSSError, InputError
from cdss.intake import RESOURCE_TYPES, is_resource_type, read_record
from cdss.intake._lean import entries
from tests.support.builders import (
    ICD10CM,
    LOCAL,
    SNOMED,
    allergy,
    bundle,
    condition,
    finding,
    lab,
    medication,
)
from tests.support.builders import patient as make_patient
from tests.support.paths import ROOT

AS_OF = "2026-03-01"
RULESET = cdss.load_ruleset("plantar-cramps@1.0.0")


# --------------------------------------------------------------------------- #
# A generator of valid records
# --------------------------------------------------------------------------- #
LABS = [("2823-3", ["mmol/L", "meq/L", "mEq/L", "mmol/l"], 1.5, 7.0),
        ("6298-4", ["mmol/L"], 1.5, 7.0),
        ("19123-9", ["mg/dL", "mg/dl"], 0.5, 3.5),
        ("2601-3", ["mmol/L", "meq/L"], 0.2, 2.0),
        ("2951-2", ["mmol/L"], 120, 170), ("2692-2", ["mosm/kg", "mOsm/kg"], 250, 340),
        ("3094-0", ["mg/dL"], 3, 90), ("14937-7", ["mmol/L"], 1, 30),
        ("2160-0", ["mg/dL"], 0.3, 6), ("14682-9", ["umol/L", "µmol/L"], 30, 500),
        ("3097-3", ["{ratio}", "1"], 5, 40), ("5811-5", ["{SG}", "1"], 1.0, 1.04),
        ("98979-8", ["mL/min/{1.73_m2}", "mL/min/1.73m2"], 5, 130),
        ("2823-3", ["furlongs", "g"], 1, 5)]
FINDINGS = ["leg-cramps", "heel-pain", "first-step-pain", "calf-tightness", "low-fluid-intake",
            "high-activity", "radiating-leg-pain", "low-back-pain-symptom", "saddle-anaesthesia",
            "bladder-dysfunction", "foot-numbness-tingling", "bilateral-leg-symptoms",
            "foot-drop", "not-a-finding"]
CONDITIONS = [(SNOMED, "202882003"), (ICD10CM, "M72.2"), (SNOMED, "23056005"),
              (ICD10CM, "M54.41"), (SNOMED, "279039007"), (ICD10CM, "M54.50"),
              (SNOMED, "302226006"), (ICD10CM, "E11.42"), (SNOMED, "34095006"),
              (ICD10CM, "E86.0"), (SNOMED, "709044004"), (ICD10CM, "N18.4"),
              (SNOMED, "192970008"), (SNOMED, "1234567"),
              # findings coded as conditions: bodySite and dates matter for these
              *[(SNOMED, "449918009"), (ICD10CM, "R25.2"), (SNOMED, "309538000")] * 4]
MEDS = ["5487", "316049", "4603", "313988", "9997", "29046", "52175", "1191", "999999",
        "999998"]
NAMES = st.sampled_from(["Hydrochlorothiazide 12.5 MG Oral Capsule", "furosemide 40mg",
                         "Spironolactone", "aspirin 81 MG", "Lisinopril 5 MG / HCTZ"])
ALLERGIES = [(SNOMED, "91934008"), (SNOMED, "91935009"), (ICD10CM, "Z91.010"),
             (SNOMED, "300916003")]
DAYS = st.integers(min_value=-3, max_value=500)
STATUSES = st.sampled_from(["final", "final", "amended", "corrected", "preliminary",
                            "entered-in-error", "cancelled", "registered"])


def _day(days_before: int) -> str:
    return (date(2026, 3, 1) - timedelta(days=days_before)).isoformat()


@st.composite
def _time(draw: st.DrawFn) -> dict[str, Any]:
    """An effective time in one of the forms the facts read."""
    day = _day(draw(DAYS))
    form = draw(st.integers(min_value=0, max_value=4))
    if form == 0:
        return {"effectiveDateTime": day}
    if form == 1:
        return {"effectiveDateTime": f"{day}T{draw(st.integers(0, 23)):02d}:15:00+01:00"}
    if form == 2:
        return {"effectiveInstant": f"{day}T08:00:00.123Z"}
    if form == 3:
        return {"effectivePeriod": draw(st.sampled_from([{"start": day}, {"end": day},
                                                         {"start": day, "end": day}]))}
    return {"issued": f"{day}T09:30:00Z"}


@st.composite
def _lab(draw: st.DrawFn, i: int) -> dict[str, Any]:
    code, units, low, high = draw(st.sampled_from(LABS))
    value: Any = round(draw(st.floats(min_value=low, max_value=high)), 3)
    if draw(st.booleans()) and value == int(value):
        value = int(value)
    res = lab(f"l{i}", code, value, draw(st.sampled_from(units)), status=draw(STATUSES),
              ucum=draw(st.booleans()))
    del res["effectiveDateTime"]
    res.update(draw(_time()))
    if draw(st.booleans()):
        res["issued"] = f"{_day(draw(DAYS))}T10:00:00Z"
    quantity = res["valueQuantity"]
    if draw(st.integers(0, 9)) == 0:
        quantity["comparator"] = draw(st.sampled_from(["<", ">", "<="]))
    if draw(st.integers(0, 9)) == 0:
        del res["valueQuantity"]
        res["dataAbsentReason"] = {"coding": [{"code": "not-performed"}]}
    if draw(st.booleans()):  # fields the facts never read
        res["category"] = [{"coding": [{"code": "laboratory"}]}]
        res["meta"] = {"lastUpdated": "2026-01-01T00:00:00Z"}
    return res


@st.composite
def _finding(draw: st.DrawFn, i: int) -> dict[str, Any]:
    res = finding(f"f{i}", draw(st.sampled_from(FINDINGS)), present=None,
                  site=draw(st.sampled_from([None, "calf", "heel", "thigh"])),
                  nocturnal=draw(st.sampled_from([None, True, False])), status=draw(STATUSES))
    del res["effectiveDateTime"]
    res.update(draw(_time()))
    value = draw(st.integers(0, 5))
    if value == 1:
        res["valueBoolean"] = draw(st.booleans())
    elif value == 2:
        res["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": draw(
            st.sampled_from(["52101004", "373066001", "2667000", "373067005", "12345"]))}]}
    elif value == 3:
        res["valueCodeableConcept"] = {"coding": [{"code": draw(st.sampled_from(["Y", "N"]))}],
                                       "text": "answer"}
    elif value == 4:
        res["dataAbsentReason"] = {"coding": [{"code": "asked-unknown"}]}
    return res


@st.composite
def _condition(draw: st.DrawFn, i: int) -> dict[str, Any]:
    system, code = draw(st.sampled_from(CONDITIONS))
    res = condition(f"c{i}", code, system=system,
                    clinical=draw(st.sampled_from([None, "active", "recurrence", "resolved",
                                                   "inactive"])),
                    verification=draw(st.sampled_from([None, "confirmed", "refuted",
                                                       "entered-in-error"])))
    when = draw(st.integers(0, 3))
    if when == 1:
        res["onsetDateTime"] = _day(draw(DAYS))
    elif when == 2:
        res["recordedDate"] = f"{_day(draw(DAYS))}T12:00:00Z"
    if draw(st.booleans()):
        res["bodySite"] = [{"coding": [{"system": LOCAL, "code": "calf"}]}]
    return res


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One patient's valid resources, in any order."""
    out: list[dict[str, Any]] = []
    if draw(st.integers(0, 5)):
        out.append(make_patient(
            birth=draw(st.sampled_from([None, "1950", "1980-06", "2001-12-31", "2027-01-01"])),
            gender=draw(st.sampled_from([None, "female", "male", "other", "unknown"]))))
    out += [draw(_lab(i)) for i in range(draw(st.integers(0, 4)))]
    out += [draw(_finding(i)) for i in range(draw(st.integers(0, 4)))]
    out += [draw(_condition(i)) for i in range(draw(st.integers(0, 3)))]
    for i in range(draw(st.integers(0, 2))):
        med = medication(f"m{i}", draw(st.sampled_from(MEDS)),
                         status=draw(st.sampled_from(["active", "active", "stopped",
                                                      "entered-in-error"])),
                         kind=draw(st.sampled_from(["MedicationRequest", "MedicationStatement"])))
        named = draw(st.integers(0, 2))  # names the facts read when the code is unknown
        if named:
            med["medicationCodeableConcept"]["coding"][0]["code"] = "999999"
        if named == 1:
            med["medicationCodeableConcept"]["text"] = draw(NAMES)
        elif named == 2:
            med["medicationCodeableConcept"]["coding"][0]["display"] = draw(NAMES)
        out.append(med)
    for i in range(draw(st.integers(0, 2))):
        system, code = draw(st.sampled_from(ALLERGIES))
        res = allergy(f"a{i}", code, system=system,
                      clinical=draw(st.sampled_from([None, "active", "inactive"])),
                      verification=draw(st.sampled_from([None, "confirmed", "refuted"])))
        if draw(st.booleans()):
            res["reaction"] = [{"substance": res.pop("code"),
                                "manifestation": [{"text": "hives"}]}]
        out.append(res)
    if draw(st.booleans()):
        out.append({"resourceType": "Encounter", "id": "e1", "status": "finished",
                    "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}})
    return draw(st.permutations(out))


def _outcome(record: Any, mode: str) -> Any:
    """The facts as JSON, or the error the facts raised; intake must succeed
    (the records are valid, so an intake error fails the test)."""
    read_record(record, mode=mode)
    try:
        facts = cdss.extract_facts(record, ruleset=RULESET, as_of=AS_OF, mode=mode)
    except InputError as exc:
        return ("error", exc.resource_type, exc.resource_id, exc.field, str(exc))
    return facts.model_dump(mode="json")


def _urn(record: list[dict[str, Any]]) -> bytes:
    """A Bundle whose resources refer to the patient by its ``urn:uuid`` fullUrl."""
    out = []
    for res in record:
        res = dict(res)
        for name in ("subject", "patient"):
            if name in res:
                res[name] = {"reference": "urn:uuid:p1"}
        out.append(res)
    return orjson.dumps(bundle(*out, urn=True))


SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(record=records(), shape=st.sampled_from(["list", "bundle", "bytes", "urn"]))
def test_lean_and_strict_give_the_same_facts(record: list[dict[str, Any]], shape: str) -> None:
    if shape == "list":
        data: Any = record
    elif shape == "bundle":
        data = bundle(*record)
    elif shape == "bytes":
        data = orjson.dumps(bundle(*record, kind="searchset"))
    elif any(r["resourceType"] == "Patient" for r in record):
        data = _urn(record)
    else:
        data = orjson.dumps(bundle(*record))
    assert _outcome(data, "lean") == _outcome(data, "strict")


def test_the_generated_records_reach_every_kind_of_fact() -> None:
    """The property above is only as good as its generator: it makes labs,
    findings, conditions, medications and allergies (checked on a seed)."""
    kinds: set[str] = set()
    notes: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(record=records())
    def collect(record: list[dict[str, Any]]) -> None:
        try:
            facts = cdss.extract_facts(record, ruleset=RULESET, as_of=AS_OF, mode="lean")
        except InputError:
            return
        kinds.update(f.kind for f in facts.items)
        notes.update(n.code for n in facts.data_quality)

    collect()
    assert {"patient", "lab", "finding", "condition", "medication", "allergy"} <= kinds
    assert {"entered-in-error", "not-final", "indeterminate", "outside-lookback"} <= notes


def test_an_example_patient_gives_the_same_assessment_in_both_modes() -> None:

    path = ROOT / "examples" / "patients"
    for file in sorted(path.glob("*.json")):
        data = file.read_bytes()
        strict = cdss.evaluate(data, ruleset=RULESET, as_of=AS_OF)
        lean = cdss.evaluate(data, ruleset=RULESET, as_of=AS_OF, mode="lean")
        assert lean.to_json() == strict.to_json()


# --------------------------------------------------------------------------- #
# Bad input: an InputError naming where
# --------------------------------------------------------------------------- #
def _lean_error(record: Any) -> InputError:
    with pytest.raises(InputError) as info:
        read_record(record, mode="lean")
    return info.value


P = make_patient()


@pytest.mark.parametrize(("change", "field"), [
    ({"valueQuantity": {"value": "3.2", "unit": "mmol/L"}}, "valueQuantity.value"),
    ({"valueQuantity": {"value": True}}, "valueQuantity.value"),
    ({"valueBoolean": "true"}, "valueBoolean"),
    ({"effectiveDateTime": "2026-01-10T25:00:00"}, "effectiveDateTime"),
    ({"effectiveDateTime": "yesterday"}, "effectiveDateTime"),
    ({"issued": "2026-01-10"}, "issued"),
    ({"status": None}, "status"),
    ({"code": {"coding": {"system": "x", "code": "y"}}}, "code.coding"),
    ({"code": {"coding": [{"system": "http://loinc.org", "code": 2823}]}}, "code.coding.0.code"),
    ({"component": [{"valueBoolean": True}]}, "component.0.code"),
    ({"id": "not an id"}, "id"),
])
def test_bad_observation_fields_are_named(change: dict[str, Any], field: str) -> None:
    obs = lab("o9", "2823-3", 3.2, "mmol/L")
    obs.update(change)
    err = _lean_error(orjson.dumps([P, obs]))
    assert err.resource_type == "Observation"
    assert err.resource_id == obs["id"]
    assert err.field == field


def test_missing_required_fields() -> None:
    obs = lab("o9", "2823-3", 3.2, "mmol/L")
    del obs["status"]
    err = _lean_error([P, obs])
    assert (err.resource_type, err.resource_id, err.field) == ("Observation", "o9", "status")
    cond = condition("c1", "202882003")
    del cond["subject"]
    err = _lean_error([P, cond])
    assert (err.resource_type, err.resource_id, err.field) == ("Condition", "c1", "subject")


def test_an_impossible_birth_date_is_refused_at_intake() -> None:
    err = _lean_error([make_patient(birth="1970-02-30")])
    assert (err.resource_type, err.field) == ("Patient", "birthDate")


def test_the_first_bad_resource_is_named() -> None:
    bad1 = lab("o1", "2823-3", "x", "mmol/L")
    bad2 = lab("o2", "2823-3", "y", "mmol/L")
    assert _lean_error(orjson.dumps(bundle(P, bad1, bad2))).resource_id == "o1"


def test_a_bad_date_message_is_readable() -> None:
    err = _lean_error([P, lab("o1", "2823-3", 3, "mmol/L", when="2026-1-1")])
    assert "'2026-1-1' is not a valid FHIR dateTime" in str(err)


@pytest.mark.parametrize("text", ['[{"resourceType":"Patient","id":"p"', "not json",
                                  '{"resourceType":"Observation","id":"o","status":"final",'
                                  '"code":{},"valueQuantity":{"value":NaN}}'])
def test_malformed_json(text: str) -> None:
    assert "malformed JSON" in str(_lean_error(text))


def test_record_structure_errors_match_strict() -> None:
    cases: list[Any] = [
        {"resourceType": "Bundle", "type": "history"},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "x"}]},
        [1, 2],
        [{"resourceType": "Observaton", "id": "x"}],
        [{"id": "x"}],
        [bundle(P)],
        [make_patient("a"), make_patient("b")],
        [P, condition("c1", "202882003", pid="b")],
        [lab("o1", "2823-3", 3, "mmol/L", pid="a"), lab("o2", "2823-3", 3, "mmol/L", pid="b")],
    ]
    for case in cases:
        with pytest.raises(InputError) as strict:
            read_record(case)
        lean = _lean_error(case)
        assert (lean.resource_type, lean.resource_id, lean.field) == (
            strict.value.resource_type, strict.value.resource_id, strict.value.field), case


def test_unused_types_are_counted_and_urn_references_resolve() -> None:
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {}}
    obs = lab("o1", "2823-3", 3.2, "mmol/L")
    obs["subject"] = {"reference": "urn:uuid:p1"}
    record = read_record(orjson.dumps(bundle(P, enc, enc, obs, urn=True)), mode="lean")
    assert record.skipped == {"Encounter": 2}
    assert record.patient_ref == "Patient/p1"
    assert [r["id"] for r in record.resources] == ["o1"]


def test_lean_keeps_only_the_fields_the_facts_read() -> None:
    obs = lab("o1", "2823-3", 3.2, "mmol/L")
    obs["meta"] = {"versionId": "3"}
    obs["note"] = [{"text": "haemolysed?"}]
    (kept,) = read_record([P, obs], mode="lean").resources
    assert "meta" not in kept and "note" not in kept
    assert kept["valueQuantity"] == obs["valueQuantity"]


def test_every_accepted_shape_reads_alike() -> None:
    resources = [P, lab("o1", "2823-3", 3.2, "mmol/L")]
    shapes: list[Any] = [resources, bundle(*resources), json.dumps(bundle(*resources)),
                         orjson.dumps(bundle(*resources)), memoryview(orjson.dumps(resources)),
                         [json.dumps(r) for r in resources]]
    records = [read_record(s, mode="lean") for s in shapes]
    assert all(r == records[0] for r in records)
    assert [pos for pos, *_ in entries(orjson.dumps(resources[1]))] == [0]


def test_resource_types_include_r4_and_r4b() -> None:
    assert is_resource_type("Encounter") and is_resource_type("MedicinalProduct")
    assert is_resource_type("SubscriptionStatus") and not is_resource_type("Observaton")
    assert len(RESOURCE_TYPES) > 140


# --------------------------------------------------------------------------- #
# Anything in, a record or a CDSSError out
# --------------------------------------------------------------------------- #
JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["resourceType", "id", "status", "code", "subject",
                                       "valueQuantity", "value", "entry", "resource", "type",
                                       "coding", "reference", "effectiveDateTime",
                                       "birthDate", "component", "valueBoolean"]),
                      children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(record=JSON, as_text=st.booleans(),
       rtype=st.sampled_from(["Patient", "Observation", "Condition", "MedicationRequest",
                              "AllergyIntolerance", "Encounter", "Bundle", None]))
def test_any_input_gives_a_record_or_a_cdss_error(record: Any, as_text: bool,
                                                  rtype: str | None) -> None:
    if rtype and isinstance(record, dict):
        record["resourceType"] = rtype
    data = json.dumps(record, allow_nan=True) if as_text else record
    try:
        result = cdss.evaluate(data, ruleset=RULESET, as_of=AS_OF, mode="lean")
    except CDSSError:
        return
    assert isinstance(result, cdss.Assessment)


# --------------------------------------------------------------------------- #
# Invalid input: both modes refuse the same records, naming the same resource
# --------------------------------------------------------------------------- #
INVALID_CHANGES = st.sampled_from([
    {"valueQuantity": {"value": "3.2", "unit": "mmol/L"}},   # a decimal as a JSON string
    {"valueQuantity": {"value": True, "unit": "mmol/L"}},
    {"valueQuantity": {"value": 10**30, "unit": "mmol/L"}},  # beyond 64 bits
    {"valueQuantity": {"value": 1e-05, "unit": "mmol/L"}},   # valid JSON, out of range
    {"effectiveDateTime": "yesterday"},
    {"effectiveDateTime": "2026-02-30"},
    {"status": None},
    {"code": {"coding": {"system": "http://loinc.org", "code": "2823-3"}}},
    {"code": {"coding": [{"system": "http://loinc.org", "code": 2823}]}},
    {"subject": {"reference": 7}},
])


def _refusal(data: Any, mode: str) -> tuple[Any, ...]:
    try:
        cdss.extract_facts(data, ruleset=RULESET, as_of=AS_OF, mode=mode, on_invalid="refuse")
    except InputError as exc:
        return ("refused", exc.resource_type, exc.resource_id)
    return ("accepted",)


@SETTINGS
@given(record=records(), change=INVALID_CHANGES, as_bytes=st.booleans(), data=st.data())
def test_lean_and_strict_refuse_the_same_invalid_records(
        record: list[dict[str, Any]], change: dict[str, Any], as_bytes: bool,
        data: st.DataObject) -> None:
    observations = [i for i, r in enumerate(record) if r["resourceType"] == "Observation"]
    if observations:
        i = data.draw(st.sampled_from(observations))
        record = [dict(r) for r in record]
        # one value[x] only: two would be a different invalidity (lean keeps no
        # value[x] it does not read, so cannot see a second one)
        kept = {k: v for k, v in record[i].items()
                if not (k.startswith("value") and any(c.startswith("value") for c in change))}
        record[i] = {**kept, **change}
    else:
        record = [*record, {**lab("bad", "2823-3", 3.2, "mmol/L"), **change}]
    payload: Any = json.dumps(bundle(*record)).encode() if as_bytes else record
    assert _refusal(payload, "lean") == _refusal(payload, "strict")
