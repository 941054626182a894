"""Intake: every accepted record shape, and bad input as InputError naming where."""

from __future__ import annotations

import json
import math

import pytest

from cdss.errors import InputError, InvalidArgument
from cdss.intake import read_record
from tests.support.builders import bundle, condition, lab, patient


def test_bundle_list_text_and_bytes_give_the_same_record() -> None:
    resources = [patient(), lab("o1", "2823-3", 3.2, "mmol/L")]
    as_bundle = read_record(bundle(*resources))
    assert read_record(resources) == as_bundle
    assert read_record(json.dumps(bundle(*resources))) == as_bundle
    assert read_record(json.dumps(bundle(*resources)).encode()) == as_bundle
    assert as_bundle.patient_ref == "Patient/p1"
    assert [r["id"] for r in as_bundle.resources] == ["o1"]


@pytest.mark.parametrize("kind", ["collection", "searchset", "transaction"])
def test_bundle_types(kind: str) -> None:
    assert read_record(bundle(patient(), kind=kind)).patient is not None


def test_unused_types_are_counted_not_fatal() -> None:
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished",
           "class": {"code": "AMB"}}
    claim = {"resourceType": "Claim", "id": "c1"}
    record = read_record(bundle(patient(), enc, enc, claim))
    assert record.skipped == {"Encounter": 2, "Claim": 1}


def test_urn_references_resolve_to_the_patient() -> None:
    obs = lab("o1", "2823-3", 3.2, "mmol/L")
    obs["subject"] = {"reference": "urn:uuid:p1"}
    record = read_record(bundle(patient(), obs, urn=True))
    assert record.patient_ref == "Patient/p1"


def _raises(record: object) -> InputError:
    with pytest.raises(InputError) as info:
        read_record(record)
    return info.value


def test_malformed_json() -> None:
    err = _raises('{"resourceType": "Bundle", ')
    assert "malformed JSON" in str(err)


def test_wrong_resource_type() -> None:
    err = _raises([{"resourceType": "Observaton", "id": "x"}])
    assert (err.resource_type, err.resource_id, err.field) == ("Observaton", "x", "resourceType")


def test_missing_resource_type() -> None:
    err = _raises([{"id": "x"}])
    assert err.field == "resourceType" and err.resource_id == "x"


def test_missing_required_field_names_it() -> None:
    obs = lab("o9", "2823-3", 3.2, "mmol/L")
    del obs["status"]
    err = _raises([patient(), obs])
    assert (err.resource_type, err.resource_id, err.field) == ("Observation", "o9", "status")


@pytest.mark.parametrize("value", ["abc", math.nan, math.inf, -math.inf, True])
def test_non_numeric_values(value: object) -> None:
    err = _raises([patient(), lab("o2", "2823-3", value, "mmol/L")])
    assert (err.resource_type, err.resource_id) == ("Observation", "o2")
    assert err.field == "valueQuantity.value"


@pytest.mark.parametrize("text", ['[{"resourceType":"Patient","id":"p","x":NaN}]',
                                  '[{"resourceType":"Patient","id":"p","x":Infinity}]'])
def test_nan_and_infinity_in_json_text(text: str) -> None:
    assert "malformed JSON" in str(_raises(text))


def test_missing_subject() -> None:
    obs = lab("o3", "2823-3", 3.2, "mmol/L")
    del obs["subject"]
    err = _raises([patient(), obs])
    assert (err.resource_type, err.resource_id, err.field) == ("Observation", "o3",
                                                               "subject.reference")


def test_two_patients() -> None:
    err = _raises([patient("a"), patient("b")])
    assert err.resource_type == "Patient" and "2 patients" in str(err)


def test_resource_of_another_patient() -> None:
    err = _raises([patient("a"), condition("c1", "202882003", pid="b")])
    assert (err.resource_type, err.resource_id) == ("Condition", "c1")


def test_two_subjects_without_a_patient_resource() -> None:
    err = _raises([lab("o1", "2823-3", 3, "mmol/L", pid="a"),
                   lab("o2", "2823-3", 3, "mmol/L", pid="b")])
    assert "2 patients" in str(err)


def test_bad_bundle_type_and_entries() -> None:
    assert _raises({"resourceType": "Bundle", "type": "history"}).field == "type"
    assert _raises({"resourceType": "Bundle", "type": "collection",
                    "entry": [{"fullUrl": "x"}]}).field == "entry[0].resource"
    assert _raises([1, 2]).field == "resourceType"


def test_a_bundle_inside_a_list_is_refused() -> None:
    assert _raises([bundle(patient())]).resource_type == "Bundle"


def test_not_a_record_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        read_record(42)
    with pytest.raises(InvalidArgument):
        read_record([], mode="fast")


def test_regression_a_bundle_type_that_is_not_text_is_an_input_error() -> None:
    # a list as Bundle.type raised a plain TypeError (unhashable) before
    assert _raises({"resourceType": "Bundle", "type": []}).field == "type"
    assert _raises({"resourceType": "Bundle", "type": {"x": 1}}).field == "type"
