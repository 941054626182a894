"""The CDS Hooks 2.0 HTTP service (extra ``service``: starlette, uvicorn, httpx, PyJWT).

:func:`create_app` returns a Starlette application:

``GET /cds-services``
    the discovery document, one ``patient-view`` service per ruleset;
``POST /cds-services/{id}``
    a ``patient-view`` call, answered with cards;
``POST /cds-services/{id}/feedback``
    feedback on cards (accepted / overridden), validated, logged, and passed
    to an optional callback.

Errors are JSON (``{"error": {"status": ..., "message": ...}}``) and never
carry a traceback: 400 for a malformed request or unusable patient data, 401
when client authentication is configured and fails, 404 for an unknown
service, 412 when the patient's data can be had neither from ``prefetch`` nor
from ``fhirServer`` (as the specification says), 500 for anything else (the
details go to the log only). CORS headers allow browser-based CDS clients.

Data the request lacks is fetched from the client's FHIR server on the event
loop (httpx, with a timeout), so slow servers do not hold up other calls;
evaluation runs in one dedicated worker thread, because durable-rules is not
thread-safe and cannot run two patients at once anyway.

When ``trusted_clients`` is given, every call must carry the CDS client's
signed JWT (``Authorization: Bearer``), as the specification's "Trusting CDS
Clients" section describes: asymmetric algorithms only, the issuer on the
allow list, ``aud`` the URL of the endpoint called, ``exp``, ``iat`` and
``jti`` required, and a ``jti`` seen before refused as a replay.

This module is imported only when the service is used: ``import cdss`` never
imports starlette, uvicorn, httpx or PyJWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cdss.errors import CDSSError, InvalidArgument
from cdss.outputs.cds_hooks import (
    Fetch,
    HookRequest,
    HookRequestError,
    collect_pages_async,
    discovery,
    evaluate_request,
    fetch_headers,
    missing_prefetch,
    read_fhir_json,
    service_ids,
    validate_feedback,
    validate_request,
)
from cdss.rulesets import Ruleset, load_ruleset

__all__ = ["ASYMMETRIC_ALGORITHMS", "ClientAuth", "create_app", "serve_in_background"]

log = logging.getLogger("cdss.service")

#: JWT algorithms a CDS client may sign with (the specification forbids none and HMAC).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
_CORS_EXPOSE = ["Origin", "Accept", "Content-Location", "Location", "X-Requested-With"]


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": {"status": status, "message": message}}, status, headers)


# --------------------------------------------------------------------------- #
# Authenticating CDS clients (JWT)
# --------------------------------------------------------------------------- #
class ClientAuth:
    """Checks the JWT a CDS client sends with every call.

    ``trusted`` maps each trusted issuer (``iss``) to its public key: PEM text
    or bytes, a key object of ``cryptography``, a JWK (dict) or a JWK Set
    (``{"keys": [...]}``, the key chosen by the JWT's ``kid``).
    ``public_base_url`` is the service's base URL as clients call it (behind a
    proxy it differs from what the server sees); ``aud`` must be that base
    plus the path called. ``leeway`` is the clock skew allowed, in seconds.
    """

    def __init__(self, trusted: Mapping[str, Any], *, public_base_url: str | None = None,
                 leeway: float = 30.0) -> None:
        import jwt

        if not trusted:
            raise InvalidArgument("trusted_clients must name at least one issuer")
        self._jwt = jwt
        self.keys: dict[str, Any] = {}
        for issuer, key in trusted.items():
            if isinstance(key, Mapping) and "keys" in key:
                try:
                    self.keys[issuer] = jwt.PyJWKSet.from_dict(dict(key))
                except jwt.PyJWTError as exc:
                    raise InvalidArgument(
                        f"issuer {issuer!r}: not a usable JWK Set: {exc}") from None
            elif isinstance(key, Mapping):
                try:
                    self.keys[issuer] = jwt.PyJWK.from_dict(dict(key))
                except jwt.PyJWTError as exc:
                    raise InvalidArgument(f"issuer {issuer!r}: not a usable JWK: {exc}") from None
            else:
                self.keys[issuer] = key
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.leeway = leeway
        self._seen: dict[tuple[str, str], float] = {}

    def _key(self, issuer: str, kid: str | None) -> Any:
        key = self.keys[issuer]
        if isinstance(key, self._jwt.PyJWKSet):
            for jwk in key.keys:
                if jwk.key_id == kid:
                    return jwk.key
            raise HookRequestError(f"no key {kid!r} of issuer {issuer!r}", status=401)
        if isinstance(key, self._jwt.PyJWK):
            return key.key
        return key

    def audience(self, request: Request) -> str:
        base = self.public_base_url or f"{request.url.scheme}://{request.url.netloc}"
        return base + request.url.path.rstrip("/")

    def check(self, request: Request) -> None:
        """Raise :class:`HookRequestError` 401 unless ``request`` carries a
        valid JWT of a trusted client."""
        jwt = self._jwt
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HookRequestError("a signed JWT is required: Authorization: Bearer <JWT>",
                                   status=401)
        token = token.strip()
        try:
            head = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise HookRequestError(f"malformed JWT: {exc}", status=401) from None
        alg = head.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise HookRequestError(f"JWT algorithm {alg!r} is not accepted; use an "
                                   "asymmetric one such as ES384 or RS384", status=401)
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self.keys:
            raise HookRequestError(f"JWT issuer {issuer!r} is not trusted", status=401)
        try:
            verified = jwt.decode(
                token, self._key(issuer, head.get("kid")), algorithms=[alg],
                audience=self.audience(request), issuer=issuer, leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.PyJWTError as exc:
            raise HookRequestError(f"JWT rejected: {exc}", status=401) from None
        now = time.time()
        self._seen = {k: exp for k, exp in self._seen.items() if exp + self.leeway >= now}
        jti = (issuer, str(verified["jti"]))
        if jti in self._seen:
            raise HookRequestError("JWT jti was used before (replay)", status=401)
        self._seen[jti] = float(verified["exp"])


# --------------------------------------------------------------------------- #
# The application
# --------------------------------------------------------------------------- #
class _Runtime:
    """What the app holds between calls: the evaluation thread and an HTTP client."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.executor: ThreadPoolExecutor | None = None
        self.client: httpx.AsyncClient | None = None

    def evaluator(self) -> ThreadPoolExecutor:
        if self.executor is None:
            # One thread: durable-rules is not thread-safe (cdss.engine also locks).
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdss-eval")
        return self.executor

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None


def create_app(
    *,
    rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset] = ("plantar-cramps",),
    paths: Sequence[str | Path] | None = None,
    clock: Callable[[], datetime] | None = None,
    fetch: Fetch | None = None,
    fetch_timeout: float = 10.0,
    trusted_clients: Mapping[str, Any] | None = None,
    public_base_url: str | None = None,
    allowed_fhir_servers: Sequence[str] | None = None,
    cors_origins: Sequence[str] = ("*",),
    on_feedback: Callable[[str, dict[str, Any]], None] | None = None,
    max_body_bytes: int = 10_000_000,
) -> Starlette:
    """The CDS Hooks service as a Starlette app.

    ``rulesets``: ruleset specs (``id`` or ``id@version``) or loaded rulesets,
    one service each (or a mapping of service id to ruleset); ``paths`` adds
    ruleset folders. ``clock`` gives the evaluation time (default: now).
    ``fetch`` replaces the httpx client used to read the CDS client's FHIR
    server (a blocking ``fetch(url, headers) -> JSON``, run off the event loop);
    ``fetch_timeout`` is httpx's timeout in seconds. ``trusted_clients``
    turns on JWT authentication of CDS clients (see :class:`ClientAuth`;
    ``public_base_url`` is the base URL clients use). ``allowed_fhir_servers``
    restricts the ``fhirServer`` URLs the service will call (prefixes).
    ``on_feedback(service_id, entry)`` receives each feedback entry.
    Rulesets are loaded here, so a bad one fails at start, not at a call.
    """
    if isinstance(rulesets, Mapping):
        services = service_ids(rulesets)
    else:
        if isinstance(rulesets, (str, Ruleset)):
            rulesets = [rulesets]
        loaded = [r if isinstance(r, Ruleset) else load_ruleset(r, paths=paths)
                  for r in rulesets]
        services = service_ids(loaded)
    if not services:
        raise InvalidArgument("the service needs at least one ruleset")
    document = discovery(services)
    auth = ClientAuth(trusted_clients, public_base_url=public_base_url) \
        if trusted_clients else None
    allowed = tuple(s.rstrip("/") for s in allowed_fhir_servers) \
        if allowed_fhir_servers is not None else None
    runtime = _Runtime(fetch_timeout)
    feedback_log: deque[dict[str, Any]] = deque(maxlen=1000)

    def authenticate(request: Request) -> None:
        if auth is not None:
            auth.check(request)

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise HookRequestError(f"the request body is larger than {max_body_bytes} bytes",
                                   status=413)
        body = await request.body()
        if len(body) > max_body_bytes:
            raise HookRequestError(f"the request body is larger than {max_body_bytes} bytes",
                                   status=413)
        return body

    def ruleset_of(request: Request) -> tuple[str, Ruleset]:
        sid = request.path_params["service_id"]
        rs = services.get(sid)
        if rs is None:
            raise HookRequestError(f"no CDS service {sid!r}; see GET /cds-services", status=404)
        return sid, rs

    async def fetch_missing(req: HookRequest, rs: Ruleset) -> dict[str, Any]:
        missing = missing_prefetch(req, rs)
        if not missing:
            return {}
        assert req.fhirServer is not None  # missing_prefetch raised otherwise
        base = req.fhirServer
        if allowed is not None and not any(base == a or base.startswith(a + "/")
                                           for a in allowed):
            raise HookRequestError(f"fhirServer {base} is not one this service may call",
                                   status=412)
        headers = fetch_headers(req)
        if fetch is not None:
            async def get(url: str, hdrs: Mapping[str, str]) -> Any:
                assert fetch is not None
                return await run_in_threadpool(fetch, url, hdrs)
        else:
            client = runtime.http()

            async def get(url: str, hdrs: Mapping[str, str]) -> Any:
                try:
                    response = await client.get(url, headers=dict(hdrs))
                except httpx.HTTPError as exc:
                    raise HookRequestError(
                        f"the FHIR server could not be read: {type(exc).__name__}",
                        status=412) from None
                return read_fhir_json(response.status_code, response.content, url)

        keys = list(missing)
        pages = await asyncio.gather(*(collect_pages_async(missing[k], headers, get, base)
                                       for k in keys))
        return dict(zip(keys, pages, strict=True))

    async def list_services(request: Request) -> Response:
        authenticate(request)
        return _json(document)

    async def call_service(request: Request) -> Response:
        authenticate(request)
        sid, rs = ruleset_of(request)
        req = validate_request(await body_of(request))
        fetched = await fetch_missing(req, rs)
        as_of = clock() if clock is not None else None
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            runtime.evaluator(),
            functools.partial(evaluate_request, req, rs, fetched=fetched, as_of=as_of))
        log.info("service %s hookInstance %s: %d card(s)", sid, req.hookInstance,
                 len(result["cards"]))
        return _json(result)

    async def feedback(request: Request) -> Response:
        authenticate(request)
        sid, _ = ruleset_of(request)
        body = validate_feedback(await body_of(request))
        for entry in body.feedback:
            record = entry.model_dump(mode="json", exclude_none=True)
            accepted = [s.id for s in entry.acceptedSuggestions or []]
            reason = entry.overrideReason.reason.code \
                if entry.overrideReason and entry.overrideReason.reason else None
            log.info("feedback service %s card %s: %s%s%s", sid, entry.card, entry.outcome,
                     f" suggestions {accepted}" if accepted else "",
                     f" reason {reason}" if reason else "")
            feedback_log.append({"service": sid, **record})
            if on_feedback is not None:
                try:
                    on_feedback(sid, record)
                except Exception:
                    log.exception("feedback callback failed for card %s", entry.card)
                    raise HookRequestError("feedback could not be stored", status=500) from None
        return _json({"received": len(body.feedback)})

    async def on_hook_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HookRequestError)
        if exc.status >= 500:
            return _error(exc.status, exc.reason)
        log.info("%s %s: %d %s", request.method, request.url.path, exc.status, exc.reason)
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} \
            if exc.status == 401 else None
        return _error(exc.status, exc.reason, headers)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, f"no such endpoint: {request.url.path}")
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def on_cdss_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return _error(500, "the service could not evaluate this request; see its log")

    async def on_any_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error; see the service log")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.evaluator()
        try:
            yield
        finally:
            await runtime.close()

    app = Starlette(
        routes=[
            Route("/cds-services", list_services, methods=["GET"]),
            Route("/cds-services/{service_id}", call_service, methods=["POST"]),
            Route("/cds-services/{service_id}/feedback", feedback, methods=["POST"]),
        ],
        middleware=[Middleware(
            CORSMiddleware, allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=_CORS_EXPOSE, allow_credentials=False, max_age=600)],
        exception_handlers={
            HookRequestError: on_hook_error,
            HTTPException: on_http_error,
            CDSSError: on_cdss_error,
            Exception: on_any_error,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.feedback = feedback_log
    return app


# --------------------------------------------------------------------------- #
# Running the app in a background thread (tests, benchmarks, embedding)
# --------------------------------------------------------------------------- #
@contextlib.contextmanager
def serve_in_background(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                        log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL.

    The listening socket is bound (``port`` 0: a free port) before the thread
    starts and the call returns once the server has started, so the URL can
    be used at once. The server stops when the ``with`` block ends.
    """
    import uvicorn

    ready = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                ready.set()

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
    # without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    bound = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                    lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"cdss-serve-{bound}", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout=60) or not server.started:
            raise CDSSError("the CDS Hooks service did not start")
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
