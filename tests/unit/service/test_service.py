"""The CDS Hooks HTTP service, served by uvicorn on 127.0.0.1 and called over HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

import cdss
from cdss import cli
from cdss.hooks import HOOKS, discovery, handle_patient_view, prefetch_templates
from cdss.service import ServiceConfigError, create_app, serve_in_background
from tests.support.builders import bundle, finding, lab, patient
from tests.support.logs import secrets_in
from tests.support.paths import ROOT
from tests.unit.hooks.test_cds_hooks import (
    SPEC_EXAMPLE_REQUEST,
    FakeServer,
    assert_spec_cards,
    full_prefetch,
)

SPEC = "plantar-cramps@1.0.0"
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
TOKEN = "fhir-token-42"
#: Identifying data put on test patients; the service's logs must never hold any of it.
NAMED_VALUES = ("Okonkwo-Villanueva", "Theodora", "MRN-99817342", "1958-07-14",
                "+1-555-0142-7731")
NAMED: dict[str, Any] = {
    "name": [{"family": NAMED_VALUES[0], "given": [NAMED_VALUES[1]]}],
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1", "value": NAMED_VALUES[2]}],
    "birthDate": NAMED_VALUES[3],
    "telecom": [{"system": "phone", "value": NAMED_VALUES[4]}],
}


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[Starlette, str]]:
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(app) as base:
        yield app, base


@pytest.fixture
def base(service: tuple[Starlette, str]) -> str:
    return service[1]


def red_flags(pid: str) -> list[dict[str, Any]]:
    return [finding("s1", "saddle-anaesthesia", pid=pid),
            finding("c1", "leg-cramps", site="calf", nocturnal=True, pid=pid),
            finding("h1", "heel-pain", pid=pid), finding("h2", "first-step-pain", pid=pid),
            lab("k1", "2823-3", 3.0, "mmol/L", when="2026-02-20", pid=pid)]


def low_potassium(pid: str) -> list[dict[str, Any]]:
    return [lab("k1", "2823-3", 3.1, "mmol/L", when="2026-02-20", pid=pid),
            lab("m1", "19123-9", 2.1, "mg/dL", when="2026-02-20", pid=pid)]


def call(rs: cdss.Ruleset, pid: str, record: list[dict[str, Any]],
         **extra: Any) -> dict[str, Any]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": pid},
            "prefetch": full_prefetch(rs, pid, record)}
    body.update(extra)
    return body


# --------------------------------------------------------------------------- #
# A CDS client's FHIR server on loopback: searchset Bundles, pages of two,
# and nothing without the bearer token
# --------------------------------------------------------------------------- #
class FhirServer:
    def __init__(self) -> None:
        self.data: dict[str, list[dict[str, Any]]] = {}
        self.seen: list[tuple[str, str, str | None]] = []
        self.app = Starlette(routes=[Route("/fhir/Patient/{pid}", self.read),
                                     Route("/fhir/{rtype}", self.search)])

    def _authorised(self, request: Request) -> bool:
        auth = request.headers.get("authorization")
        self.seen.append((request.url.path, request.url.query, auth))
        return auth == f"Bearer {TOKEN}"

    async def read(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        pid = request.path_params["pid"]
        if pid not in self.data:
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=404)
        return JSONResponse(patient(pid))

    async def search(self, request: Request) -> JSONResponse:
        if not self._authorised(request):
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        rtype = request.path_params["rtype"]
        query = request.query_params
        codes = set(query["code"].split(",")) if "code" in query else None
        found = [r for r in self.data.get(query.get("patient", ""), [])
                 if r["resourceType"] == rtype and (codes is None or
                    f"{r['code']['coding'][0]['system']}|{r['code']['coding'][0]['code']}"
                    in codes)]
        page = int(query.get("_page", "1"))
        result = bundle(*found[(page - 1) * 2: page * 2], kind="searchset")
        if page * 2 < len(found):
            rest = "&".join(f"{k}={v}" for k, v in query.items() if k != "_page")
            result["link"] = [{"relation": "next",
                               "url": f"{request.base_url}fhir/{rtype}?{rest}&_page={page + 1}"}]
        return JSONResponse(result)


@pytest.fixture(scope="module")
def fhir() -> Iterator[tuple[FhirServer, str]]:
    server = FhirServer()
    with serve_in_background(server.app) as url:
        yield server, f"{url}/fhir"


def authorization(token: str = TOKEN) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/*.read", "subject": "cdss"}


# --------------------------------------------------------------------------- #
# Discovery, a call with prefetch, CORS
# --------------------------------------------------------------------------- #
def test_discovery(base: str, rs: cdss.Ruleset) -> None:
    r = httpx.get(f"{base}/cds-services", headers={"Origin": "https://ehr.example"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.json() == discovery([rs], hooks=HOOKS)
    assert r.json()["services"][0]["id"] == "plantar-cramps"


def test_cors_preflight(base: str) -> None:
    r = httpx.options(f"{base}/cds-services/plantar-cramps", headers={
        "Origin": "https://ehr.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 200
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


def test_patient_view_with_prefetch(base: str, rs: cdss.Ruleset) -> None:
    body = call(rs, "r1", red_flags("r1"))
    r = httpx.post(f"{base}/cds-services/plantar-cramps", json=body)
    assert r.status_code == 200, r.text
    found = assert_spec_cards(r.json())
    assert [c["indicator"] for c in found][:2] == ["critical", "warning"]
    assert found[0]["summary"].startswith("Cauda equina red flags")
    assert r.json() == handle_patient_view(body, rs, as_of=NOW)


# --------------------------------------------------------------------------- #
# No prefetch: the service reads the client's FHIR server
# --------------------------------------------------------------------------- #
def test_service_fetches_from_the_fhir_server(base: str, rs: cdss.Ruleset,
                                              fhir: tuple[FhirServer, str]) -> None:
    server, url = fhir
    record = red_flags("f1") + [finding(f"x{i}", "leg-cramps", pid="f1",
                                        when=f"2026-01-0{i + 1}") for i in range(3)]
    server.data["f1"] = record
    server.seen.clear()
    body = call(rs, "f1", record, fhirServer=url, fhirAuthorization=authorization())
    del body["prefetch"]
    r = httpx.post(f"{base}/cds-services/plantar-cramps", json=body)
    assert r.status_code == 200, r.text
    with_prefetch = handle_patient_view(call(rs, "f1", record, hookInstance=body["hookInstance"]),
                                        rs, as_of=NOW)
    assert r.json() == with_prefetch
    assert_spec_cards(r.json())
    assert server.seen, "the FHIR server was not called"
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in server.seen)
    paths = {p for p, _, _ in server.seen}
    assert paths == {"/fhir/Patient/f1", "/fhir/Observation", "/fhir/Condition",
                     "/fhir/MedicationRequest", "/fhir/MedicationStatement",
                     "/fhir/AllergyIntolerance"}
    assert any("_page=2" in q for _, q, _ in server.seen)  # pages were followed


def test_spec_example_request_over_http(rs: cdss.Ruleset) -> None:
    # The specification's example request, sent as published. Its fhirServer is not
    # on loopback, so the app's FHIR reads go to an injected in-process stand-in.
    stand_in = FakeServer(red_flags("1288992"), "1288992", "some-opaque-fhir-access-token")
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, fetch=stand_in, insecure_dev=True)
    with serve_in_background(app) as url:
        r = httpx.post(f"{url}/cds-services/plantar-cramps", json=SPEC_EXAMPLE_REQUEST)
    assert r.status_code == 200, r.text
    found = assert_spec_cards(r.json())
    assert found[0]["indicator"] == "critical"
    assert len(stand_in.calls) == len(prefetch_templates(rs))
    assert all(u.startswith("http://hooks.smarthealthit.org:9080/") for u, _ in stand_in.calls)
    assert all(a == "Bearer some-opaque-fhir-access-token" for _, a in stand_in.calls)
    assert r.json() == handle_patient_view(SPEC_EXAMPLE_REQUEST, rs, fetch=stand_in, as_of=NOW)


def test_blocking_http_fetch_reads_the_fhir_server(rs: cdss.Ruleset,
                                                   fhir: tuple[FhirServer, str]) -> None:
    server, url = fhir
    server.data["f2"] = low_potassium("f2")
    body = call(rs, "f2", [], fhirServer=url, fhirAuthorization=authorization())
    del body["prefetch"]
    out = handle_patient_view(body, rs, as_of=NOW)  # the default fetch: httpx, blocking
    assert [c["summary"] for c in assert_spec_cards(out)] == ["Low potassium (hypokalaemia)"]


def test_fhir_server_refusing_the_token_is_412(base: str, rs: cdss.Ruleset,
                                               fhir: tuple[FhirServer, str]) -> None:
    server, url = fhir
    server.data["f3"] = low_potassium("f3")
    body = call(rs, "f3", [], fhirServer=url, fhirAuthorization=authorization("wrong"))
    del body["prefetch"]["labs"]
    r = httpx.post(f"{base}/cds-services/plantar-cramps", json=body)
    assert r.status_code == 412
    assert "401" in r.json()["error"]["message"]


def test_missing_data_without_fhir_server_is_412(base: str, rs: cdss.Ruleset) -> None:
    body = call(rs, "r1", [])
    del body["prefetch"]
    r = httpx.post(f"{base}/cds-services/plantar-cramps", json=body)
    assert r.status_code == 412
    assert r.json()["error"]["status"] == 412
    assert "fhirServer" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- #
# Errors: JSON, never a traceback
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("content", [
    b"{not json",
    b"[1, 2, 3]",
    b'{"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"}',
    b'{"hook": "patient-view", "hookInstance": "nope", "context": {"patientId": "p1"}}',
    b'{"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", '
    b'"context": {"patientId": "p1"}, "prefetch": {"patient": {"resourceType": "Patient", '
    b'"id": "p1", "birthDate": "yesterday"}, "labs": null, "findings": null, '
    b'"conditions": null, "medicationRequests": null, "medicationStatements": null, '
    b'"allergies": null}}',
])
def test_malformed_request_is_400_json(base: str, content: bytes) -> None:
    r = httpx.post(f"{base}/cds-services/plantar-cramps", content=content,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["status"] == 400 and error["message"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_unknown_service_is_404(base: str, rs: cdss.Ruleset) -> None:
    r = httpx.post(f"{base}/cds-services/no-such-service", json=call(rs, "r1", []))
    assert r.status_code == 404
    assert "no-such-service" in r.json()["error"]["message"]
    assert httpx.get(f"{base}/elsewhere").json()["error"]["status"] == 404
    r = httpx.get(f"{base}/cds-services/plantar-cramps")
    assert r.status_code == 405 and r.json()["error"]["status"] == 405


def test_internal_failure_is_500_json_without_details(base: str, rs: cdss.Ruleset,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import cdss.service

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(cdss.service._runtime, "evaluate_request", explode)
    r = httpx.post(f"{base}/cds-services/plantar-cramps", json=call(rs, "r1", []))
    assert r.status_code == 500
    assert r.json()["error"]["status"] == 500
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text


# --------------------------------------------------------------------------- #
# Concurrency: 50 calls at once, each gets its own patient's cards
# --------------------------------------------------------------------------- #
def test_fifty_concurrent_calls(base: str, rs: cdss.Ruleset) -> None:
    bodies = []
    for i in range(50):
        pid = f"p-{i}"
        bodies.append(call(rs, pid, red_flags(pid) if i % 2 == 0 else low_potassium(pid)))
    expected = [handle_patient_view(b, rs, as_of=NOW) for b in bodies]

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(f"{base}/cds-services/plantar-cramps", json=b) for b in bodies))

    responses = asyncio.run(run())
    for i, (r, want) in enumerate(zip(responses, expected, strict=True)):
        assert r.status_code == 200, r.text
        assert r.json() == want, f"call {i} got another patient's cards"
        found = assert_spec_cards(r.json())
        if i % 2 == 0:
            assert found[0]["indicator"] == "critical"
            referral = found[0]["suggestions"][0]["actions"][0]["resource"]
            assert referral["subject"] == {"reference": f"Patient/p-{i}"}
        else:
            assert [c["summary"] for c in found] == ["Low potassium (hypokalaemia)"]
            assert "`Observation/k1`" in found[0]["detail"]


# --------------------------------------------------------------------------- #
# Feedback
# --------------------------------------------------------------------------- #
def test_feedback_is_accepted_and_kept(service: tuple[Starlette, str]) -> None:
    app, base = service
    body = {"feedback": [
        {"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
         "outcomeTimestamp": "2020-12-11T00:00:00Z"},
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
         "overrideReason": {"reason": {"code": "d7ecf885",
                                       "system": "https://example.com/override-reason"},
                            "userComment": "A comment entered by the clinician."},
         "outcomeTimestamp": "2020-12-11T00:00:00Z"}]}
    r = httpx.post(f"{base}/cds-services/plantar-cramps/feedback", json=body)
    assert r.status_code == 200
    kept = [f for f in app.state.feedback if f["card"] == "9368d37b-283f-44a0-93ea-547cebab93ed"]
    assert kept and kept[-1]["overrideReason"]["reason"]["code"] == "d7ecf885"
    assert kept[-1]["service"] == "plantar-cramps"
    r = httpx.post(f"{base}/cds-services/plantar-cramps/feedback",
                   json={"feedback": [{"card": "x", "outcome": "accepted",
                                       "outcomeTimestamp": "2020-12-11T00:00:00Z"}]})
    assert r.status_code == 400 and "acceptedSuggestions" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/cds-services/nope/feedback", json=body)
    assert r.status_code == 404


# --------------------------------------------------------------------------- #
# --insecure-dev: no authentication, a warning on every call
# --------------------------------------------------------------------------- #
def test_insecure_dev_warns_on_every_call(base: str, rs: cdss.Ruleset,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss.service")
    bodies = [call(rs, "w1", low_potassium("w1")), call(rs, "w2", [])]
    for body in bodies:
        assert httpx.post(f"{base}/cds-services/plantar-cramps", json=body).status_code == 200
    assert httpx.get(f"{base}/cds-services").status_code == 200
    lines = [orjson.loads(r.getMessage()) for r in caplog.records
             if r.name == "cdss.service" and r.levelno == logging.WARNING]
    calls = [line for line in lines if line.get("event") != "start"]
    assert [line["event"] for line in calls] == ["patient-view", "patient-view", "discovery"]
    assert all("--insecure-dev" in line["warning"] and line["issuer"] is None
               for line in calls)
    assert [line["hookInstance"] for line in calls[:2]] == [b["hookInstance"] for b in bodies]


def test_insecure_dev_limits_fhir_servers_when_asked(rs: cdss.Ruleset,
                                                     fhir: tuple[FhirServer, str]) -> None:
    server, url = fhir
    server.data["d1"] = low_potassium("d1")
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, insecure_dev=True,
                     allowed_fhir_servers=["https://fhir.only-this.example/r4"])
    body = call(rs, "d1", [], fhirServer=url, fhirAuthorization=authorization())
    del body["prefetch"]
    server.seen.clear()
    with serve_in_background(app) as service_url:
        r = httpx.post(f"{service_url}/cds-services/plantar-cramps", json=body)
    assert r.status_code == 412 and "not one this service may call" in r.json()["error"]["message"]
    assert server.seen == []


def test_create_app_refuses_to_run_without_configuration() -> None:
    with pytest.raises(ServiceConfigError, match="insecure-dev"):
        create_app(rulesets=(SPEC,))
    with pytest.raises(ServiceConfigError, match="allowed_fhir_servers"):
        create_app(rulesets=(SPEC,), insecure_dev=True, allowed_fhir_servers=["ftp://x"])


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #
def test_import_cdss_does_not_import_the_service_packages() -> None:
    code = ("import sys, cdss, cdss.cli; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('uvicorn', 'starlette', 'httpx', 'jwt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_cdss_serve_refuses_to_start_without_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("cdss serve started a server")

    monkeypatch.setattr(uvicorn, "run", must_not_run)
    runner = CliRunner()
    no_env = {"CDSS_SERVICE_CONFIG": None, "CDSS_PUBLIC_URL": None}
    result = runner.invoke(cli.app, ["serve", "--port", "0"], env=no_env)
    assert result.exit_code == 2
    assert "--config" in result.output and "--insecure-dev" in result.output

    bad = tmp_path / "service.yaml"
    bad.write_text("public_url: https://cds.example.org\nissuers:\n"
                   "  - issuer: https://ehr.example\n    jwks_url: http://ehr.example/jwks\n")
    result = runner.invoke(cli.app, ["serve", "--port", "0", "--config", str(bad)], env=no_env)
    assert result.exit_code == 2
    assert "issuers.0.jwks_url" in result.output and "https" in result.output
    result = runner.invoke(cli.app, ["serve", "--port", "0"],
                           env={**no_env, "CDSS_SERVICE_CONFIG": str(tmp_path / "none.yaml")})
    assert result.exit_code == 2 and "cannot read" in result.output
    result = runner.invoke(cli.app, ["serve", "--insecure-dev", "--config", str(bad)],
                           env=no_env)
    assert result.exit_code == 2 and "exclude each other" in result.output


class Served:
    """`cdss serve` in a child process: its address, and all it wrote to stderr."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("CDSS_SERVICE_CONFIG", "CDSS_PUBLIC_URL")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdss.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**environ, **(env or {})})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        address = None
        while address is None:
            line = self.lines.get(timeout=120)
            self.seen.append(line)
            if not line:
                pytest.fail("cdss serve exited: " + "".join(self.seen))
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            address = found.group(1) if found else None
        self.address = address

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put("")

    def stop(self) -> str:
        """Stop the server; everything it wrote to stderr."""
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.reader.join(timeout=60)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.seen)


def test_cdss_serve_insecure_dev_logs_no_patient_data(rs: cdss.Ruleset) -> None:
    served = Served(["--ruleset", SPEC, "--insecure-dev", "--log-level", "debug"])
    pid = "zq81x-patient"
    when = (datetime.now(timezone.utc) - timedelta(days=3)).date().isoformat()  # `serve` uses now
    record = [lab("k-zq81x", "2823-3", 3.137, "mmol/L", when=when, pid=pid),
              lab("m-zq81x", "19123-9", 2.113, "mg/dL", when=when, pid=pid)]
    try:
        r = httpx.get(f"{served.address}/cds-services")
        assert r.status_code == 200 and r.json() == discovery([rs], hooks=HOOKS)
        body = call(rs, pid, record)
        body["prefetch"]["patient"].update(NAMED)
        r = httpx.post(f"{served.address}/cds-services/plantar-cramps", json=body)
        assert r.status_code == 200, r.text
        assert "3.137" in r.text  # the cards do quote the value, to the client only
        mismatch = call(rs, pid, record)
        mismatch["context"]["patientId"] = "other-zq81x"
        r = httpx.post(f"{served.address}/cds-services/plantar-cramps", json=mismatch)
        assert r.status_code == 400 and pid in r.text
    finally:
        err = served.stop()
    assert any("plantar-cramps (plantar-cramps@1.0.0)" in s for s in served.seen)
    assert "--insecure-dev" in err and "NOT authenticated" in err
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    calls = [c for c in lines if "status" in c]  # the calls' lines, not the process's
    assert [c["event"] for c in lines if "status" not in c] == [
        "start", "worker started", "stopping", "worker stopped"]
    assert [c["event"] for c in calls] == ["discovery", "patient-view", "patient-view"]
    assert [c["status"] for c in calls] == [200, 200, 400]
    assert all("--insecure-dev" in c["warning"] for c in calls)
    assert calls[1]["cards"] >= 1 and calls[1]["ruleset"] == SPEC
    assert secrets_in(err, ("zq81x", "3.137", "2.113", *NAMED_VALUES)) == []


def test_cdss_serve_with_configuration_requires_tokens(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "ehr.pem").write_bytes(pem)
    (tmp_path / "service.json").write_text(orjson.dumps({"issuers": [
        {"issuer": "https://ehr.example", "public_key_file": "ehr.pem"}]}).decode())
    public = "https://cds.example.org/cdss"  # as the EHR calls it, through a TLS proxy
    served = Served(["--ruleset", SPEC], env={
        "CDSS_SERVICE_CONFIG": str(tmp_path / "service.json"), "CDSS_PUBLIC_URL": public})
    try:
        url = f"{served.address}/cds-services"
        assert httpx.get(url).status_code == 401
        now = int(time.time())
        token = jwt.encode({"iss": "https://ehr.example", "aud": f"{public}/cds-services",
                            "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
                           key, algorithm="ES384", headers={"kid": "k", "typ": "JWT"})
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["services"][0]["id"] == "plantar-cramps"
    finally:
        err = served.stop()
    assert "trusted issuers: https://ehr.example" in err
    assert token not in err and token.split(".")[2] not in err


def test_prefetch_keys_cover_the_templates(rs: cdss.Ruleset) -> None:
    # the test data helper must satisfy every template, or the HTTP tests above
    # would silently test the fetch path instead of prefetch
    assert set(call(rs, "r1", [])["prefetch"]) == set(prefetch_templates(rs))


def test_a_site_concept_map_and_time_zone_apply_and_no_engine_thread_runs(
        tmp_path: Path) -> None:
    site_map = ROOT / "examples" / "site" / "concept-map.yaml"
    app = create_app(rulesets=("plantar-cramps",), concept_maps=[site_map],
                     timezone="Europe/Berlin", clock=lambda: NOW, insecure_dev=True)
    pid = "site-1"
    saddle = {"resourceType": "Condition", "id": "sa", "subject": {"reference": f"Patient/{pid}"},
              "code": {"coding": [{"system": "http://hospital.example/fhir/CodeSystem/symptoms",
                                   "code": "SA-01"}]}, "recordedDate": "2026-02-27T10:00:00"}
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": pid},
            "prefetch": {"patient": patient(pid), "labs": None, "findings": None,
                         "conditions": bundle(saddle, kind="searchset"),
                         "medicationRequests": bundle(kind="searchset"),
                         "medicationStatements": bundle(kind="searchset"),
                         "allergies": bundle(kind="searchset")}}
    with serve_in_background(app) as url:
        for _ in range(3):
            r = httpx.post(f"{url}/cds-services/plantar-cramps", json=body)
            assert r.status_code == 200, r.text
            assert [t for t in threading.enumerate() if isinstance(t, threading.Timer)] == []
    cards = assert_spec_cards(r.json())
    assert cards[0]["indicator"] == "critical"  # the site's saddle-numbness code, mapped
    with pytest.raises(cdss.CDSSError, match="Mars/Olympus"):
        create_app(rulesets=("plantar-cramps",), timezone="Mars/Olympus", insecure_dev=True)


def _without_uuids(body: dict[str, Any]) -> list[dict[str, Any]]:
    cards = orjson.loads(orjson.dumps(body["cards"]))
    for card in cards:
        card.pop("uuid", None)
        for suggestion in card.get("suggestions", []):
            suggestion.pop("uuid", None)
    return cards


def test_lean_intake_gives_the_cards_strict_intake_gives(rs: cdss.Ruleset) -> None:
    unreadable = lab("bad", "2823-3", 3.2, "mmol/L", when="2026-02-31", pid="i1")
    records = {"i1": [*red_flags("i1"), unreadable], "i2": low_potassium("i2"), "i3": []}
    answers: dict[str, list[Any]] = {}
    for intake in ("strict", "lean"):
        app = create_app(rulesets=(SPEC,), clock=lambda: NOW, insecure_dev=True, intake=intake)
        with serve_in_background(app) as url:
            for pid, record in records.items():
                r = httpx.post(f"{url}/cds-services/plantar-cramps", json=call(rs, pid, record))
                assert r.status_code == 200, r.text
                answers.setdefault(pid, []).append(_without_uuids(r.json()))
    for cards in answers["i1"]:  # each intake words its reason its own way
        incomplete = [c for c in cards if c["summary"].startswith("Incomplete assessment")]
        assert len(incomplete) == 1
        assert "`Observation/bad` `effectiveDateTime`" in incomplete[0].pop("detail")
    for pid, (strict, lean) in answers.items():
        assert strict == lean, pid
    with pytest.raises(cdss.CDSSError, match="intake must be 'strict' or 'lean'"):
        create_app(rulesets=(SPEC,), insecure_dev=True, intake="fast")
