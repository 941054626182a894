"""CDS Hooks 2.0 as pure functions: discovery, requests, prefetch/fetch, cards."""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fhir.resources.R4B import get_fhir_model_class

import cdss
from cdss.errors import CDSSError
from cdss.hooks import (
    HookRequest,
    HookRequestError,
    discovery,
    handle_patient_view,
    prefetch_templates,
    read_fhir_json,
    validate_feedback,
    validate_request,
)
from cdss.outputs.cds_hooks import cards
from tests.support.builders import bundle, finding, lab, patient

AS_OF = "2026-03-01"
SPEC = "plantar-cramps@1.0.0"
INSTANCE = "8b4a6f3e-6f0a-4d2e-9a55-3f1c2d7b9e10"

# The example patient-view request of the CDS Hooks 2.0 specification ("Calling a
# CDS Service", Example), as published.
SPEC_EXAMPLE_REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.read patient/Observation.read",
        "subject": "cds-service4",
    },
    "context": {
        "userId": "Practitioner/example",
        "patientId": "1288992",
        "encounterId": "89284",
    },
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}


# --------------------------------------------------------------------------- #
# An independent reading of the specification's card rules
# --------------------------------------------------------------------------- #
def _no_null_or_empty(node: Any, path: str) -> None:
    """JSON elements SHALL NOT be null or empty (2.0, "Null and empty JSON elements")."""
    assert node is not None, f"{path} is null"
    if isinstance(node, (str, list, dict)):
        assert len(node) > 0, f"{path} is empty"
    if isinstance(node, dict):
        for key, value in node.items():
            _no_null_or_empty(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _no_null_or_empty(value, f"{path}[{i}]")


def _absolute_url(value: Any) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return bool(parts and parts.scheme in ("http", "https") and parts.netloc)


def _is_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def assert_spec_cards(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Check a service response against the CDS Hooks 2.0 card attributes; return the cards."""
    assert set(response) <= {"cards", "systemActions"}
    found = response["cards"]
    assert isinstance(found, list)
    uuids: list[str] = []
    for i, card in enumerate(found):
        _no_null_or_empty(card, f"cards[{i}]")
        assert set(card) <= {"uuid", "summary", "detail", "indicator", "source", "suggestions",
                             "selectionBehavior", "overrideReasons", "links", "extension"}
        assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert isinstance(card.get("detail", ""), str)
        source = card["source"]
        assert isinstance(source["label"], str)
        if "url" in source:
            assert _absolute_url(source["url"])
        if "topic" in source:
            assert isinstance(source["topic"]["code"], str)
        assert _is_uuid(card["uuid"])
        uuids.append(card["uuid"])
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            for sug in card["suggestions"]:
                assert isinstance(sug["label"], str)
                assert _is_uuid(sug["uuid"])
                uuids.append(sug["uuid"])
                for action in sug["actions"]:
                    assert action["type"] in ("create", "update", "delete")
                    assert isinstance(action["description"], str)
                    if action["type"] == "create":
                        res = action["resource"]
                        get_fhir_model_class(res["resourceType"]).model_validate(res)
        else:
            assert "selectionBehavior" not in card
        for link in card.get("links", []):
            assert isinstance(link["label"], str) and _absolute_url(link["url"])
            assert link["type"] in ("absolute", "smart")
    assert len(set(uuids)) == len(uuids), "card and suggestion uuids must be unique"
    return found


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


def red_flag_record(pid: str) -> list[dict[str, Any]]:
    return [finding("s1", "saddle-anaesthesia", pid=pid),
            finding("c1", "leg-cramps", site="calf", nocturnal=True, pid=pid),
            lab("k1", "2823-3", 3.0, "mmol/L", when="2026-02-20", pid=pid)]


def full_prefetch(rs: cdss.Ruleset, pid: str,
                  record: list[dict[str, Any]]) -> dict[str, Any]:
    """A prefetch satisfying every template: labs and findings split by code."""
    templates = prefetch_templates(rs)
    wanted = {k: set(parse_qs(urlsplit(q).query)["code"][0].split(","))
              for k, q in templates.items() if "code=" in q}
    out: dict[str, Any] = {k: None for k in templates}
    out["patient"] = patient(pid)
    for key, codes in wanted.items():
        found = [r for r in record if r["resourceType"] == "Observation"
                 and f"{r['code']['coding'][0]['system']}|{r['code']['coding'][0]['code']}"
                 in codes]
        out[key] = bundle(*found, kind="searchset") if found else None
    return out


def request(rs: cdss.Ruleset, pid: str, record: list[dict[str, Any]],
            **extra: Any) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": INSTANCE,
            "context": {"userId": "Practitioner/u1", "patientId": pid},
            "prefetch": full_prefetch(rs, pid, record), **extra}


# --------------------------------------------------------------------------- #
# Discovery
# --------------------------------------------------------------------------- #
def test_discovery_document(rs: cdss.Ruleset) -> None:
    doc = discovery([rs])
    (service,) = doc["services"]
    assert service["hook"] == "patient-view"
    assert service["id"] == "plantar-cramps"
    assert service["title"] == rs.file.title
    assert rs.spec in service["description"] and rs.sha256 in service["description"]
    _no_null_or_empty(doc, "discovery")
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert set(prefetch) == {"patient", "labs", "findings", "conditions", "medicationRequests",
                             "medicationStatements", "allergies"}
    for key, template in prefetch.items():
        # only tokens the specification allows, and only relative FHIR URLs
        assert set(re.findall(r"\{\{([^}]*)\}\}", template)) == {"context.patientId"}, key
        assert not template.startswith(("/", "http"))
        assert "date=" not in template  # lookbacks are applied when facts are built
    assert prefetch["conditions"] == "Condition?patient={{context.patientId}}"
    assert prefetch["allergies"] == "AllergyIntolerance?patient={{context.patientId}}"


def test_lab_and_finding_templates_carry_the_ruleset_codes(rs: cdss.Ruleset) -> None:
    templates = prefetch_templates(rs)
    labs = parse_qs(urlsplit(templates["labs"]).query)
    assert urlsplit(templates["labs"]).path == "Observation"
    assert labs["patient"] == ["{{context.patientId}}"]
    codes = labs["code"][0].split(",")
    loinc = {f"http://loinc.org|{c.code}" for name, concept in rs.valuesets.concepts.items()
             if concept.kind == "lab" for c in concept.codes}
    assert set(codes) == loinc
    assert "http://loinc.org|2823-3" in codes and len(codes) == len(set(codes))
    findings = parse_qs(urlsplit(templates["findings"]).query)["code"][0].split(",")
    assert "https://cdss.dev/fhir/CodeSystem/findings|leg-cramps" in findings
    assert "https://cdss.dev/fhir/CodeSystem/findings|saddle-anaesthesia" in findings


def test_two_versions_of_one_ruleset_get_distinct_ids(rs: cdss.Ruleset,
                                                      mini: cdss.Ruleset) -> None:
    ids = [s["id"] for s in discovery([rs, mini])["services"]]
    assert ids == ["plantar-cramps", "mini"]
    assert [s["id"] for s in discovery({"a": rs})["services"]] == ["a"]
    with pytest.raises(CDSSError, match="twice"):
        discovery([rs, rs])


# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #
def test_spec_example_request_validates() -> None:
    req = validate_request(SPEC_EXAMPLE_REQUEST)
    assert isinstance(req, HookRequest)
    assert req.hookInstance == uuid.UUID("d1577c69-dfbe-44ad-ba6d-3e05e953b2ea")
    assert req.context.patientId == "1288992"
    assert req.fhirAuthorization is not None and req.fhirAuthorization.subject == "cds-service4"
    assert "some-opaque" not in repr(req.fhirAuthorization)
    assert validate_request(orjson_bytes(SPEC_EXAMPLE_REQUEST)) == req


def orjson_bytes(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def _without(path: str) -> dict[str, Any]:
    body = copy.deepcopy(SPEC_EXAMPLE_REQUEST)
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    del node[last]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(SPEC_EXAMPLE_REQUEST)
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    node[last] = value
    return body


@pytest.mark.parametrize(("body", "field"), [
    (_without("hook"), "hook"),
    (_without("hookInstance"), "hookInstance"),
    (_with("hookInstance", "not-a-uuid"), "hookInstance"),
    (_without("context"), "context"),
    (_without("context.patientId"), "context.patientId"),
    (_with("context.patientId", "../Patient/other"), "context.patientId"),
    (_without("fhirServer"), "fhirAuthorization is given, so fhirServer is required"),
    (_with("fhirServer", "ftp://ehr.example"), "fhirServer"),
    (_with("fhirAuthorization.token_type", "MAC"), "fhirAuthorization.token_type"),
    (_without("fhirAuthorization.access_token"), "fhirAuthorization.access_token"),
    (_with("prefetch.patientToGreet", ["a list"]), "prefetch.patientToGreet"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_malformed_requests_are_400_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(HookRequestError) as caught:
        validate_request(body)
    assert caught.value.status == 400
    assert field in str(caught.value)
    assert isinstance(caught.value, CDSSError)


def test_the_access_token_never_appears_in_errors() -> None:
    body = _with("fhirAuthorization.expires_in", "some-opaque-fhir-access-token")
    with pytest.raises(HookRequestError) as caught:
        validate_request(body)
    assert "some-opaque" not in str(caught.value)


def test_feedback_validation() -> None:
    ok = validate_feedback({"feedback": [
        {"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
         "outcomeTimestamp": "2020-12-11T00:00:00Z"},
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
         "overrideReason": {"reason": {"code": "d7ecf885",
                                       "system": "https://example.com/override"},
                            "userComment": "A comment."},
         "outcomeTimestamp": "2020-12-11T00:00:00Z"}]})
    assert [f.outcome for f in ok.feedback] == ["accepted", "overridden"]
    bad: Any
    for bad in ({"feedback": []}, {"feedback": [{"card": "x", "outcome": "accepted",
                                                "outcomeTimestamp": "2020-12-11T00:00:00Z"}]},
                {"feedback": [{"card": "x", "outcome": "ignored",
                               "outcomeTimestamp": "2020-12-11T00:00:00Z"}]}, [1]):
        with pytest.raises(HookRequestError) as caught:
            validate_feedback(bad)
        assert caught.value.status == 400


# --------------------------------------------------------------------------- #
# Handling a call
# --------------------------------------------------------------------------- #
def test_patient_view_from_prefetch(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", red_flag_record("r1"))
    out = handle_patient_view(body, rs, as_of=AS_OF)
    found = assert_spec_cards(out)
    assert [c["indicator"] for c in found] == ["critical", "warning", "info", "info"]
    cauda, hypok, data, plan = found
    assert cauda["summary"].startswith("Cauda equina red flags")
    assert cauda["source"] == {"label": SPEC, "url": "https://cdss.dev/fhir/Library/plantar-cramps",
                               "topic": cauda["source"]["topic"]}
    assert "`Observation/s1`" in cauda["detail"]
    assert "Saddle anaesthesia" in cauda["detail"]
    (suggestion,) = cauda["suggestions"]
    (action,) = suggestion["actions"]
    referral = action["resource"]
    assert (action["type"], referral["resourceType"], referral["priority"], referral["intent"],
            referral["status"]) == ("create", "ServiceRequest", "urgent", "proposal", "draft")
    assert referral["subject"] == {"reference": "Patient/r1"}
    assert hypok["summary"] == "Low potassium (hypokalaemia)"
    assert "`Observation/k1`" in hypok["detail"] and "`3.0`" in hypok["detail"]
    assert data["summary"] == "Missing lab results: Magnesium"
    orders = [s["actions"][0]["resource"]["code"]["coding"][0]["code"]
              for s in data["suggestions"]]
    assert orders == ["19123-9"]
    assert plan["summary"] == "Prevention plan: 3 items, 3 withheld"
    assert "Withheld for now" in plan["detail"]
    assert plan["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "CarePlan"


def test_cards_are_deterministic_per_hook_instance(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", red_flag_record("r1"))
    first = handle_patient_view(body, rs, as_of=AS_OF)
    assert handle_patient_view(copy.deepcopy(body), rs, as_of=AS_OF) == first
    other = handle_patient_view({**body, "hookInstance": str(uuid.uuid4())}, rs, as_of=AS_OF)
    assert {c["uuid"] for c in first["cards"]}.isdisjoint(c["uuid"] for c in other["cards"])
    assert [c["summary"] for c in other["cards"]] == [c["summary"] for c in first["cards"]]


def test_healthy_patient_gets_no_cards(rs: cdss.Ruleset) -> None:
    record = [lab("k1", "2823-3", 4.2, "mmol/L", when="2026-02-20", pid="h1"),
              lab("m1", "19123-9", 2.1, "mg/dL", when="2026-02-20", pid="h1")]
    assert handle_patient_view(request(rs, "h1", record), rs, as_of=AS_OF) == {"cards": []}


@pytest.mark.parametrize(("severity", "indicator"), [
    ("critical", "critical"), ("high", "warning"), ("moderate", "warning"), ("low", "info")])
def test_indicator_mapping(rs: cdss.Ruleset, severity: str, indicator: str) -> None:
    a = cdss.evaluate(red_flag_record("r1"), ruleset=rs, as_of=AS_OF)
    flag = a.flags[1].model_copy(update={"severity": severity})
    out = cards(a.model_copy(update={"flags": [flag], "referrals": []}), rs)
    assert out[0]["indicator"] == indicator


def test_long_summaries_are_cut_below_140(rs: cdss.Ruleset) -> None:
    a = cdss.evaluate(red_flag_record("r1"), ruleset=rs, as_of=AS_OF)
    flag = a.flags[1].model_copy(update={"display": "Very long display " * 20})
    out = cards(a.model_copy(update={"flags": [flag]}), rs, hook_instance=INSTANCE)
    assert len(out[0]["summary"]) < 140 and out[0]["summary"].endswith("…")
    assert_spec_cards({"cards": out})


def test_referral_without_a_flag_gets_its_own_card(rs: cdss.Ruleset) -> None:
    a = cdss.evaluate(red_flag_record("r1"), ruleset=rs, as_of=AS_OF)
    out = cards(a.model_copy(update={"flags": []}), rs, hook_instance=INSTANCE)
    assert_spec_cards({"cards": out})
    assert out[0]["summary"] == "Referral: Urgent spinal assessment (exclude cauda equina " \
                                "syndrome)"
    assert out[0]["suggestions"][0]["actions"][0]["resource"]["priority"] == "urgent"


# --------------------------------------------------------------------------- #
# Missing prefetch: fetch from the FHIR server, or 412
# --------------------------------------------------------------------------- #
class FakeServer:
    """An in-process stand-in for a CDS client's FHIR server (no network)."""

    def __init__(self, resources: list[dict[str, Any]], pid: str, token: str,
                 page_size: int = 0, next_host: str | None = None) -> None:
        self.resources = resources
        self.pid = pid
        self.token = token
        self.page_size = page_size
        self.next_host = next_host
        self.calls: list[tuple[str, str | None]] = []

    def __call__(self, url: str, headers: Mapping[str, str]) -> Any:
        self.calls.append((url, headers.get("Authorization")))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return read_fhir_json(401, b'{"resourceType": "OperationOutcome"}', url)
        parts = urlsplit(url)
        if parts.path.endswith(f"/Patient/{self.pid}"):
            return patient(self.pid)
        rtype = parts.path.rsplit("/", 1)[-1]
        query = parse_qs(parts.query)
        codes = set(query.get("code", [""])[0].split(",")) if "code" in query else None
        found = [r for r in self.resources if r["resourceType"] == rtype and (
            codes is None or f"{r['code']['coding'][0]['system']}|"
                             f"{r['code']['coding'][0]['code']}" in codes)]
        page = int(query.get("_page", ["1"])[0])
        if self.page_size:
            chunk = found[(page - 1) * self.page_size: page * self.page_size]
            result = bundle(*chunk, kind="searchset")
            if page * self.page_size < len(found):
                host = self.next_host or f"{parts.scheme}://{parts.netloc}"
                rest = "&".join(p for p in parts.query.split("&") if not p.startswith("_page="))
                result["link"] = [{"relation": "next",
                                   "url": f"{host}{parts.path}?{rest}&_page={page + 1}"}]
            return result
        return bundle(*found, kind="searchset")


def test_spec_example_request_gets_spec_valid_cards(rs: cdss.Ruleset) -> None:
    # The spec's example prefetches only an unrelated key, so every template is
    # fetched from its fhirServer with its access token (served in process here).
    server = FakeServer(red_flag_record("1288992"), "1288992", "some-opaque-fhir-access-token")
    out = handle_patient_view(SPEC_EXAMPLE_REQUEST, rs, fetch=server, as_of=AS_OF)
    found = assert_spec_cards(out)
    assert found[0]["indicator"] == "critical"
    assert found[0]["suggestions"][0]["actions"][0]["resource"]["subject"] == \
        {"reference": "Patient/1288992"}
    urls = [u for u, _ in server.calls]
    assert len(urls) == len(prefetch_templates(rs))
    assert "http://hooks.smarthealthit.org:9080/Patient/1288992" in urls
    assert all(u.startswith("http://hooks.smarthealthit.org:9080/") for u in urls)
    assert all(auth == "Bearer some-opaque-fhir-access-token" for _, auth in server.calls)


def test_only_missing_keys_are_fetched(rs: cdss.Ruleset) -> None:
    record = red_flag_record("r1")
    body = request(rs, "r1", record, fhirServer="https://ehr.example/fhir",
                   fhirAuthorization={"access_token": "t0k", "token_type": "bearer",
                                      "expires_in": 60, "scope": "patient/*.read",
                                      "subject": "cdss"})
    del body["prefetch"]["findings"]
    server = FakeServer(record, "r1", "t0k")
    out = handle_patient_view(body, rs, fetch=server, as_of=AS_OF)
    assert out == handle_patient_view(request(rs, "r1", record), rs, as_of=AS_OF)
    ((url, auth),) = server.calls
    assert url.startswith("https://ehr.example/fhir/Observation?patient=r1&code=")
    assert auth == "Bearer t0k"


def test_null_prefetch_means_no_data_not_missing(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", [])
    assert all(v is None for k, v in body["prefetch"].items() if k != "patient")

    def no_fetch(url: str, headers: Mapping[str, str]) -> Any:
        raise AssertionError("nothing should be fetched")

    assert handle_patient_view(body, rs, fetch=no_fetch, as_of=AS_OF) == {"cards": []}


def test_missing_prefetch_without_fhir_server_is_412(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", red_flag_record("r1"))
    del body["prefetch"]["labs"]
    with pytest.raises(HookRequestError, match="'labs'") as caught:
        handle_patient_view(body, rs, as_of=AS_OF)
    assert caught.value.status == 412
    body.pop("prefetch")
    with pytest.raises(HookRequestError) as caught:
        handle_patient_view(body, rs, as_of=AS_OF)
    assert caught.value.status == 412


def test_unreadable_fhir_server_is_412(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", [], fhirServer="https://ehr.example/fhir")
    del body["prefetch"]["conditions"]

    def broken(url: str, headers: Mapping[str, str]) -> Any:
        raise ConnectionError("refused")

    with pytest.raises(HookRequestError) as caught:
        handle_patient_view(body, rs, fetch=broken, as_of=AS_OF)
    assert caught.value.status == 412
    # without fhirAuthorization the server is still asked (open servers exist), but a
    # server that wants a token answers 401: the data cannot be had
    server = FakeServer([], "r1", "t0k")
    with pytest.raises(HookRequestError, match="answered 401") as caught:
        handle_patient_view(body, rs, fetch=server, as_of=AS_OF)
    assert caught.value.status == 412
    assert server.calls[0][1] is None


def test_search_pages_are_followed_on_the_same_host_only(rs: cdss.Ruleset) -> None:
    record = red_flag_record("r1") + [finding(f"x{i}", "heel-pain", pid="r1") for i in range(4)]
    auth = {"access_token": "t0k", "token_type": "Bearer", "expires_in": 60,
            "scope": "patient/*.read", "subject": "cdss"}
    body = {"hook": "patient-view", "hookInstance": INSTANCE, "context": {"patientId": "r1"},
            "fhirServer": "https://ehr.example/fhir", "fhirAuthorization": auth}
    server = FakeServer(record, "r1", "t0k", page_size=2)
    paged = handle_patient_view(body, rs, fetch=server, as_of=AS_OF)
    assert sum("_page=" in u for u, _ in server.calls) >= 2
    whole = handle_patient_view(body, rs, fetch=FakeServer(record, "r1", "t0k"), as_of=AS_OF)
    assert paged == whole

    elsewhere = FakeServer(record, "r1", "t0k", page_size=2, next_host="https://evil.example")
    with pytest.raises(HookRequestError, match="another host") as caught:
        handle_patient_view(body, rs, fetch=elsewhere, as_of=AS_OF)
    assert caught.value.status == 412
    assert not any(u.startswith("https://evil.example") for u, _ in elsewhere.calls)


# --------------------------------------------------------------------------- #
# Data that cannot be used: 400
# --------------------------------------------------------------------------- #
def test_prefetch_for_another_patient_is_400(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", red_flag_record("r1"))
    body["prefetch"]["patient"] = patient("someone-else")
    with pytest.raises(HookRequestError, match="Patient/someone-else") as caught:
        handle_patient_view(body, rs, as_of=AS_OF)
    assert caught.value.status == 400
    body = request(rs, "r1", red_flag_record("r2"))
    with pytest.raises(HookRequestError) as caught:
        handle_patient_view(body, rs, as_of=AS_OF)
    assert caught.value.status == 400


def test_an_invalid_resource_in_prefetch_gives_the_cards_and_a_warning(
        rs: cdss.Ruleset) -> None:
    bad = lab("k1", "2823-3", 3.0, "mmol/L", pid="r1")
    del bad["status"]
    cramps = finding("c1", "leg-cramps", pid="r1")
    body = request(rs, "r1", [bad, cramps])
    found = assert_spec_cards(handle_patient_view(body, rs, as_of=AS_OF))
    warning = [c for c in found if c["summary"].startswith("Incomplete assessment")]
    assert len(warning) == 1 and warning[0]["indicator"] == "warning"
    assert "Observation/k1" in warning[0]["detail"] and "status" in warning[0]["detail"]
    assert any("Missing lab results" in c["summary"] for c in found)  # K left out: requested


def test_a_naive_time_in_prefetch_is_read_with_a_note_not_refused(rs: cdss.Ruleset) -> None:
    k = lab("k1", "2823-3", 3.0, "mmol/L", pid="r1", when="2026-02-20T08:00:00")
    body = request(rs, "r1", [k, finding("c1", "leg-cramps", pid="r1")])
    found = assert_spec_cards(handle_patient_view(body, rs, as_of=AS_OF))
    assert any(c["summary"].startswith("Low potassium") or "otassium" in c["summary"]
               for c in found)
    assert not any(c["summary"].startswith("Incomplete assessment") for c in found)


def test_other_hooks_are_400(rs: cdss.Ruleset) -> None:
    body = request(rs, "r1", [])
    body["hook"] = "order-select"
    with pytest.raises(HookRequestError, match="order-select") as caught:
        handle_patient_view(body, rs, as_of=AS_OF)
    assert caught.value.status == 400
