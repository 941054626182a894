"""Security of the CDS Hooks service, over real HTTP on 127.0.0.1.

The keys are made here (RSA 2048 and EC P-384), the EHRs' JWK Sets and FHIR
servers are served on loopback, and the service is configured as a deployment
would be: three trusted issuers (keys from a JWKS URL, from a PEM file, and
from an allow-listed ``jku``), each with its own FHIR servers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import cdss
import cdss.service
from cdss.errors import EngineError
from cdss.hooks import handle_patient_view
from cdss.service import (
    AUTH_FAILED,
    AllowedServer,
    AuthenticationFailed,
    JwksPolicy,
    Limits,
    ReplayCacheFull,
    ServiceConfig,
    ServiceConfigError,
    base_url,
    bind,
    create_app,
    json_depth,
    json_too_deep,
    load_config,
    serve_in_background,
)
from cdss.service._auth import JwksCache, ReplayCache
from tests.support.builders import bundle, lab, patient
from tests.support.logs import secrets_in
from tests.unit.hooks.test_cds_hooks import full_prefetch
from tests.unit.service.test_service import NAMED, NAMED_VALUES

SPEC = "plantar-cramps@1.0.0"
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
ISS_A = "https://ehr-a.example"  # keys from its JWKS URL
ISS_B = "https://ehr-b.example"  # a PEM public key in a file, RS384 only
ISS_C = "https://ehr-c.example"  # keys from the jku its tokens name, when allow-listed
FHIR_TOKEN = "fhir-access-token-7f3a-SECRET"
SERVICE = "/cds-services/plantar-cramps"


# --------------------------------------------------------------------------- #
# Keys
# --------------------------------------------------------------------------- #
def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.ECAlgorithm if alg.startswith("ES") else jwt.algorithms.RSAAlgorithm
    out: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    out.update(kid=kid, alg=alg, use="sig")
    return out


class Keys:
    def __init__(self) -> None:
        self.a = ec.generate_private_key(ec.SECP384R1())
        self.a_next = ec.generate_private_key(ec.SECP384R1())  # published later (rotation)
        self.b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.c = ec.generate_private_key(ec.SECP384R1())
        self.attacker = ec.generate_private_key(ec.SECP384R1())
        self.b_pem = self.b.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


# --------------------------------------------------------------------------- #
# The EHRs' servers on loopback: JWK Sets, and FHIR servers that record calls
# --------------------------------------------------------------------------- #
class JwksServer:
    def __init__(self, keys: Keys) -> None:
        self.sets = {
            "a": {"keys": [_jwk(keys.a, "a1", "ES384")]},
            "c": {"keys": [_jwk(keys.c, "c1", "ES384")]},
            "rogue": {"keys": [_jwk(keys.attacker, "a1", "ES384"),
                               _jwk(keys.attacker, "c1", "ES384")]},
        }
        self.hits: list[str] = []
        self.app = Starlette(routes=[Route("/{name}/jwks.json", self.serve)])

    async def serve(self, request: Request) -> JSONResponse:
        name = request.path_params["name"]
        self.hits.append(name)
        return JSONResponse(self.sets.get(name, {"keys": []}))


class FhirServer:
    """A FHIR server holding one patient per id, plus patients whose searches
    misbehave: ``redirect`` (302 elsewhere), ``escape`` (a next page outside the
    base path), ``huge`` (an answer past the size cap), ``deep`` (JSON nested
    too deep)."""

    def __init__(self) -> None:
        self.data: dict[str, list[dict[str, Any]]] = {}
        self.hits: list[tuple[str, str, str | None]] = []
        self.cookies: list[str | None] = []
        self.elsewhere = ""
        self.app = Starlette(routes=[Route("/{path:path}", self.serve)])

    async def serve(self, request: Request) -> Response:
        response = await self.answer(request)
        response.set_cookie("session", "kept-between-calls")  # must not be sent back
        return response

    async def answer(self, request: Request) -> Response:
        auth = request.headers.get("authorization")
        self.hits.append((request.url.path, request.url.query, auth))
        self.cookies.append(request.headers.get("cookie"))
        if auth != f"Bearer {FHIR_TOKEN}":
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        parts = request.url.path.strip("/").split("/")
        if len(parts) == 3 and parts[1] == "Patient":
            return JSONResponse(patient(parts[2]) | NAMED)
        pid = request.query_params.get("patient", "")
        if pid == "redirect":
            return Response(status_code=302, headers={"Location": self.elsewhere})
        if pid == "escape":
            page = bundle(kind="searchset")
            page["link"] = [{"relation": "next",
                             "url": f"{request.base_url}outside/{parts[-1]}?patient=escape"}]
            return JSONResponse(page)
        if pid == "huge":
            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
                for _ in range(400):
                    yield b'{"resource": {"resourceType": "Basic"}},' * 200
                yield b"]}"
            return StreamingResponse(chunks(), media_type="application/fhir+json")
        if pid == "deep":
            return Response(b'{"resourceType": "Bundle", "x": ' + b"[" * 100 + b"]" * 100
                            + b"}", media_type="application/fhir+json")
        code = request.query_params.get("code")
        found = [r for r in self.data.get(pid, []) if r["resourceType"] == parts[-1]
                 and (code is None or r["code"]["coding"][0]["code"] in code)]
        return JSONResponse(bundle(*found, kind="searchset"))


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    with serve_in_background(app) as url:
        yield url


@pytest.fixture(scope="module")
def jwks_server(keys: Keys) -> Iterator[tuple[JwksServer, str]]:
    server = JwksServer(keys)
    with served(server.app) as url:
        yield server, url


@pytest.fixture(scope="module")
def fhir_a() -> Iterator[tuple[FhirServer, str]]:
    server = FhirServer()
    with served(server.app) as url:
        yield server, url


@pytest.fixture(scope="module")
def fhir_b() -> Iterator[tuple[FhirServer, str]]:
    server = FhirServer()
    with served(server.app) as url:
        yield server, url


# --------------------------------------------------------------------------- #
# The service, configured from a file
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, keys: Keys,
                jwks_server: tuple[JwksServer, str], fhir_a: tuple[FhirServer, str],
                fhir_b: tuple[FhirServer, str]) -> Path:
    folder = tmp_path_factory.mktemp("service")
    (folder / "ehr-b.pem").write_bytes(keys.b_pem)
    jwks = jwks_server[1]
    fhir_a[0].elsewhere = f"{fhir_b[1]}/fhir/Observation"
    content = {
        "issuers": [
            {"issuer": ISS_A, "jwks_url": f"{jwks}/a/jwks.json",
             "fhir_servers": [f"{fhir_a[1]}/fhir"]},
            {"issuer": ISS_B, "public_key_file": "ehr-b.pem", "algorithms": ["RS384"],
             "fhir_servers": [f"{fhir_b[1]}/fhir"]},
            {"issuer": ISS_C, "jku": [f"{jwks}/c/jwks.json"]},
        ],
        "token": {"max_lifetime_seconds": 300, "leeway_seconds": 5},
        "jwks": {"min_refresh_seconds": 0},
        "limits": {"max_body_bytes": 300_000, "fhir_max_response_bytes": 100_000},
    }
    path = folder / "service.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def start(config_file: Path, **options: Any) -> tuple[contextlib.ExitStack, str, Starlette]:
    sock = bind("127.0.0.1")
    url = base_url(sock)
    config = load_config(config_file, public_url=url, environ={})
    assert config is not None
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, config=config, **options)
    stack = contextlib.ExitStack()
    stack.enter_context(serve_in_background(app, sock=sock))
    return stack, url, app


@pytest.fixture(scope="module")
def service(config_file: Path) -> Iterator[str]:
    stack, url, _ = start(config_file)
    with stack:
        yield url


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


def sign(key: Any, aud: str | list[str], *, iss: str = ISS_A, alg: str = "ES384",
         kid: str | None = "a1", lifetime: int = 60, iat: int | None = None,
         jti: str | None = None, drop: tuple[str, ...] = (),
         headers: dict[str, Any] | None = None) -> str:
    now = int(time.time())
    issued = now if iat is None else iat
    claims = {"iss": iss, "aud": aud, "iat": issued, "exp": issued + lifetime,
              "jti": jti or str(uuid.uuid4())}
    for name in drop:
        del claims[name]
    head = {"typ": "JWT", **({"kid": kid} if kid else {}), **(headers or {})}
    return jwt.encode(claims, key, algorithm=alg, headers=head)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT assembled by hand: unsigned (``secret`` None) or HMAC-SHA384."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha384).digest()
    return f"{signing_input}.{_b64(mac)}"


def signed_by_hand(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    """A JWT signed with EC ``key`` (ES384) whose header is exactly ``header``
    (PyJWT's encoder would rewrite some parameters)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    es384 = jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA384)
    return f"{signing_input}.{_b64(es384.sign(signing_input.encode(), key))}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def hook_body(rs: cdss.Ruleset, pid: str, record: list[dict[str, Any]] | None = None,
              **extra: Any) -> dict[str, Any]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/u1", "patientId": pid},
            "prefetch": full_prefetch(rs, pid, record or [])}
    body.update(extra)
    return body


def fetch_body(pid: str, fhir: str) -> dict[str, Any]:
    """A call without prefetch: everything must be read from ``fhir``."""
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"patientId": pid}, "fhirServer": fhir,
            "fhirAuthorization": {"access_token": FHIR_TOKEN, "token_type": "Bearer",
                                  "expires_in": 300, "scope": "patient/*.read",
                                  "subject": "cdss"}}


def low_k(pid: str) -> list[dict[str, Any]]:
    return [lab("k1", "2823-3", 3.137, "mmol/L", when="2026-02-20", pid=pid),
            lab("m1", "19123-9", 2.113, "mg/dL", when="2026-02-20", pid=pid)]


def assert_refused(response: httpx.Response) -> None:
    """A 401 that says nothing but that authentication failed."""
    assert response.status_code == 401, response.text
    assert response.json() == {"error": {"status": 401, "message": AUTH_FAILED}}
    assert response.headers["www-authenticate"] == "Bearer"


# --------------------------------------------------------------------------- #
# Valid tokens
# --------------------------------------------------------------------------- #
def test_valid_tokens_of_each_issuer_are_accepted(service: str, keys: Keys,
                                                  rs: cdss.Ruleset) -> None:
    discovery_url = f"{service}/cds-services"
    url = f"{service}{SERVICE}"
    r = httpx.get(discovery_url, headers=bearer(sign(keys.a, discovery_url)))
    assert r.status_code == 200 and r.json()["services"][0]["id"] == "plantar-cramps"
    accepted = {
        "ES384 via jwks_url": sign(keys.a, url),
        "RS384 via PEM file": sign(keys.b, url, iss=ISS_B, alg="RS384", kid="any"),
        "aud as a list": sign(keys.a, [url, "https://elsewhere.example/x"]),
    }
    for why, token in accepted.items():
        r = httpx.post(url, json=hook_body(rs, "v1", low_k("v1")), headers=bearer(token))
        assert r.status_code == 200, (why, r.text)
        assert r.json()["cards"][0]["summary"] == "Low potassium (hypokalaemia)"


def test_a_jku_on_the_allowlist_is_fetched(service: str, keys: Keys, rs: cdss.Ruleset,
                                           jwks_server: tuple[JwksServer, str]) -> None:
    server, jwks = jwks_server
    url = f"{service}{SERVICE}"
    token = sign(keys.c, url, iss=ISS_C, kid="c1", headers={"jku": f"{jwks}/c/jwks.json"})
    r = httpx.post(url, json=hook_body(rs, "v2", low_k("v2")), headers=bearer(token))
    assert r.status_code == 200, r.text
    assert "c" in server.hits
    # an issuer configured with jku only accepts no token without one
    assert_refused(httpx.post(url, json=hook_body(rs, "v2"),
                              headers=bearer(sign(keys.c, url, iss=ISS_C, kid="c1"))))


def test_key_rotation_is_picked_up_from_the_jwks_url(service: str, keys: Keys, rs: cdss.Ruleset,
                                                     jwks_server: tuple[JwksServer, str]) -> None:
    server, _ = jwks_server
    url = f"{service}{SERVICE}"
    assert httpx.post(url, json=hook_body(rs, "v3"),
                      headers=bearer(sign(keys.a, url))).status_code == 200
    rotated = sign(keys.a_next, url, kid="a2")
    assert_refused(httpx.post(url, json=hook_body(rs, "v3"), headers=bearer(rotated)))
    server.sets["a"]["keys"].append(_jwk(keys.a_next, "a2", "ES384"))
    try:
        r = httpx.post(url, json=hook_body(rs, "v3"), headers=bearer(sign(keys.a_next, url,
                                                                          kid="a2")))
        assert r.status_code == 200, r.text
    finally:
        server.sets["a"]["keys"].pop()


# --------------------------------------------------------------------------- #
# Refused tokens: always 401, always the same answer
# --------------------------------------------------------------------------- #
def bad_tokens(keys: Keys, service: str, jwks: str) -> dict[str, str | None]:
    url = f"{service}{SERVICE}"
    now = int(time.time())
    claims = {"iss": ISS_B, "aud": url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    rogue_jwk = _jwk(keys.attacker, "a1", "ES384")
    return {
        "no token": None,
        "wrong signature (attacker's key, issuer's kid)": sign(keys.attacker, url),
        "unknown issuer": sign(keys.a, url, iss="https://stranger.example"),
        "issuer spelt with a trailing slash": sign(keys.a, url, iss=ISS_A + "/"),
        "audience of another endpoint": sign(keys.a, f"{service}/cds-services"),
        "audience of another host": sign(keys.a, f"https://cds.example.org{SERVICE}"),
        "audience missing the path": sign(keys.a, service),
        "expired": sign(keys.a, url, iat=now - 3600),
        "expiry too far ahead": sign(keys.a, url, lifetime=3600),
        "issued in the future": sign(keys.a, url, iat=now + 120),  # exp within the lifetime
        "no jti": sign(keys.a, url, drop=("jti",)),
        "no exp": sign(keys.a, url, drop=("exp",)),
        "no iat": sign(keys.a, url, drop=("iat",)),
        "no aud": sign(keys.a, url, drop=("aud",)),
        "alg none": handmade({"alg": "none", "typ": "JWT", "kid": "a1"},
                             {**claims, "iss": ISS_A}, None),
        "HS384 with the issuer's PEM as secret": handmade(
            {"alg": "HS384", "typ": "JWT"}, claims, keys.b_pem),
        "HS384 with the PEM, kid of a JWK": handmade(
            {"alg": "HS384", "typ": "JWT", "kid": "a1"}, {**claims, "iss": ISS_A}, keys.b_pem),
        "jku pointing elsewhere": sign(keys.attacker, url, headers={
            "jku": f"{jwks}/rogue/jwks.json"}),
        "jku of another issuer": sign(keys.attacker, url, iss=ISS_C, kid="c1", headers={
            "jku": f"{jwks}/rogue/jwks.json"}),
        "key embedded in the header": sign(keys.attacker, url, headers={"jwk": rogue_jwk}),
        "algorithm the issuer may not use": sign(keys.b, url, iss=ISS_B, alg="RS256"),
        "RS384 for an issuer whose keys are EC": sign(keys.b, url, alg="RS384"),
        "ES384 without a signature": handmade({"alg": "ES384", "typ": "JWT", "kid": "a1"},
                                              {**claims, "iss": ISS_A}, None),
        "typ not JWT": sign(keys.a, url, headers={"typ": "at+jwt"}),
        "not a JWT": "abc.def",
        "garbage": "%%%",
    }


BAD_TOKENS = ["no token", "wrong signature (attacker's key, issuer's kid)", "unknown issuer",
              "issuer spelt with a trailing slash", "audience of another endpoint",
              "audience of another host", "audience missing the path", "expired",
              "expiry too far ahead", "issued in the future", "no jti", "no exp", "no iat",
              "no aud", "alg none", "HS384 with the issuer's PEM as secret",
              "HS384 with the PEM, kid of a JWK", "jku pointing elsewhere",
              "jku of another issuer", "key embedded in the header",
              "algorithm the issuer may not use", "RS384 for an issuer whose keys are EC",
              "ES384 without a signature", "typ not JWT", "not a JWT", "garbage"]


@pytest.mark.parametrize("why", BAD_TOKENS)
def test_a_bad_token_is_refused(service: str, keys: Keys, rs: cdss.Ruleset, why: str,
                                jwks_server: tuple[JwksServer, str]) -> None:
    server, jwks = jwks_server
    token = bad_tokens(keys, service, jwks)[why]
    r = httpx.post(f"{service}{SERVICE}", json=hook_body(rs, "x1", low_k("x1")),
                   headers=bearer(token) if token else {})
    assert_refused(r)
    assert "rogue" not in server.hits  # a jku off the allowlist is never fetched


def test_refusals_look_alike_and_the_log_says_why(service: str, keys: Keys, rs: cdss.Ruleset,
                                                  jwks_server: tuple[JwksServer, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss.service")
    tokens = bad_tokens(keys, service, jwks_server[1])
    assert set(tokens) == set(BAD_TOKENS)
    answers = set()
    for token in tokens.values():
        r = httpx.post(f"{service}{SERVICE}", json=hook_body(rs, "x1", low_k("x1")),
                       headers=bearer(token) if token else {})
        answers.add((r.status_code, r.text, r.headers["www-authenticate"]))
    assert len(answers) == 1  # nothing tells one refusal from another
    lines = [orjson.loads(rec.getMessage()) for rec in caplog.records
             if rec.name == "cdss.service"]
    refusals = [line for line in lines if line.get("status") == 401]
    assert len(refusals) == len(tokens)
    assert {"authentication: issuer not trusted", "authentication: bad signature",
            "authentication: wrong audience", "authentication: token expired",
            "authentication: jku not on the issuer's allowlist",
            "authentication: token lifetime longer than allowed",
            "authentication: missing claim jti",
            "authentication: algorithm not accepted (none or symmetric)",
            "authentication: no bearer token"} <= {line["error"] for line in refusals}
    for token in tokens.values():  # and no token is logged
        for part in (token or "").split(".")[1:]:
            if len(part) > 8:
                assert part not in caplog.text


def test_discovery_and_feedback_need_a_token_too(service: str, keys: Keys) -> None:
    discovery_url = f"{service}/cds-services"
    feedback_url = f"{service}{SERVICE}/feedback"
    body = {"feedback": [{"card": "c", "outcome": "overridden",
                          "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    assert_refused(httpx.get(discovery_url))
    assert_refused(httpx.get(discovery_url, headers=bearer(sign(keys.a, f"{service}{SERVICE}"))))
    assert_refused(httpx.post(feedback_url, json=body))
    assert_refused(httpx.post(feedback_url, json=body,
                              headers=bearer(sign(keys.a, f"{service}{SERVICE}"))))
    r = httpx.post(feedback_url, json=body, headers=bearer(sign(keys.a, feedback_url)))
    assert r.status_code == 200 and r.json() == {"received": 1}
    # an unknown service is a 404 only for an authenticated caller
    assert_refused(httpx.post(f"{service}/cds-services/nope", json={}))
    nope = f"{service}/cds-services/nope"
    assert httpx.post(nope, json={}, headers=bearer(sign(keys.a, nope))).status_code == 404


def test_a_replayed_jti_is_refused(service: str, keys: Keys, rs: cdss.Ruleset) -> None:
    url = f"{service}{SERVICE}"
    token = sign(keys.a, url)
    assert httpx.post(url, json=hook_body(rs, "r1"), headers=bearer(token)).status_code == 200
    assert_refused(httpx.post(url, json=hook_body(rs, "r1"), headers=bearer(token)))
    # the same jti in a new token of the same issuer is a replay too
    again = sign(keys.a, url, jti=jwt.decode(token, options={"verify_signature": False})["jti"])
    assert_refused(httpx.post(url, json=hook_body(rs, "r1"), headers=bearer(again)))


def call_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The service's per-call log lines so far."""
    return [orjson.loads(rec.getMessage()) for rec in caplog.records
            if rec.name == "cdss.service" and '"status"' in rec.getMessage()]


def test_two_authorization_headers_are_refused(service: str, keys: Keys, rs: cdss.Ruleset,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss.service")
    url = f"{service}{SERVICE}"
    seconds = ["Bearer junk", f"Bearer {sign(keys.a, url)}", "Basic dXNlcjpwdw==", ""]
    for second in seconds:
        headers = [("Authorization", f"Bearer {sign(keys.a, url)}"), ("Authorization", second)]
        assert_refused(httpx.post(url, json=hook_body(rs, "h1"), headers=headers))
    assert [line["error"] for line in call_lines(caplog)] == \
        ["authentication: more than one Authorization header"] * len(seconds)
    r = httpx.post(url, json=hook_body(rs, "h1"), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 200, r.text


CRIT_HEADERS: dict[str, tuple[dict[str, Any], str]] = {
    "b64, which PyJWT understands": ({"crit": ["b64"], "b64": True}, "not understand"),
    "a private extension": ({"crit": ["x-policy"], "x-policy": "require-mfa"},
                            "not understand"),
    "a registered name": ({"crit": ["exp"], "exp": 1}, "not understand"),
    "a name the header lacks": ({"crit": ["exp"]}, "malformed crit"),
    "an empty list": ({"crit": []}, "malformed crit"),
    "a string": ({"crit": "x-policy", "x-policy": 1}, "malformed crit"),
    "a number in the list": ({"crit": [1]}, "malformed crit"),
    "a name listed twice": ({"crit": ["x-policy", "x-policy"], "x-policy": 1},
                            "malformed crit"),
}


@pytest.mark.parametrize("why", list(CRIT_HEADERS))
def test_a_crit_header_is_refused_whatever_the_pyjwt_version(
        service: str, keys: Keys, rs: cdss.Ruleset, why: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # PyJWT before 2.12 does not look at crit (and 2.12+ accepts b64): its check is
    # taken away, and the service must still refuse every crit
    monkeypatch.setattr(jwt.api_jws.PyJWS, "_validate_crit", lambda self, headers: None,
                        raising=False)
    caplog.set_level(logging.INFO, logger="cdss.service")
    url = f"{service}{SERVICE}"
    extra, says = CRIT_HEADERS[why]

    def token(header: dict[str, Any]) -> dict[str, str]:
        now = int(time.time())
        claims = {"iss": ISS_A, "aud": url, "iat": now, "exp": now + 60,
                  "jti": str(uuid.uuid4())}
        return bearer(signed_by_hand({"alg": "ES384", "typ": "JWT", "kid": "a1", **header},
                                     claims, keys.a))

    assert_refused(httpx.post(url, json=hook_body(rs, "c1"), headers=token(extra)))
    assert says in call_lines(caplog)[-1]["error"]
    without_crit = {k: v for k, v in extra.items() if k != "crit"}
    r = httpx.post(url, json=hook_body(rs, "c1"), headers=token(without_crit))
    assert r.status_code == 200, r.text  # the same token without crit is accepted


def test_replay_cache_is_bounded_and_expires() -> None:
    now = [1000.0]
    cache = ReplayCache(100, clock=lambda: now[0])
    for i in range(100):
        assert cache.remember(("iss", f"j{i}"), 1060.0 + i)
    assert not cache.remember(("iss", "j5"), 1100.0)
    with pytest.raises(ReplayCacheFull):
        cache.remember(("iss", "one-more"), 1100.0)
    now[0] = 1100.5  # j0..j40 have expired
    assert cache.remember(("iss", "one-more"), 1200.0)
    assert len(cache) == 60
    assert cache.remember(("iss", "j5"), 1200.0)  # forgotten only once its token expired


def test_jwks_cache_refetches_unknown_kids_at_most_once_per_interval() -> None:
    hits: list[str] = []
    answers = {"/ok": httpx.Response(200, json={"keys": [_jwk(
                   ec.generate_private_key(ec.SECP384R1()), "k1", "ES384")]}),
               "/moved": httpx.Response(302, headers={"Location": "http://127.0.0.1/ok"}),
               "/big": httpx.Response(200, content=b'{"keys": [' + b" " * 5000 + b"]}"),
               "/hmac": httpx.Response(200, json={"keys": [
                   {"kty": "oct", "k": "c2VjcmV0", "alg": "HS384"},
                   {"kty": "oct", "k": "c2VjcmV0"}]})}

    usable = orjson.dumps(_jwk(ec.generate_private_key(ec.SECP384R1()), "k2", "ES384"))

    async def endless() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies as read
        yield b'{"keys": ['
        for _ in range(100):
            yield b" " * 1000
        yield usable + b"]}"  # a usable set, only too large

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.path)
        if request.url.path == "/streamed":
            return httpx.Response(200, content=endless())
        return answers[request.url.path]

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    now = [0.0]
    cache = JwksCache(JwksPolicy(min_refresh_seconds=30, max_bytes=2048),
                      lambda: client, clock=lambda: now[0])

    async def run() -> None:
        assert [k.kid for k in await cache.keys("http://127.0.0.1/ok")] == ["k1"]
        for _ in range(5):  # tokens with made-up kids
            await cache.keys("http://127.0.0.1/ok", refresh=True)
        assert hits == ["/ok"]
        now[0] = 31.0
        await cache.keys("http://127.0.0.1/ok", refresh=True)
        assert hits == ["/ok", "/ok"]
        for path in ("/moved", "/big", "/streamed", "/hmac"):
            with pytest.raises(AuthenticationFailed):
                await cache.keys(f"http://127.0.0.1{path}")
        assert hits[2:] == ["/moved", "/big", "/streamed", "/hmac"]  # no redirect followed
        with pytest.raises(AuthenticationFailed):  # failures are not retried at once
            await cache.keys("http://127.0.0.1/moved")
        assert hits.count("/moved") == 1
        await client.aclose()

    asyncio.run(run())


# --------------------------------------------------------------------------- #
# FHIR server fetches: only the issuer's servers
# --------------------------------------------------------------------------- #
def test_fetch_from_the_issuers_fhir_server(service: str, keys: Keys,
                                            fhir_a: tuple[FhirServer, str]) -> None:
    server, fhir = fhir_a
    server.data["f1"] = low_k("f1")
    server.hits.clear()
    url = f"{service}{SERVICE}"
    r = httpx.post(url, json=fetch_body("f1", f"{fhir}/fhir"), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 200, r.text
    assert r.json()["cards"][0]["summary"] == "Low potassium (hypokalaemia)"
    assert server.hits and all(auth == f"Bearer {FHIR_TOKEN}" for _, _, auth in server.hits)
    r = httpx.post(url, json=fetch_body("f1", f"{fhir}/fhir"), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 200
    assert len(server.cookies) > 7 and set(server.cookies) == {None}  # no state between calls


def test_a_fhir_server_not_on_the_allowlist_is_never_called(
        service: str, keys: Keys, fhir_a: tuple[FhirServer, str],
        fhir_b: tuple[FhirServer, str]) -> None:
    url = f"{service}{SERVICE}"
    a_server, a_url = fhir_a
    b_server, b_url = fhir_b
    a_server.hits.clear()
    b_server.hits.clear()
    host, port = a_url.removeprefix("http://").split(":")
    refused = {
        "another issuer's server": f"{b_url}/fhir",
        "the allowed server, another path": f"{a_url}/admin",
        "a path that only starts like the allowed one": f"{a_url}/fhirx",
        "a dot segment out of the allowed path": f"{a_url}/fhir/..",
        "an encoded dot segment": f"{a_url}/fhir/%2e%2e/admin",
        "user info before the host": f"http://{host}:{port}@127.0.0.1:{b_url.rsplit(':', 1)[1]}"
                                     "/fhir",
        "another scheme": f"https://{host}:{port}/fhir",
        "localhost for 127.0.0.1": f"http://localhost:{port}/fhir",
        "an internal address": "http://127.0.0.1:9/fhir",
    }
    for why, fhir in refused.items():
        r = httpx.post(url, json=fetch_body("f2", fhir), headers=bearer(sign(keys.a, url)))
        assert r.status_code in (400, 412), (why, r.text)
        assert r.json()["error"]["status"] == r.status_code
    assert a_server.hits == [] and b_server.hits == []
    # issuer B may read its own server
    r = httpx.post(url, json=fetch_body("f2", f"{b_url}/fhir"),
                   headers=bearer(sign(keys.b, url, iss=ISS_B, alg="RS384")))
    assert r.status_code == 200 and b_server.hits


@pytest.mark.parametrize(("pid", "says"), [
    ("redirect", "answered 302"),
    ("escape", "outside the allowed server"),
    ("huge", "larger than 100000 bytes"),
    ("deep", "nested more than 64 levels"),
    (".", "outside the allowed server"),
])
def test_a_misbehaving_fhir_server_is_a_412(service: str, keys: Keys, pid: str, says: str,
                                            fhir_a: tuple[FhirServer, str],
                                            fhir_b: tuple[FhirServer, str]) -> None:
    url = f"{service}{SERVICE}"
    a_server, fhir = fhir_a
    fhir_b[0].hits.clear()
    a_server.hits.clear()
    r = httpx.post(url, json=fetch_body(pid, f"{fhir}/fhir"), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 412, r.text
    assert says in r.json()["error"]["message"]
    assert fhir_b[0].hits == []  # the redirect's target was never called
    assert not any(path.startswith("/outside") for path, _, _ in a_server.hits)


# --------------------------------------------------------------------------- #
# Hostile requests: size, depth, time
# --------------------------------------------------------------------------- #
def test_a_body_over_the_limit_is_413(service: str, keys: Keys, rs: cdss.Ruleset) -> None:
    url = f"{service}{SERVICE}"
    big = orjson.dumps(hook_body(rs, "b1", extension={"pad": "x" * 400_000}))
    r = httpx.post(url, content=big, headers=bearer(sign(keys.a, url)))
    assert r.status_code == 413 and r.json()["error"]["status"] == 413

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for _ in range(100):
            yield b" " * 10_000

    r = httpx.post(url, content=chunked(), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 413


def nested(depth: int) -> bytes:
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_json_depth_is_counted_without_parsing() -> None:
    assert json_depth(b"{}") == 1 and json_depth(b"1") == 0
    assert json_depth(nested(64)) == 64
    assert json_depth(b'{"s": "[[[[{{{{", "t": "\\"[[["}') == 1
    assert json_depth(b'[[], [[]], {"a": [{}]}]') == 4
    # deep nesting after many shallow brackets (beyond the first chunk counted),
    # without a run of opening brackets to give it away
    wide = b"[" + b"[]," * 40_000 + b"[[]," * 64 + b"1" + b"]" * 64 + b"]"
    depth = json_depth(wide)
    assert depth == 66 and json_depth(wide) == _true_depth(orjson.loads(wide))
    assert json_too_deep(wide, depth - 1) and not json_too_deep(wide, depth)


def _true_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_true_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_true_depth, value), default=0)
    return 0


_DEEP_JSON = st.recursive(
    st.none() | st.integers(-1000, 1000) | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\a', max_size=4), inner, max_size=3),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(value=_DEEP_JSON, limit=st.integers(1, 12))
def test_depth_checks_agree_with_the_parsed_json(value: Any, limit: int) -> None:
    body = orjson.dumps(value)
    depth = _true_depth(value)
    assert json_depth(body) == depth
    assert json_too_deep(body, limit) is (depth > limit)


def test_a_body_nested_too_deep_is_400_before_parsing(service: str, keys: Keys,
                                                      rs: cdss.Ruleset) -> None:
    url = f"{service}{SERVICE}"
    for depth in (65, 2000):
        r = httpx.post(url, content=nested(depth), headers=bearer(sign(keys.a, url)))
        assert r.status_code == 400
        assert "nested more than 64 levels" in r.json()["error"]["message"]
    r = httpx.post(url, content=nested(64), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 400 and "nested" not in r.json()["error"]["message"]
    body = hook_body(rs, "d1")
    body["prefetch"]["patient"]["extension"] = orjson.loads(nested(70))
    r = httpx.post(url, content=orjson.dumps(body), headers=bearer(sign(keys.a, url)))
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]


def test_an_evaluation_over_its_time_is_503(config_file: Path, keys: Keys, rs: cdss.Ruleset,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def stuck(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=30)
        return {"cards": []}

    monkeypatch.setattr(cdss.service._runtime, "evaluate_request", stuck)
    stack, service_url, _ = start(config_file, limits=Limits(evaluation_timeout_seconds=0.3))
    url = f"{service_url}{SERVICE}"
    try:
        with stack:
            r = httpx.post(url, json=hook_body(rs, "t1"), headers=bearer(sign(keys.a, url)))
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["error"]["status"] == 503
            release.set()
    finally:
        release.set()


def raw_post(service_url: str, token: str, length: int) -> socket.socket:
    """A socket on which the headers of a call with a ``length``-byte body were sent."""
    host, port = service_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = (f"POST {SERVICE} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n")
    sock.sendall(head.encode())
    return sock


def test_a_body_trickling_in_is_cut_off_with_408(config_file: Path, keys: Keys,
                                                 rs: cdss.Ruleset) -> None:
    stack, service_url, _ = start(config_file, limits=Limits(body_timeout_seconds=0.5))
    url = f"{service_url}{SERVICE}"
    body = orjson.dumps(hook_body(rs, "s1", low_k("s1")))
    answer, sent, closed = b"", 0, False
    with stack:
        sock = raw_post(service_url, sign(keys.a, url), len(body))
        began = time.monotonic()
        with contextlib.closing(sock):
            while not closed and time.monotonic() - began < 5:
                if select.select([sock], [], [], 0.05)[0]:  # the service answered
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    answer += chunk
                    closed = not chunk
                elif not answer:  # 5 bytes every 50 ms: never idle, never done in time
                    with contextlib.suppress(OSError):
                        sock.sendall(body[sent:sent + 5])
                        sent += 5
        elapsed = time.monotonic() - began
        # a body sent at once is not affected
        r = httpx.post(url, content=body, headers=bearer(sign(keys.a, url)))
        assert r.status_code == 200, r.text
    head, _, content = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in head.lower() and closed  # and the service hung up
    assert orjson.loads(content) == {"error": {"status": 408, "message": (
        "the request body did not arrive within 0.5 seconds")}}
    assert 0.5 <= elapsed < 3 and sent < len(body) / 2


def test_a_client_leaving_before_its_body_arrived_is_no_failure(
        service: str, keys: Keys, rs: cdss.Ruleset, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss.service")
    url = f"{service}{SERVICE}"
    body = orjson.dumps(hook_body(rs, "g1", low_k("g1")))
    with contextlib.closing(raw_post(service, sign(keys.a, url), len(body))) as sock:
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while not call_lines(caplog) and time.monotonic() < deadline:
        time.sleep(0.01)
    [line] = call_lines(caplog)
    assert line["status"] == 499 and line["error"] == "client disconnected"
    assert line["issuer"] == ISS_A and line["service"] == "plantar-cramps"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert '"failure"' not in caplog.text
    r = httpx.post(url, content=body, headers=bearer(sign(keys.a, url)))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("kind", [ZeroDivisionError, EngineError, SystemExit, KeyboardInterrupt])
def test_a_failing_evaluation_fails_only_its_call(config_file: Path, keys: Keys,
                                                  rs: cdss.Ruleset, kind: type[BaseException],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = cdss.hooks.evaluate_request
    failures = [kind]

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()(f"failed on {NAMED_VALUES[0]} {NAMED_VALUES[2]} 3.137")
        return real(*args, **kwargs)

    monkeypatch.setattr(cdss.service._runtime, "evaluate_request", fails_once)
    stack, service_url, _ = start(config_file)
    url = f"{service_url}{SERVICE}"
    body = hook_body(rs, "pat-e1zq", low_k("pat-e1zq"))
    body["prefetch"]["patient"].update(NAMED)
    with stack, capture_all_logs() as logs:
        r = httpx.post(url, json=body, headers=bearer(sign(keys.a, url)))
        assert r.status_code == 500
        assert r.json() == {"error": {"status": 500,
                                      "message": "internal error; see the service log"}}
        for pid in ("e1", "e2"):  # and the service goes on answering
            r = httpx.post(url, json=hook_body(rs, pid, low_k(pid)),
                           headers=bearer(sign(keys.a, url)))
            assert r.status_code == 200, r.text
            assert r.json()["cards"][0]["summary"] == "Low potassium (hypokalaemia)"
    text = "\n".join(logs.lines)
    assert secrets_in(text, ("e1zq", "3.137", *NAMED_VALUES)) == []
    failures_logged = [orjson.loads(rec.getMessage()) for rec in logs.records
                       if rec.name == "cdss.service" and '"failure"' in rec.getMessage()]
    assert [f["exception"] for f in failures_logged] == [
        f"{kind.__module__}.{kind.__qualname__}"]
    assert any("fails_once" in frame for frame in failures_logged[0]["stack"])
    statuses = [orjson.loads(rec.getMessage())["status"] for rec in logs.records
                if rec.name == "cdss.service" and '"status"' in rec.getMessage()]
    assert statuses == [500, 200, 200]


def test_a_wedged_evaluation_does_not_hold_up_the_next_calls(
        config_file: Path, keys: Keys, rs: cdss.Ruleset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = cdss.hooks.evaluate_request
    wedged = [True]

    def wedged_once(*args: Any, **kwargs: Any) -> Any:
        if wedged:
            wedged.pop()
            release.wait(timeout=30)  # an evaluation that never ends, as far as calls can tell
        return real(*args, **kwargs)

    # A process's first evaluation (models built, the ruleset registered with the
    # engine) can take longer than the short timeout set here: warm up first.
    handle_patient_view(hook_body(rs, "w0", low_k("w0")), rs, as_of=NOW)
    stack, service_url, _ = start(config_file, limits=Limits(evaluation_timeout_seconds=0.3))
    url = f"{service_url}{SERVICE}"
    try:
        with stack, capture_all_logs() as logs:
            monkeypatch.setattr(cdss.service._runtime, "evaluate_request", wedged_once)
            r = httpx.post(url, json=hook_body(rs, "w1"), headers=bearer(sign(keys.a, url)))
            assert r.status_code == 503
            time.sleep(0.1)
            for pid in ("w2", "w3"):
                r = httpx.post(url, json=hook_body(rs, pid, low_k(pid)),
                               headers=bearer(sign(keys.a, url)))
                assert r.status_code == 200, r.text
                assert r.json()["cards"][0]["summary"] == "Low potassium (hypokalaemia)"
            release.set()
    finally:
        release.set()
    stuck = [orjson.loads(rec.getMessage()) for rec in logs.records
             if rec.name == "cdss.service" and "evaluation thread stuck" in rec.getMessage()]
    assert len(stuck) == 1 and stuck[0]["replaced"] is True


# --------------------------------------------------------------------------- #
# Logs: one JSON line per call, no patient data, no tokens
# --------------------------------------------------------------------------- #
class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_all_logs() -> Iterator[Capture]:
    """Every record of every logger, at DEBUG, uvicorn's included (its loggers
    do not propagate)."""
    handler = Capture()
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "cdss"]
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for logger, _ in saved:
        logger.setLevel(logging.DEBUG)
    for name in ("", "uvicorn", "uvicorn.access"):
        logging.getLogger(name).addHandler(handler)
    try:
        yield handler
    finally:
        for name in ("", "uvicorn", "uvicorn.access"):
            logging.getLogger(name).removeHandler(handler)
        for logger, level in saved:
            logger.setLevel(level)


def test_logs_of_a_full_run_hold_no_patient_data(
        config_file: Path, keys: Keys, rs: cdss.Ruleset, fhir_a: tuple[FhirServer, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    pid = "pat-zq81x"
    fhir_a[0].data[pid] = low_k(pid)
    sock = bind("127.0.0.1")
    service_url = base_url(sock)
    config = load_config(config_file, public_url=service_url, environ={})
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, config=config)
    url = f"{service_url}{SERVICE}"
    tokens: list[str] = []

    def token(aud: str = url) -> dict[str, str]:
        tokens.append(sign(keys.a, aud))
        return bearer(tokens[-1])

    with serve_in_background(app, sock=sock, log_level="debug"), \
            capture_all_logs() as logs:
        body = hook_body(rs, pid, low_k(pid))
        body["prefetch"]["patient"].update(NAMED)
        ok = httpx.post(url, json=body, headers=token())
        assert ok.status_code == 200 and "3.137" in ok.text
        fetched = httpx.post(url, json=fetch_body(pid, f"{fhir_a[1]}/fhir"), headers=token())
        assert fetched.status_code == 200, fetched.text
        other = hook_body(rs, pid, low_k(pid))
        other["context"]["patientId"] = "pat-other-zq81x"
        assert httpx.post(url, json=other, headers=token()).status_code == 400
        bad = hook_body(rs, pid)
        bad["prefetch"]["patient"]["birthDate"] = "Theodora"
        assert httpx.post(url, json=bad, headers=token()).status_code == 400
        assert httpx.post(url, json=body, headers=bearer(tokens[0])).status_code == 401
        assert httpx.get(f"{service_url}/cds-services", headers=token(
            f"{service_url}/cds-services")).status_code == 200

        def explode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"failed on {pid} {NAMED_VALUES[0]} 3.137")

        monkeypatch.setattr(cdss.service._runtime, "evaluate_request", explode)
        r = httpx.post(url, json=body, headers=token())
        assert r.status_code == 500 and pid not in r.text and "RuntimeError" not in r.text
    text = "\n".join(logs.lines)
    assert secrets_in(text, (pid, "zq81x", "3.137", "2.113", FHIR_TOKEN, *NAMED_VALUES)) == []
    for jwt_text in tokens:
        assert jwt_text.split(".")[1] not in text and jwt_text.split(".")[2] not in text
    calls = [orjson.loads(r.getMessage()) for r in logs.records
             if r.name == "cdss.service" and '"status"' in r.getMessage()]
    assert [c["status"] for c in calls] == [200, 200, 400, 400, 401, 200, 500]
    first = calls[0]
    assert set(first) == {"time", "event", "service", "hookInstance", "issuer", "status",
                          "duration_ms", "ruleset", "cards"}
    assert first["event"] == "patient-view" and first["service"] == "plantar-cramps"
    assert first["hookInstance"] == body["hookInstance"] and first["issuer"] == ISS_A
    assert first["ruleset"] == SPEC and first["cards"] == len(ok.json()["cards"])
    assert isinstance(first["duration_ms"], float)
    failure = [orjson.loads(r.getMessage()) for r in logs.records
               if r.name == "cdss.service" and '"failure"' in r.getMessage()]
    assert failure and failure[0]["exception"] == "builtins.RuntimeError"
    assert any("explode" in frame for frame in failure[0]["stack"])
    assert not any(r.name.startswith("uvicorn.access") for r in logs.records)


# --------------------------------------------------------------------------- #
# Configuration errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("content", "field", "says"), [
    ({"issuers": [{"issuer": ISS_A, "jwks_url": "https://ehr.example/jwks"}]},
     "public_url", "public URL is not set"),
    ({"public_url": "http://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jwks_url": "https://ehr.example/jwks"}]},
     "public_url", "https"),
    ({"public_url": "https://cds.example.org", "issuers": []}, "issuers", "at least 1"),
    ({"public_url": "https://cds.example.org", "issuers": [{"issuer": ISS_A}]},
     "issuers.0", "give the issuer's keys"),
    ({"public_url": "https://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jwks_url": "https://e/j", "public_key_file": "k.pem"}]},
     "issuers.0", "one key source"),
    ({"public_url": "https://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jwks_url": "https://e/j", "algorithms": ["HS384"]}]},
     "issuers.0.algorithms.0", "RS256"),
    ({"public_url": "https://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jwks_url": "https://e/j",
                   "fhir_servers": ["https://user:pw@fhir.example/r4"]}]},
     "issuers.0.fhir_servers", "not a usable"),
    ({"public_url": "https://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jku": ["http://ehr.example/jwks"]}]},
     "issuers.0.jku", "https"),
    ({"public_url": "https://cds.example.org",
      "issuers": [{"issuer": ISS_A, "jwks_url": "https://e/j"},
                  {"issuer": ISS_A, "jwks_url": "https://e/k"}]}, "(top level)", "twice"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "jwks_url": "https://e/j", "jwks_uri": "https://e/j"}]},
     "issuers.0.jwks_uri", "Extra inputs"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}]},
     "issuers.0", "no usable signature key"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "public_key_file": "missing.pem"}]}, "issuers.0", "cannot read"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "jwks_url": "https://e/j"}], "limits": {"max_json_depth": 4}},
     "limits.max_json_depth", "greater than or equal"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "jwks_url": "https://e/j"}], "timezone": "Mars/Olympus"},
     "timezone", "not a known IANA time zone"),
    ({"public_url": "https://cds.example.org", "issuers": [
        {"issuer": ISS_A, "jwks_url": "https://e/j"}], "intake": "fast"},
     "intake", "'strict' or 'lean'"),
])
def test_configuration_errors_name_the_field(tmp_path: Path, content: dict[str, Any],
                                             field: str, says: str) -> None:
    path = tmp_path / "service.json"
    path.write_bytes(orjson.dumps(content))
    with pytest.raises(ServiceConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.field == field
    assert says in str(caught.value) and str(path) in str(caught.value)


def test_configuration_from_the_environment(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "b.pem").write_bytes(keys.b_pem)
    (tmp_path / "service.yaml").write_text(
        "public_url: https://from-file.example\n"
        "issuers:\n  - issuer: https://ehr-b.example\n    public_key_file: b.pem\n")
    env = {"CDSS_SERVICE_CONFIG": str(tmp_path / "service.yaml")}
    config = load_config(environ=env)
    assert isinstance(config, ServiceConfig)
    assert config.public_url == "https://from-file.example"
    assert config.issuers[0].public_key_file == tmp_path / "b.pem"
    config = load_config(environ={**env, "CDSS_PUBLIC_URL": "https://from-env.example/"})
    assert config is not None and config.public_url == "https://from-env.example"
    assert load_config(environ={}) is None
    (tmp_path / "bad.yaml").write_text("issuers: [\n")
    with pytest.raises(ServiceConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml", environ={})
    (tmp_path / "b.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n"
                                     b"-----END PUBLIC KEY-----\n")
    with pytest.raises(ServiceConfigError, match="not a PEM public key"):
        load_config(environ=env)


@pytest.mark.parametrize(("url", "admitted"), [
    ("https://fhir.example/r4", True),
    ("https://fhir.example/r4/", True),
    ("https://FHIR.example:443/r4/Patient/1", True),
    ("https://fhir.example/r4/Observation?patient=1&code=a|b", True),
    ("https://fhir.example/r4evil", False),
    ("https://fhir.example/r", False),
    ("https://fhir.example/", False),
    ("http://fhir.example/r4", False),
    ("https://fhir.example:8443/r4", False),
    ("https://fhir.example.evil.test/r4", False),
    ("https://evil.test/fhir.example/r4", False),
    ("https://fhir.example@evil.test/r4", False),
    ("https://evil.test@fhir.example/r4", False),
    ("https://fhir.example/r4/../admin", False),
    ("https://fhir.example/r4/%2E%2E/admin", False),
    ("https://fhir.example/r4/a%2fb", False),
    ("https://fhir.example/r4\\..\\admin", False),
    ("https://fhir.example/r4#x", False),
    ("https://fhir.exämple/r4", False),
    ("ftp://fhir.example/r4", False),
    ("https://fhir.example:99999/r4", False),
    ("//fhir.example/r4", False),
])
def test_allowed_server_compares_scheme_host_port_and_path(url: str, admitted: bool) -> None:
    assert AllowedServer.parse("https://fhir.example/r4").admits(url) is admitted


# --------------------------------------------------------------------------- #
# Random bodies and headers never get a 500
# --------------------------------------------------------------------------- #
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=16)
_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_HEADER_NAMES = st.sampled_from(["Content-Type", "Accept", "Origin", "X-Forwarded-For",
                                 "X-Forwarded-Host", "Cookie", "Accept-Encoding", "X-Random"])


@functools.lru_cache(maxsize=1)
def _ruleset() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


@st.composite
def hostile_calls(draw: st.DrawFn) -> tuple[str, str, bytes, str, dict[str, str]]:
    method = draw(st.sampled_from(["POST"] * 18 + ["GET", "PUT"]))
    path = draw(st.sampled_from([SERVICE] * 6 + [f"{SERVICE}/feedback", "/cds-services",
                                                 "/cds-services/..%2f",
                                                 "/cds-services/" + "x" * 300]))
    pid = draw(st.sampled_from(["h1", "h1", "h-2.x", "", "..", "a" * 65, "Theodora Ω"]))

    def usually(valid: Any, other: st.SearchStrategy[Any]) -> Any:
        """``valid`` four times in five, else a value of ``other``."""
        return valid if draw(st.sampled_from([True] * 4 + [False])) else draw(other)

    request: dict[str, Any] = {
        "hook": usually("patient-view", st.sampled_from(["order-select", ""]) | _ASCII),
        "hookInstance": usually(str(uuid.uuid4()), st.sampled_from(["nope", ""]) | _JSON),
        "context": usually({"patientId": pid, "userId": "Practitioner/1"},
                           st.sampled_from([{}, {"patientId": 1}]) | _JSON),
    }
    if usually(True, st.booleans()):
        complete = full_prefetch(_ruleset(), pid, low_k(pid))
        request["prefetch"] = draw(st.sampled_from([
            complete, complete, {"patient": patient(pid) if pid else None},
            {"patient": None, "labs": None}, {"labs": bundle(*low_k(pid), kind="searchset")}])
            | st.dictionaries(st.sampled_from(sorted(complete)), _JSON, max_size=3).map(
                lambda changed: {**complete, **changed})
            | _JSON)
    if not usually(True, st.just(False)):
        request["fhirServer"] = draw(st.sampled_from(
            ["http://127.0.0.1:9/fhir", "file:///etc/passwd", "https://fhir.example/r4"])
            | _ASCII)
        request["fhirAuthorization"] = draw(_JSON | st.just(
            {"access_token": "t", "token_type": "Bearer", "expires_in": 1, "scope": "s",
             "subject": "s"}))
    body = draw(st.one_of(
        st.just(orjson.dumps(request)), st.just(orjson.dumps(request)),
        st.just(orjson.dumps(request)),
        st.binary(max_size=300),
        _JSON.map(orjson.dumps),
        st.just(orjson.dumps(request)).map(lambda b: b[: max(1, len(b) // 2)]),
        st.integers(60, 200).map(nested),
    ))
    auth = draw(st.sampled_from(["valid", "valid", "valid", "none", "junk"]))
    junk = draw(_ASCII.map(str.strip))
    headers = draw(st.dictionaries(_HEADER_NAMES, _ASCII.map(str.strip), max_size=4))
    return method, path, body, auth if auth != "junk" else f"junk:{junk}", headers


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(call=hostile_calls())
def test_random_bodies_and_headers_never_get_a_500(service: str, keys: Keys,
                                                   call: tuple[str, str, bytes, str,
                                                               dict[str, str]]) -> None:
    method, path, body, auth, headers = call
    url = f"{service}{path}"
    if auth == "valid":
        headers["Authorization"] = f"Bearer {sign(keys.a, url)}"
    elif auth.startswith("junk:"):
        headers["Authorization"] = auth.removeprefix("junk:")
    r = httpx.request(method, url, content=body, headers=headers, timeout=30)
    event(f"status {r.status_code}")
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["status"] == r.status_code
        assert "Traceback" not in r.text


def test_the_configuration_names_the_sites_concept_maps_and_time_zone(
        tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "b.pem").write_bytes(keys.b_pem)
    (tmp_path / "service.yaml").write_text(
        "public_url: https://cds.example.org\n"
        "issuers:\n  - issuer: https://ehr-b.example\n    public_key_file: b.pem\n"
        "concept_maps: [site/map.yaml]\ntimezone: Europe/Berlin\n")
    config = load_config(tmp_path / "service.yaml", environ={})
    assert config is not None
    assert config.concept_maps == (str(tmp_path / "site" / "map.yaml"),)
    assert config.timezone == "Europe/Berlin"
    assert config.intake == "strict"  # the default
    (tmp_path / "lean.yaml").write_text(
        (tmp_path / "service.yaml").read_text() + "intake: lean\n")
    lean = load_config(tmp_path / "lean.yaml", environ={})
    assert lean is not None and lean.intake == "lean"
