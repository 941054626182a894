"""``cdss check-service``: passes cdss's own service (2.0 and 3.0, with and
without authentication), and each check fails on the fault it exists for in
a deliberately broken stub service (and passes the same stub without it)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from cdss import cli
from cdss.errors import InvalidArgument
from cdss.service import (
    CHECKS,
    base_url,
    bind,
    check_service,
    create_app,
    load_config,
    serve_in_background,
)
from tests.support.keys import write_key_pair

SPEC = "plantar-cramps@1.4.0"
ISSUER = "https://ehr.example"


def statuses(report: Any) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


# --------------------------------------------------------------------------- #
# cdss's own service
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def open_service() -> Iterator[str]:
    with serve_in_background(create_app(rulesets=(SPEC,), insecure_dev=True)) as base:
        yield base


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("keys")
    key = write_key_pair(folder)
    return folder / "ehr.key", key


@pytest.fixture(scope="module")
def secured_service(key_file: tuple[Path, Any]) -> Iterator[str]:
    folder = key_file[0].parent
    (folder / "service.yaml").write_text(yaml.safe_dump({"issuers": [
        {"issuer": ISSUER, "public_key_file": "ehr.pem", "algorithms": ["ES384"]}]}))
    sock = bind("127.0.0.1")
    url = base_url(sock)
    config = load_config(folder / "service.yaml", public_url=url, environ={})
    with serve_in_background(create_app(rulesets=(SPEC,), config=config), sock=sock):
        yield url


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_cdss_passes_without_authentication(open_service: str, version: str) -> None:
    url = open_service + ("/v3" if version == "3.0" else "")
    report = check_service(url, version=version)
    assert report.passed, report.to_text()
    assert statuses(report) == {**dict.fromkeys(CHECKS, "passed"),
                                "authentication": "not-applicable"}


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_cdss_passes_with_authentication(secured_service: str, key_file: tuple[Path, Any],
                                         version: str) -> None:
    url = secured_service + ("/v3" if version == "3.0" else "")
    report = check_service(url, version=version, key=key_file[0], issuer=ISSUER)
    assert report.passed, report.to_text()
    assert statuses(report) == dict.fromkeys(CHECKS, "passed")


def test_a_3_0_call_without_a_jwt_gets_a_401_operation_outcome(secured_service: str) -> None:
    r = httpx.post(f"{secured_service}/v3/cds-services/plantar-cramps", json={}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json() == {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "login", "details": {"text": "HTTP 401"},
        "diagnostics": "authentication failed"}]}
    old = httpx.post(f"{secured_service}/cds-services/plantar-cramps", json={}, timeout=10)
    assert old.json() == {"error": {"status": 401, "message": "authentication failed"}}


def test_a_2_0_service_checked_as_3_0_fails_its_error_shapes(open_service: str) -> None:
    report = check_service(open_service, version="3.0")
    failed = {c.name: c for c in report.checks if c.status == "failed"}
    assert set(failed) == {"errors", "feedback"}  # both refusals are 2.0-shaped
    assert "OperationOutcome" in failed["errors"].message
    assert "OperationOutcome" in failed["feedback"].message


def test_the_command_prints_json_and_exits_by_the_result(open_service: str) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["check-service", open_service + "/v3", "--version", "3.0",
                                 "--format", "json"])
    assert ok.exit_code == 0, ok.output
    body = orjson.loads(ok.stdout)
    assert body["passed"] is True and body["version"] == "3.0"
    assert [c["check"] for c in body["checks"]] == list(CHECKS)
    bad = runner.invoke(cli.app, ["check-service", open_service, "--version", "3.0"])
    assert bad.exit_code == 1
    assert "failed          errors at POST /cds-services/plantar-cramps $" in bad.stdout
    usage = runner.invoke(cli.app, ["check-service", "not-a-url"])
    assert usage.exit_code == 2 and "absolute http(s) URL" in usage.output


def test_bad_arguments_are_refused_with_cdss_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="version"):
        check_service("http://127.0.0.1:9", version="4.0")
    with pytest.raises(InvalidArgument, match="issuer"):
        check_service("http://127.0.0.1:9", key=tmp_path / "none.pem")
    (tmp_path / "p.json").write_text('{"resourceType": "Bundle", "entry": []}')
    with pytest.raises(InvalidArgument, match="one Patient"):
        check_service("http://127.0.0.1:9", patient=tmp_path / "p.json")


def test_a_supplied_patient_is_what_the_calls_are_built_from(open_service: str,
                                                             tmp_path: Path) -> None:
    pid = "supplied-7"
    record = [{"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1950-01-01"},
              {"resourceType": "MedicationRequest", "id": "d1", "status": "draft",
               "intent": "order", "subject": {"reference": f"Patient/{pid}"},
               "medicationCodeableConcept": {"text": "furosemide"}}]
    (tmp_path / "p.json").write_bytes(orjson.dumps(
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"resource": r} for r in record]}))
    report = check_service(open_service, patient=tmp_path / "p.json")
    assert report.passed, report.to_text()


# --------------------------------------------------------------------------- #
# A deliberately broken stub: one fault at a time
# --------------------------------------------------------------------------- #
def stub_app(fault: str | None, version: str, public_key: Any = None) -> Starlette:
    """A small CDS service that is right except for ``fault``."""

    def error(status: int, message: str, *, faulty: bool = False) -> Response:
        """A refusal; ``faulty``: the hook endpoint's, where the error faults are."""
        if faulty and fault == "error-traceback":
            return Response(f"Traceback (most recent call last):\n  {message}", status)
        if version == "3.0" and not (faulty and fault == "error-not-outcome"):
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": message}]}, status)
        return JSONResponse({"error": message}, status)

    def authorized(request: Request) -> bool:
        if public_key is None or fault == "auth-open":
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            jwt.decode(token, public_key, algorithms=["ES384"], audience=str(request.url))
        except jwt.PyJWTError:
            return False
        return scheme == "Bearer"

    services: list[dict[str, Any]] = [
        {"hook": "patient-view", "id": "stub-pv", "title": "Stub", "description": "A stub.",
         "prefetch": {"patient": "Patient/{{context.patientId}}",
                      "labs": "Observation?patient={{context.patientId}}"
                              "&code=http://loinc.org|2823-3"}},
        {"hook": "order-sign", "id": "stub-sign", "description": "A stub on orders."},
    ]
    if version == "3.0":
        for s in services:
            s.update(version="3.0.0", hookVersion="1.0")
    if fault == "discovery-no-description":
        del services[0]["description"]
    if fault == "discovery-bad-version":
        services[0]["version"] = "three"
    if fault == "template-modifier":
        services[0]["prefetch"]["labs"] = "Observation?patient={{context.patientId}}" \
                                          "&code:text=potassium"
    if fault == "template-unknown-token":
        services[0]["prefetch"]["labs"] = "Observation?patient={{context.medicalRecordNumber}}"

    def card(context: dict[str, Any]) -> dict[str, Any]:
        drafts = [e["resource"] for e in (context.get("draftOrders") or {}).get("entry", [])]
        target = f"MedicationRequest/{drafts[0]['id']}" if drafts else None
        out: dict[str, Any] = {
            "uuid": str(uuid.uuid4()), "summary": "Check the potassium.", "indicator": "warning",
            "source": {"label": "Stub", "url": "https://stub.example/"},
            "links": [{"label": "Guide", "url": "https://stub.example/guide",
                       "type": "absolute"}]}
        if target is not None:
            out["suggestions"] = [{"label": "Remove", "uuid": str(uuid.uuid4()), "actions": [
                {"type": "delete", "description": "Remove it",
                 "resourceId": ["MedicationRequest/not-there" if fault == "delete-unknown"
                                else target]}]}]
            out["selectionBehavior"] = "any"
        if fault == "create-dangling-reference":
            out["suggestions"] = [{"label": "Order", "actions": [
                {"type": "create", "description": "Order a lab",
                 "resource": {"resourceType": "ServiceRequest", "status": "draft",
                              "intent": "proposal",
                              "subject": {"reference": "Patient/someone-else"}}}]}]
            out["selectionBehavior"] = "any"
        if fault == "summary-long":
            out["summary"] = "A" * 150
        if fault == "indicator-bad":
            out["indicator"] = "hard-stop"
        if fault == "no-source-label":
            del out["source"]["label"]
        if fault == "uuid-bad":
            out["uuid"] = "card-1"
        if fault == "no-selection-behavior" and target is not None:
            del out["selectionBehavior"]
        if fault == "link-relative":
            out["links"][0]["url"] = "/guide"
        return out

    async def discovery(request: Request) -> Response:
        if not authorized(request):
            return error(401, "authentication failed")
        return JSONResponse({"services": services})

    async def call(request: Request) -> Response:
        if not authorized(request):
            return error(401, "authentication failed")
        sid = request.path_params["sid"]
        if sid not in ("stub-pv", "stub-sign"):
            return error(404, "no such service", faulty=True)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return JSONResponse({"cards": []}) if fault == "error-200" else \
                error(400, "not JSON", faulty=True)
        if fault == "call-500" and sid == "stub-sign":
            return error(500, "internal error")
        if fault == "call-no-cards":
            return JSONResponse({"advice": []})
        return JSONResponse({"cards": [card(body.get("context") or {})]})

    async def feedback(request: Request) -> Response:
        if not authorized(request):
            return error(401, "authentication failed")
        if fault == "feedback-404":
            return error(404, "no feedback here")
        body = orjson.loads(await request.body())
        entries = body.get("feedback") or []
        if not all(e.get("outcome") in ("accepted", "overridden") for e in entries):
            return error(400, "bad outcome")
        return JSONResponse({})

    return Starlette(routes=[Route("/cds-services", discovery, methods=["GET"]),
                             Route("/cds-services/{sid}", call, methods=["POST"]),
                             Route("/cds-services/{sid}/feedback", feedback, methods=["POST"])])


#: fault -> (the check that must fail, the start of the JSON path it names, versions)
FAULTS = {
    "discovery-no-description": ("discovery", "$.services[0].description", ("2.0", "3.0")),
    "discovery-bad-version": ("discovery", "$.services[0].version", ("3.0",)),
    "template-modifier": ("prefetch-templates", "$.services[0].prefetch.labs", ("2.0", "3.0")),
    "template-unknown-token": ("prefetch-templates", "$.services[0].prefetch.labs", ("2.0",)),
    "call-500": ("hook-call", "POST /cds-services/stub-sign", ("2.0", "3.0")),
    "call-no-cards": ("hook-call", "POST /cds-services/stub-pv $.cards", ("2.0",)),
    "summary-long": ("cards", "POST /cds-services/stub-pv $.cards[0].summary", ("2.0",)),
    "indicator-bad": ("cards", "POST /cds-services/stub-pv $.cards[0].indicator", ("2.0",)),
    "no-source-label": ("cards", "POST /cds-services/stub-pv $.cards[0].source.label",
                        ("2.0",)),
    "uuid-bad": ("cards", "POST /cds-services/stub-pv $.cards[0].uuid", ("2.0",)),
    "delete-unknown": ("cards", "POST /cds-services/stub-sign $.cards[0].suggestions[0]."
                                "actions[0].resourceId[0]", ("2.0", "3.0")),
    "create-dangling-reference": ("cards", "POST /cds-services/stub-pv $.cards[0].suggestions[0]"
                                           ".actions[0].resource.subject.reference", ("2.0",)),
    "no-selection-behavior": ("cards", "POST /cds-services/stub-sign $.cards[0]."
                                       "selectionBehavior", ("2.0",)),
    "link-relative": ("cards", "POST /cds-services/stub-pv $.cards[0].links[0].url", ("2.0",)),
    "error-200": ("errors", "POST /cds-services/stub-pv", ("2.0", "3.0")),
    "error-traceback": ("errors", "POST /cds-services/stub-pv", ("2.0",)),
    "error-not-outcome": ("errors", "POST /cds-services/stub-pv $", ("3.0",)),
    "feedback-404": ("feedback", "POST /cds-services/stub-pv/feedback", ("2.0", "3.0")),
    "auth-open": ("authentication", "GET /cds-services", ("2.0", "3.0")),
}
CASES = [(fault, v) for fault, (_, _, versions) in FAULTS.items() for v in versions]


@contextlib.contextmanager
def stub(fault: str | None, version: str, key: Any = None) -> Iterator[str]:
    sock = bind("127.0.0.1")
    app = stub_app(fault, version, key.public_key() if key is not None else None)
    with serve_in_background(app, sock=sock):
        yield base_url(sock)


@pytest.mark.parametrize("version", ["2.0", "3.0"])
def test_the_stub_without_a_fault_passes(version: str, key_file: tuple[Path, Any]) -> None:
    with stub(None, version, key_file[1]) as url:
        report = check_service(url, version=version, key=key_file[0], issuer=ISSUER)
    assert report.passed, report.to_text()
    assert statuses(report) == dict.fromkeys(CHECKS, "passed")


@pytest.mark.parametrize(("fault", "version"), CASES)
def test_each_check_fails_on_its_fault(fault: str, version: str,
                                       key_file: tuple[Path, Any]) -> None:
    check, path, _ = FAULTS[fault]
    with stub(fault, version, key_file[1]) as url:
        report = check_service(url, version=version, key=key_file[0], issuer=ISSUER)
    assert not report.passed
    failed = [c for c in report.checks if c.status == "failed"]
    assert [c.name for c in failed] == [check], report.to_text()
    assert failed[0].path.startswith(path), failed[0]
    assert failed[0].message
