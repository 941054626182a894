"""CDS Hooks 3.0 beside 2.0 in one running service: a 3.0 client calls
``/v3/cds-services`` and gets 3.0 answers (discovery with ``version`` and
``hookVersion``, labs asked for within their lookback with FHIRPath tokens,
OperationOutcome errors, the 3.0 override-reason codings), while a 2.0 client
of the same process gets what it always got (pinned in test_v2_pinned.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import cdss
from cdss.errors import HookRequestError
from cdss.hooks import (
    HOOKS,
    discovery,
    granted,
    handle_hook,
    missing_prefetch,
    prefetch_templates,
    resolve_template,
    validate_request,
)
from cdss.outputs.cds_hooks import OVERRIDE_REASONS_3
from cdss.service import create_app, serve_in_background
from tests.support.builders import bundle, finding, lab, patient
from tests.support.orders import draft_med
from tests.unit.hooks.test_cds_hooks import assert_spec_cards, full_prefetch, red_flag_record

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
TODAY = NOW.date()
SPEC = "plantar-cramps@1.4.0"
FHIR = "https://fhir.example.org/r4"
TOKEN = "fhir-token-v3"
SIGN = "plantar-cramps-order-sign"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


class Fhir:
    """A CDS client's FHIR server that honours ``code`` and ``date=ge`` and
    records every URL read (no network)."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources
        self.urls: list[str] = []

    def __call__(self, url: str, headers: Mapping[str, str]) -> Any:
        self.urls.append(url)
        return search(self.resources, url.removeprefix(f"{FHIR}/"))


def search(resources: list[dict[str, Any]], query: str) -> Any:
    """The answer to a resolved template over ``resources``: a read or a searchset."""
    path, _, qs = query.partition("?")
    if "/" in path:
        rtype, rid = path.split("/")
        return next(r for r in resources if r["resourceType"] == rtype and r["id"] == rid)
    params = parse_qs(qs)
    codes = set(params["code"][0].split(",")) if "code" in params else None
    since = params["date"][0].removeprefix("ge") if "date" in params else None
    found = [r for r in resources if r["resourceType"] == path
             and (codes is None or f"{r['code']['coding'][0]['system']}|"
                                   f"{r['code']['coding'][0]['code']}" in codes)
             and (since is None or r.get("effectiveDateTime", "") >= since)]
    return bundle(*found, kind="searchset")


def v3_prefetch(rs: cdss.Ruleset, hook: str, pid: str, record: list[dict[str, Any]], *,
                today: date = TODAY) -> dict[str, Any]:
    """What a 3.0 client that supports FHIRPath tokens sends for every template."""
    resources = [patient(pid), *record]
    return {k: search(resources, resolve_template(q, patient_id=pid, today=today))
            for k, q in prefetch_templates(rs, hook, version="3.0").items()}


def k(v: float, when: str = "2026-02-20", oid: str = "k1") -> dict[str, Any]:
    return lab(oid, "2823-3", v, "mmol/L", when=when)


def sign_body(rs: cdss.Ruleset, record: list[dict[str, Any]], *,
              prefetch: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    context = {"userId": "Practitioner/u1", "patientId": "p1",
               "draftOrders": bundle(draft_med("o1", "8591"), kind="collection")}
    body = {"hook": "order-sign", "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch if prefetch is not None
            else v3_prefetch(rs, "order-sign", "p1", record)}
    body.update(extra)
    return body


HIGH_K = [k(5.4), lab("m1", "2601-3", 0.8, "mmol/L", when="2026-02-20"),
          finding("c1", "leg-cramps", when="2026-02-20")]


@pytest.fixture(scope="module")
def fhir() -> Fhir:
    return Fhir([patient("p1"), *HIGH_K, k(3.0, when="2025-06-01", oid="k-old")])


@pytest.fixture(scope="module")
def base(fhir: Fhir) -> Iterator[str]:
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, insecure_dev=True, fetch=fhir)
    with serve_in_background(app) as url:
        yield url


def test_3_0_discovery_says_the_versions_and_bounds_each_lab(base: str, rs: cdss.Ruleset
                                                             ) -> None:
    doc = httpx.get(f"{base}/v3/cds-services", timeout=10).json()
    assert doc == discovery([rs], hooks=HOOKS, version="3.0")
    for service in doc["services"]:
        assert service["version"] == "3.0.0"
        assert service["hookVersion"] == "1.0"
        assert "patient/Observation.s" in service["usageRequirements"]
        labs = {k: q for k, q in service["prefetch"].items() if k.startswith("lab-")}
        assert labs and "labs" not in service["prefetch"]
        for key, query in labs.items():
            days = rs.valuesets.analytes[key.removeprefix("lab-")].lookback_days
            assert query.endswith(f"&date=ge{{{{today() - {days + 1} days}}}}"), key
            assert "_count" not in query
    v2 = httpx.get(f"{base}/cds-services", timeout=10).json()
    assert all("hookVersion" not in s and "version" not in s for s in v2["services"])


def test_a_3_0_order_sign_and_a_2_0_patient_view_on_one_service(base: str,
                                                                rs: cdss.Ruleset) -> None:
    """The issue's "done when": both answered correctly by one running service."""
    r3 = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=sign_body(rs, HIGH_K), timeout=30)
    assert r3.status_code == 200, r3.text
    cards3 = assert_spec_cards(r3.json())
    assert next(c["summary"] for c in cards3).startswith(
        "Potassium supplement ordered with a high potassium")
    codings = cards3[0]["overrideReasons"]
    assert [(c["system"], c["code"], c["display"]) for c in codings] == \
        [(NON_ADHERENCE, code, display) for code, display in OVERRIDE_REASONS_3]

    v1 = cdss.load_ruleset("plantar-cramps@1.4.0")
    pv = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
          "context": {"patientId": "p2"},
          "prefetch": full_prefetch(v1, "p2", red_flag_record("p2"))}
    r2 = httpx.post(f"{base}/cds-services/plantar-cramps", json=pv, timeout=30)
    assert r2.status_code == 200, r2.text
    cards2 = assert_spec_cards(r2.json())
    assert cards2[0]["indicator"] == "critical"
    assert all("overrideReasons" not in c for c in cards2)  # 2.0: the ruleset declares none


def test_3_0_errors_are_operation_outcomes(base: str, rs: cdss.Ruleset) -> None:
    cases = {
        400: httpx.post(f"{base}/v3/cds-services/{SIGN}", content=b"{oops", timeout=10,
                        headers={"Content-Type": "application/json"}),
        404: httpx.post(f"{base}/v3/cds-services/nope", json=sign_body(rs, HIGH_K), timeout=10),
        412: httpx.post(f"{base}/v3/cds-services/{SIGN}", json=sign_body(rs, [], prefetch={}),
                        timeout=10),
        405: httpx.get(f"{base}/v3/cds-services/{SIGN}", timeout=10),
    }
    codes = {400: "invalid", 404: "not-found", 412: "processing", 405: "not-supported"}
    for status, r in cases.items():
        assert r.status_code == status, (status, r.text)
        assert r.headers["content-type"].startswith("application/fhir+json")
        body = r.json()
        assert body["resourceType"] == "OperationOutcome", body
        [issue] = body["issue"]
        assert issue["severity"] == "error" and issue["code"] == codes[status]
        assert issue["diagnostics"] and "Traceback" not in issue["diagnostics"]
    unknown = httpx.get(f"{base}/v3/elsewhere", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["issue"][0]["code"] == "not-found"
    assert httpx.get(f"{base}/elsewhere", timeout=10).json() == {
        "error": {"status": 404, "message": "no such endpoint"}}
    # the same refusal to a 2.0 client keeps the 2.0 shape
    old = httpx.post(f"{base}/cds-services/nope", json=sign_body(rs, HIGH_K), timeout=10)
    assert old.json() == {"error": {"status": 404,
                                    "message": "no CDS service 'nope'; see GET /cds-services"}}


def test_missing_labs_are_fetched_within_the_lookback(base: str, rs: cdss.Ruleset,
                                                      fhir: Fhir) -> None:
    prefetch = v3_prefetch(rs, "order-sign", "p1", HIGH_K)
    del prefetch["lab-potassium"], prefetch["lab-egfr"]
    fhir.urls.clear()
    body = sign_body(rs, HIGH_K, prefetch=prefetch, fhirServer=FHIR,
                     fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer",
                                        "expires_in": 300, "subject": "cdss",
                                        "scope": "patient/Observation.rs patient/Patient.r"})
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert sorted(urlsplit(u).query.rsplit("&date=", 1)[1] for u in fhir.urls) == \
        ["ge2025-11-30", "ge2025-11-30"]  # 2026-03-01 minus 90 + 1 days
    assert r.json()["cards"][0]["summary"].startswith("Potassium supplement ordered")


def test_a_scope_that_does_not_grant_the_read_is_a_412_and_nothing_is_read(
        base: str, rs: cdss.Ruleset, fhir: Fhir) -> None:
    prefetch = v3_prefetch(rs, "order-sign", "p1", HIGH_K)
    del prefetch["lab-potassium"]
    fhir.urls.clear()
    body = sign_body(rs, HIGH_K, prefetch=prefetch, fhirServer=FHIR,
                     fhirAuthorization={"access_token": TOKEN, "token_type": "Bearer",
                                        "expires_in": 300, "subject": "cdss",
                                        "scope": "patient/Patient.rs patient/Condition.rs"})
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 412
    assert "grants no search of Observation" in r.json()["issue"][0]["diagnostics"]
    assert fhir.urls == []


def test_what_arrives_must_be_what_was_asked_for(base: str, rs: cdss.Ruleset) -> None:
    prefetch = v3_prefetch(rs, "order-sign", "p1", HIGH_K)
    prefetch["lab-potassium"] = bundle({"resourceType": "Condition", "id": "x1",
                                        "subject": {"reference": "Patient/p1"}},
                                       kind="searchset")
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}",
                   json=sign_body(rs, HIGH_K, prefetch=prefetch), timeout=30)
    assert r.status_code == 400
    assert r.json()["issue"][0]["diagnostics"] == (
        "prefetch 'lab-potassium': entry 0 is Condition/x1, but the template searches "
        "Observation")


def test_an_old_lab_sent_anyway_still_counts_as_missing(rs: cdss.Ruleset) -> None:
    """A client that ignores the window sends an old potassium: the lookback
    still applies when facts are built (no recent potassium for the order)."""
    record = [k(5.4, when="2025-06-01"), lab("m1", "2601-3", 0.8, "mmol/L", when="2026-02-20")]
    prefetch = v3_prefetch(rs, "order-sign", "p1", record, today=date(2025, 7, 1))
    out = handle_hook(sign_body(rs, record, prefetch=prefetch), rs, hook="order-sign",
                      as_of=NOW, version="3.0")
    assert next(c["summary"] for c in out["cards"]).startswith("No recent potassium")


@pytest.mark.parametrize(("scope", "rtype", "how", "expected"), [
    ("patient/Observation.read", "Observation", "search", True),       # SMART v1
    ("user/*.read", "Condition", "search", True),
    ("patient/*.*", "Condition", "read", True),
    ("patient/Observation.write", "Observation", "search", False),
    ("patient/Observation.rs", "Observation", "search", True),         # SMART v2
    ("patient/Observation.r", "Observation", "search", False),
    ("patient/Observation.s", "Observation", "read", False),
    ("patient/Observation.rs?category=laboratory", "Observation", "search", True),
    ("system/*.cruds", "AllergyIntolerance", "search", True),
    ("patient/Condition.rs launch openid fhirUser", "Observation", "search", False),
    ("patient/Observation.xyz", "Observation", "search", False),
    ("", "Patient", "read", False),
])
def test_smart_v1_and_v2_scopes_are_read(scope: str, rtype: str, how: Any,
                                         expected: bool) -> None:
    assert granted(scope, rtype, how) is expected


def test_the_2_0_form_stays_for_2_0_calls(rs: cdss.Ruleset) -> None:
    body = sign_body(rs, HIGH_K, prefetch={}, fhirServer=FHIR)
    req = validate_request(body, "order-sign")
    v2 = missing_prefetch(req, rs, today=NOW.date())
    v3 = missing_prefetch(req, rs, version="3.0", today=NOW.date())
    assert v2["lab-potassium"].endswith("&_sort=-date&_count=20")
    assert v3["lab-potassium"].endswith("&date=ge2025-11-30")
    assert "{{" not in "".join(v3.values())
    with pytest.raises(HookRequestError, match="fhirServer") as info:
        missing_prefetch(validate_request(sign_body(rs, [], prefetch={}), "order-sign"), rs,
                         version="3.0")
    assert info.value.status == 412


def test_the_rest_of_a_paginated_prefetch_is_read_and_joined(base: str, rs: cdss.Ruleset,
                                                              fhir: Fhir) -> None:
    """The client sent one page of the potassium search (none on it) and a
    ``next`` link: the high potassium is on the page the service reads."""
    prefetch = v3_prefetch(rs, "order-sign", "p1", HIGH_K)
    rest = f"{FHIR}/Observation?patient=p1&code=http://loinc.org|2823-3&date=ge2025-11-30"
    prefetch["lab-potassium"] = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                                 "link": [{"relation": "next", "url": rest}]}
    fhir.urls.clear()
    auth = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
            "subject": "cdss", "scope": "patient/Observation.rs"}
    body = sign_body(rs, HIGH_K, prefetch=prefetch, fhirServer=FHIR, fhirAuthorization=auth)
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert fhir.urls == [rest]
    assert r.json()["cards"][0]["summary"].startswith(
        "Potassium supplement ordered with a high potassium")
    # without a server to read the rest from, the data is incomplete: 412
    del body["fhirServer"], body["fhirAuthorization"]
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 412
    assert "one page of several" in r.json()["issue"][0]["diagnostics"]
    # a 2.0 call reads its prefetch as sent (the pinned behaviour): no potassium known
    v2 = sign_body(rs, HIGH_K, prefetch={**prefetch}, fhirServer=FHIR, fhirAuthorization=auth)
    fhir.urls.clear()
    r = httpx.post(f"{base}/cds-services/{SIGN}", json=v2, timeout=30)
    assert r.status_code == 200, r.text
    assert not any(u == rest for u in fhir.urls)


def test_a_token_restricted_to_another_patient_is_refused(base: str, rs: cdss.Ruleset,
                                                          fhir: Fhir) -> None:
    prefetch = v3_prefetch(rs, "order-sign", "p1", HIGH_K)
    del prefetch["lab-potassium"]
    fhir.urls.clear()
    auth = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
            "subject": "cdss", "scope": "patient/Observation.rs", "patient": "p9"}
    body = sign_body(rs, HIGH_K, prefetch=prefetch, fhirServer=FHIR, fhirAuthorization=auth)
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 400
    assert "restricted to another patient" in r.json()["issue"][0]["diagnostics"]
    assert fhir.urls == []
    auth["patient"] = "p1"
    r = httpx.post(f"{base}/v3/cds-services/{SIGN}", json=body, timeout=30)
    assert r.status_code == 200, r.text
