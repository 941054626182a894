"""The CDS Hooks 2.0 HTTP service (extra ``service``: starlette, uvicorn, httpx, PyJWT).

:func:`create_app` returns a Starlette application:

``GET /cds-services``
    the discovery document, one ``patient-view`` service per ruleset;
``POST /cds-services/{id}``
    a ``patient-view`` call, answered with cards;
``POST /cds-services/{id}/feedback``
    feedback on cards (accepted / overridden), validated, logged as counts,
    and passed to an optional callback.

**Who may call.** With a :class:`~cdss.service.ServiceConfig` every
call must carry the CDS client's signed JWT, in exactly one ``Authorization``
header, checked as the specification's "Trusting CDS Clients" section says
(see :mod:`cdss.service._auth`); any failure is a 401 with one generic message,
the reason going to the log only.
Without a configuration the app is only created when ``insecure_dev=True``,
and then it logs a warning on every call.

**What the service reads.** Data missing from ``prefetch`` is fetched from
``fhirServer`` only when that server is one configured for the calling
issuer (scheme, host, port and path prefix compared exactly; every URL
fetched, next pages included, is checked again), without following
redirects, with a timeout per request and for all reads of a call, and a cap
on the size of each answer (read as a stream and abandoned past the cap).

**What a call may cost.** A body larger than ``max_body_bytes`` is a 413
(read as a stream, never buffered beyond the limit), and one that has not
all arrived ``body_timeout_seconds`` after its reading began is a 408 (the
connection is then closed); arrays and objects
nested deeper than ``max_json_depth`` are a 400 before the JSON is parsed
(bodies over 256 KB are checked and validated in a worker thread, so that
they do not hold up the event loop);
an evaluation that does not finish within ``evaluation_timeout_seconds``
is a 503. Errors are JSON (``{"error": {"status": ..., "message": ...}}``)
and never carry a traceback; unexpected failures are a 500 whose details
(exception type and stack, no message) go to the log only. An evaluation
that fails in any way, even with ``SystemExit``, fails its call only.

**Logs.** One JSON line per call on the ``cdss.service`` logger: event,
service id, hook instance, issuer, status, duration, ruleset ``id@version``,
number of cards, and for refusals a category (for 401 the internal reason).
A client that disconnects before its body has arrived is logged with status
499 and ``"error": "client disconnected"`` at INFO: it is not a failure.
No patient data, no tokens, no request or error messages. The ``httpx`` and
``httpcore`` loggers, which would log the URLs (patient ids) of FHIR reads,
are set to WARNING when they are not configured.

Data is fetched on the event loop (httpx), so slow servers do not hold up
other calls; evaluation runs in one dedicated worker thread, because
durable-rules is not thread-safe. When an evaluation is still running after
its call has timed out, the next call gets a new thread (a few at most are
left behind), so that one wedged evaluation does not stop the service.

This module is imported only when the service is used: ``import cdss`` never
imports starlette, uvicorn, httpx or PyJWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.cookiejar
import logging
import queue
import re
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from cdss.errors import (
    AuthenticationFailed,
    CDSSError,
    HookRequestError,
    InvalidArgument,
    ReplayCacheFull,
    ServiceConfigError,
)
from cdss.hooks import (
    FeedbackRequest,
    Fetch,
    HookRequest,
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
from cdss.intake import zone
from cdss.rulesets import Ruleset, load_ruleset
from cdss.service._auth import ClientAuthenticator
from cdss.service._config import (
    ASYMMETRIC_ALGORITHMS,
    AllowedServer,
    Limits,
    ServiceConfig,
    load_config,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "AUTH_FAILED",
    "base_url",
    "bind",
    "create_app",
    "disable_access_log",
    "json_depth",
    "json_too_deep",
    "serve_in_background",
]

log = logging.getLogger("cdss.service")

#: The one message every refused token gets (details go to the log only).
AUTH_FAILED = "authentication failed"
_CORS_EXPOSE = ["Origin", "Accept", "Content-Location", "Location", "X-Requested-With"]
_INSECURE = "unauthenticated call: the service runs with --insecure-dev"
_INTERNAL = "internal error; see the service log"
_CATEGORY = {400: "bad request", 401: "authentication", 404: "unknown service",
             405: "method not allowed", 408: "body too slow", 412: "data unavailable",
             413: "body too large", 500: "internal error", 503: "unavailable"}
#: Evaluation threads left running past their timeout at most; past that, no new one.
_MAX_STUCK = 2


class _HTTPError(Exception):
    """An answer about the call rather than its content (408, 413, 500, 503),
    which :class:`HookRequestError` (400, 404, 412) is not for: its ``status``,
    the ``message`` the client gets, and extra ``headers``."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": {"status": status, "message": message}}, status, headers)


# --------------------------------------------------------------------------- #
# Request bodies: size and depth before parsing
# --------------------------------------------------------------------------- #
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_CHUNK = 1 << 16
#: Bodies larger than this are checked and validated in a worker thread, off the event loop.
_LARGE_BODY = 256 * 1024
_STEP = [0] * 256
_STEP[ord("[")] = 1
_STEP[ord("]")] = -1


def _brackets(body: bytes) -> bytes:
    """The brackets of JSON text outside its strings, ``{}`` written as ``[]``."""
    return _STRING.sub(b"", body).translate(_SQUARE, _NOT_BRACKETS)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text ``body``
    (``1`` for ``{}``), counted on the bytes without parsing them: brackets
    inside strings do not count. For text that is not JSON the count is an
    estimate; the parser rejects such text anyway. (The service uses the
    faster :func:`json_too_deep`.)"""
    return max(accumulate(map(_STEP.__getitem__, _brackets(body))), default=0)


def json_too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in JSON text ``body`` nest deeper than
    ``limit`` (as :func:`json_depth` counts), stopping as soon as it is
    known: a run of ``limit + 1`` opening brackets settles it at once;
    otherwise the brackets are counted in chunks, leaving at the first too deep."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # too few brackets to nest that deep
    brackets = _brackets(body)
    if b"[" * (limit + 1) in brackets:
        return True
    level = 0
    for start in range(0, len(brackets), _CHUNK):
        levels = list(accumulate(map(_STEP.__getitem__, brackets[start:start + _CHUNK]),
                                 initial=level))
        if max(levels) > limit:
            return True
        level = levels[-1]
    return False


def _check_depth(body: bytes, limit: int, what: str, status: int = 400) -> None:
    if json_too_deep(body, limit):
        raise HookRequestError(f"the {what} is nested more than {limit} levels deep",
                               status=status)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, read as a stream: 413 past ``limit`` bytes, 408 (and the
    connection closed) when it has not all arrived within ``timeout`` seconds,
    however steadily it trickles in. :class:`ClientDisconnect` when the
    client leaves first."""
    too_large = _HTTPError(413, f"the request body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HookRequestError("the Content-Length header is not a number")
        if int(declared) > limit:
            raise too_large

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout=timeout)
    except asyncio.TimeoutError:
        raise _HTTPError(408, f"the request body did not arrive within {timeout:g} seconds",
                         {"Connection": "close"}) from None


# --------------------------------------------------------------------------- #
# Logging without patient data
# --------------------------------------------------------------------------- #
def _emit(level: int, record: Mapping[str, Any]) -> None:
    line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
    log.log(level, orjson.dumps(line).decode())


def _log_failure(exc: BaseException, event: str) -> None:
    """The type and stack of an unexpected failure; never its message, which
    may quote patient data."""
    stack = [f"{frame.filename}:{frame.lineno} in {frame.name}"
             for frame in traceback.extract_tb(exc.__traceback__)]
    _emit(logging.ERROR, {"event": "failure", "during": event,
                          "exception": f"{type(exc).__module__}.{type(exc).__qualname__}",
                          "stack": stack[-12:]})


class _NoAccessLog(logging.Filter):
    """Drops uvicorn's access log records (the request line may carry a query
    string a client filled with patient data); the per-call JSON line replaces it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def disable_access_log() -> None:
    """Turn uvicorn's access log off for good. ``access_log=False`` is not
    enough: uvicorn writes access lines whenever its access logger has a
    handler, which any logging configuration may add."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoAccessLog) for f in logger.filters):
        logger.addFilter(_NoAccessLog())


def _quiet_http_loggers() -> None:
    # httpx logs every request's URL at INFO, and FHIR search URLs name the patient.
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


# --------------------------------------------------------------------------- #
# The application
# --------------------------------------------------------------------------- #
def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: no state may pass between calls."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(
        allowed_domains=[]))


def _evaluate_in_thread(req: HookRequest, rs: Ruleset, fetched: dict[str, Any],
                        as_of: datetime | None, timezone_name: str = "UTC") -> Any:
    """:func:`evaluate_request`, in the evaluation thread. A failure of any kind
    (a bug, or a ``SystemExit`` or ``KeyboardInterrupt`` from a library, which
    would stop the event loop) is logged without its message and becomes a
    500 for this call only; a :class:`HookRequestError` (unusable data) stays one."""
    try:
        return evaluate_request(req, rs, fetched=fetched, as_of=as_of, timezone=timezone_name)
    except HookRequestError:
        raise
    except BaseException as exc:
        _log_failure(exc, "evaluation")
        raise _HTTPError(500, _INTERNAL) from None


class _Worker:
    """One evaluation thread and its queue of jobs, and since when
    (``time.monotonic()``) it has been running its current job (``None``:
    idle). A daemon thread, so that one left stuck does not hold up the
    process's exit; it survives whatever a job raises."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        self.since: float | None = None
        self.reported: float | None = None  # the ``since`` of the job last logged as stuck
        threading.Thread(target=self._serve, name="cdss-eval", daemon=True).start()

    def submit(self, job: Callable[[], Any]) -> asyncio.Future[Any]:
        future: Future[Any] = Future()
        self.jobs.put((future, job))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        """End the thread once it has run the jobs it holds."""
        self.jobs.put(None)

    def _serve(self) -> None:
        while (item := self.jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue  # its call stopped waiting (a 503)
            self.since = time.monotonic()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self.since = None

    def overran(self, timeout: float) -> float | None:
        """When the job it runs began, if that was more than ``timeout`` seconds ago."""
        since = self.since
        return since if since is not None and time.monotonic() - since > timeout else None


class _Runtime:
    """What the app holds between calls: the evaluation thread (one:
    durable-rules is not thread-safe, and cdss.engine also locks) and an HTTP client."""

    def __init__(self, timeout: float, evaluation_timeout: float) -> None:
        self.timeout = timeout
        self.evaluation_timeout = evaluation_timeout
        self.current: _Worker | None = None
        self.stuck: list[_Worker] = []
        self.client: httpx.AsyncClient | None = None

    def worker(self) -> _Worker:
        """The evaluation thread. One still running a job begun longer ago than
        the evaluation timeout (whose call has had its 503) is wedged or about
        to be wasted: it is left to finish, and a new thread takes the next
        calls, unless ``_MAX_STUCK`` threads are left behind already."""
        current = self.current
        if current is None:
            current = self.current = _Worker()
            return current
        since = current.overran(self.evaluation_timeout)
        if since is None:
            return current
        self.stuck = [w for w in self.stuck if w.since is not None]
        replace = len(self.stuck) < _MAX_STUCK
        if replace or current.reported != since:
            current.reported = since
            _emit(logging.ERROR, {"event": "evaluation thread stuck", "replaced": replace,
                                  "stuck_threads": len(self.stuck) + 1})
        if replace:
            current.stop()
            self.stuck.append(current)
            current = self.current = _Worker()
        return current

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False,
                                            cookies=_no_cookies())
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        for worker in (self.current, *self.stuck):
            if worker is not None:
                worker.stop()
        self.current = None
        self.stuck = []


class _Caller:
    """Who is calling: a trusted issuer (and the FHIR servers it allows), or an
    unauthenticated caller of an ``--insecure-dev`` service."""

    def __init__(self, issuer: str | None, servers: Sequence[AllowedServer] | None) -> None:
        self.issuer = issuer
        self.servers = tuple(servers) if servers is not None else None

    def may_read(self, url: str) -> bool:
        return self.servers is None or any(s.admits(url) for s in self.servers)


def _services(rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset],
              paths: Sequence[str | Path] | None,
              concept_maps: Sequence[str | Path] = ()) -> dict[str, Ruleset]:
    if isinstance(rulesets, Mapping):
        return service_ids(rulesets)
    if isinstance(rulesets, (str, Ruleset)):
        rulesets = [rulesets]
    return service_ids([r if isinstance(r, Ruleset)
                        else load_ruleset(r, paths=paths, concept_maps=concept_maps)
                        for r in rulesets])


def create_app(
    *,
    rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset] = ("plantar-cramps",),
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
    timezone: str | None = None,
    config: ServiceConfig | str | Path | None = None,
    insecure_dev: bool = False,
    allowed_fhir_servers: Sequence[str] | None = None,
    limits: Limits | None = None,
    clock: Callable[[], datetime] | None = None,
    fetch: Fetch | None = None,
    cors_origins: Sequence[str] = ("*",),
    on_feedback: Callable[[str, dict[str, Any]], None] | None = None,
) -> Starlette:
    """The CDS Hooks service as a Starlette app.

    ``rulesets``: ruleset specs (``id`` or ``id@version``) or loaded rulesets,
    one service each (or a mapping of service id to ruleset); ``paths`` adds
    ruleset folders and ``concept_maps`` a site's code maps to the rulesets
    named by spec (after the configuration's). Rulesets are loaded here, so a
    bad one fails at start. ``timezone`` (IANA; default the configuration's,
    else UTC) is the zone of times an EHR sends without one.

    ``config`` (a :class:`~cdss.service.ServiceConfig` or the path of
    its file) names the trusted CDS clients, their keys and FHIR servers, and
    the service's public URL; every call must then carry a valid JWT. Without
    it, ``insecure_dev=True`` is required: no authentication, a warning logged
    on every call, and FHIR reads limited to ``allowed_fhir_servers`` (base
    URLs; ``None``: any). :class:`~cdss.errors.ServiceConfigError`
    when neither or both are given.

    ``limits`` overrides the configuration's limits. ``clock`` gives the
    evaluation time (default: now). ``fetch`` replaces the httpx client used
    to read FHIR servers (a blocking ``fetch(url, headers) -> JSON``, run off
    the event loop; the allow-list still applies). ``on_feedback(service_id,
    entry)`` receives each feedback entry.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config)
    if config is None and not insecure_dev:
        raise ServiceConfigError(
            "the service has no configuration of trusted CDS clients: give a configuration "
            "file (--config or CDSS_SERVICE_CONFIG), or run an unauthenticated local demo "
            "with --insecure-dev")
    if config is not None and insecure_dev:
        raise ServiceConfigError("give a configuration or insecure_dev, not both")
    if config is not None and allowed_fhir_servers is not None:
        raise ServiceConfigError("with a configuration, FHIR servers are allowed per issuer "
                                 "(issuers[].fhir_servers), not with allowed_fhir_servers")
    try:
        dev_servers = None if allowed_fhir_servers is None else \
            [AllowedServer.parse(u) for u in allowed_fhir_servers]
    except ValueError as exc:
        raise ServiceConfigError(str(exc), field="allowed_fhir_servers") from None
    if config is not None:
        concept_maps = (*config.concept_maps, *concept_maps)
    zone_name = timezone or (config.timezone if config is not None else "UTC")
    zone(zone_name)  # a bad zone fails at start
    services = _services(rulesets, paths, concept_maps)
    if not services:
        raise InvalidArgument("the service needs at least one ruleset")
    limit = limits or (config.limits if config is not None else Limits())
    document = discovery(services)
    runtime = _Runtime(limit.fhir_timeout_seconds, limit.evaluation_timeout_seconds)
    authenticator = ClientAuthenticator(config, runtime.http) if config is not None else None
    servers = {i.issuer: i.allowed_servers for i in config.issuers} if config else {}
    feedback_log: deque[dict[str, Any]] = deque(maxlen=1000)
    _quiet_http_loggers()

    async def caller_of(request: Request, path: str) -> _Caller:
        if authenticator is None:
            return _Caller(None, dev_servers)
        values = request.headers.getlist("authorization")
        if len(values) > 1:  # which one a proxy or a client library would use is anyone's guess
            raise AuthenticationFailed("more than one Authorization header")
        issuer = await authenticator.authenticate(values[0] if values else None, path)
        return _Caller(issuer.issuer, servers[issuer.issuer])

    def ruleset_of(request: Request, record: dict[str, Any]) -> tuple[str, Ruleset]:
        sid = request.path_params["service_id"]
        rs = services.get(sid)
        if rs is None:
            raise HookRequestError(f"no CDS service {sid!r}; see GET /cds-services", status=404)
        record["service"], record["ruleset"] = sid, rs.spec
        return sid, rs

    async def parsed(request: Request, what: str, validate: Callable[[bytes], Any]) -> Any:
        """The body read within the size limit, its depth checked before parsing,
        then validated; large bodies are handled in a worker thread."""
        body = await _read_body(request, limit.max_body_bytes, limit.body_timeout_seconds)

        def check_and_validate() -> Any:
            _check_depth(body, limit.max_json_depth, what)
            return validate(body)

        if len(body) > _LARGE_BODY:
            return await run_in_threadpool(check_and_validate)
        return check_and_validate()

    async def read(client: httpx.AsyncClient, url: str, hdrs: Mapping[str, str]) -> Any:
        cap = limit.fhir_max_response_bytes
        too_large = HookRequestError(f"the FHIR server's answer is larger than {cap} bytes",
                                     status=412)
        try:
            async with client.stream("GET", url, headers=dict(hdrs)) as response:
                status = response.status_code
                if not 200 <= status < 300:
                    return read_fhir_json(status, b"", url)  # raises 412 naming the status
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise too_large
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > cap:
                        raise too_large
        except httpx.HTTPError as exc:
            raise HookRequestError(f"the FHIR server could not be read: {type(exc).__name__}",
                                   status=412) from None
        def check_and_parse() -> Any:
            _check_depth(bytes(content), limit.max_json_depth, "FHIR server's answer",
                         status=412)
            return read_fhir_json(status, bytes(content), url)

        if len(content) > _LARGE_BODY:
            return await run_in_threadpool(check_and_parse)
        return check_and_parse()

    async def fetch_missing(req: HookRequest, rs: Ruleset, caller: _Caller) -> dict[str, Any]:
        missing = missing_prefetch(req, rs)
        if not missing:
            return {}
        assert req.fhirServer is not None  # missing_prefetch raised otherwise
        base = req.fhirServer
        if not caller.may_read(base):
            raise HookRequestError(f"fhirServer {base} is not one this service may call",
                                   status=412)
        headers = fetch_headers(req)

        async def get(url: str, hdrs: Mapping[str, str]) -> Any:
            if not caller.may_read(url):  # a next page elsewhere, a dot segment, ...
                raise HookRequestError("a FHIR URL outside the allowed server was not followed",
                                       status=412)
            if fetch is not None:
                return await run_in_threadpool(fetch, url, hdrs)
            return await read(runtime.http(), url, hdrs)

        keys = list(missing)
        try:
            pages = await asyncio.wait_for(
                asyncio.gather(*(collect_pages_async(missing[k], headers, get, base)
                                 for k in keys)),
                timeout=limit.fhir_total_timeout_seconds)
        except asyncio.TimeoutError:
            raise HookRequestError("the FHIR server did not answer in time", status=412) from None
        return dict(zip(keys, pages, strict=True))

    async def evaluate(req: HookRequest, rs: Ruleset, fetched: dict[str, Any]) -> Any:
        as_of = clock() if clock is not None else None
        work = runtime.worker().submit(
            functools.partial(_evaluate_in_thread, req, rs, fetched, as_of, zone_name))
        try:
            return await asyncio.wait_for(work, timeout=limit.evaluation_timeout_seconds)
        except asyncio.TimeoutError:
            raise _HTTPError(503, "the evaluation did not finish in time; try again later",
                             {"Retry-After": "5"}) from None

    # -- endpoints: each returns its response and fills its log record -------- #
    async def list_services(request: Request, record: dict[str, Any]) -> Response:
        record["issuer"] = (await caller_of(request, "/cds-services")).issuer
        return _json(document)

    async def call_service(request: Request, record: dict[str, Any]) -> Response:
        sid = request.path_params["service_id"]
        caller = await caller_of(request, f"/cds-services/{sid}")
        record["issuer"] = caller.issuer
        _, rs = ruleset_of(request, record)
        req: HookRequest = await parsed(request, "request body", validate_request)
        record["hookInstance"] = str(req.hookInstance)
        fetched = await fetch_missing(req, rs, caller)
        result = await evaluate(req, rs, fetched)
        record["cards"] = len(result["cards"])
        return _json(result)

    async def feedback(request: Request, record: dict[str, Any]) -> Response:
        sid = request.path_params["service_id"]
        caller = await caller_of(request, f"/cds-services/{sid}/feedback")
        record["issuer"] = caller.issuer
        ruleset_of(request, record)
        body: FeedbackRequest = await parsed(request, "feedback body", validate_feedback)
        outcomes = [entry.outcome for entry in body.feedback]
        record["accepted"] = outcomes.count("accepted")
        record["overridden"] = outcomes.count("overridden")
        for entry in body.feedback:
            kept = entry.model_dump(mode="json", exclude_none=True)
            feedback_log.append({"service": sid, **kept})
            if on_feedback is not None:
                try:
                    on_feedback(sid, kept)
                except Exception as exc:
                    _log_failure(exc, "feedback callback")
                    raise _HTTPError(500, "feedback could not be stored") from None
        return _json({"received": len(body.feedback)})

    def endpoint(event: str, handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            record: dict[str, Any] = {"event": event, "service": None, "hookInstance": None,
                                      "issuer": None}
            start = time.perf_counter()
            try:
                response = await handler(request, record)
            except AuthenticationFailed as exc:
                record["issuer"] = exc.issuer
                record["error"] = f"authentication: {exc.reason}"
                response = _error(401, AUTH_FAILED, {"WWW-Authenticate": "Bearer"})
            except ReplayCacheFull:
                record["error"] = "replay cache full"
                response = _error(503, "the service is busy; try again later",
                                  {"Retry-After": "30"})
            except HookRequestError as exc:
                record["error"] = _CATEGORY.get(exc.status, "refused")
                response = _error(exc.status, exc.reason)
            except _HTTPError as exc:
                record["error"] = _CATEGORY.get(exc.status, "refused")
                response = _error(exc.status, exc.message, exc.headers)
            except ClientDisconnect:  # gone before its body arrived: nobody to answer
                record["error"] = "client disconnected"
                response = Response(status_code=499)
            except Exception as exc:
                _log_failure(exc, event)
                record["error"] = _CATEGORY[500]
                response = _error(500, _INTERNAL)
            record["status"] = response.status_code
            record["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
            if authenticator is None:
                record["warning"] = _INSECURE
                level = logging.WARNING
            else:
                level = logging.ERROR if response.status_code >= 500 else logging.INFO
            _emit(level, record)
            return response

        return run

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return _error(404, "no such endpoint")
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def on_any_error(request: Request, exc: Exception) -> Response:
        _log_failure(exc, "request")
        return _error(500, _INTERNAL)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.worker()
        if authenticator is None:
            _emit(logging.WARNING, {"event": "start", "warning": _INSECURE})
        try:
            yield
        finally:
            await runtime.close()

    app = Starlette(
        routes=[
            Route("/cds-services", endpoint("discovery", list_services), methods=["GET"]),
            Route("/cds-services/{service_id}", endpoint("patient-view", call_service),
                  methods=["POST"]),
            Route("/cds-services/{service_id}/feedback", endpoint("feedback", feedback),
                  methods=["POST"]),
        ],
        middleware=[Middleware(
            CORSMiddleware, allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=_CORS_EXPOSE, allow_credentials=False, max_age=600)],
        exception_handlers={HTTPException: on_http_error, Exception: on_any_error},
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.feedback = feedback_log
    app.state.config = config
    app.state.authenticator = authenticator
    app.state.insecure_dev = authenticator is None
    return app


# --------------------------------------------------------------------------- #
# Running the app in a background thread (tests, benchmarks, embedding)
# --------------------------------------------------------------------------- #
def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``0``: a free port), for
    :func:`serve_in_background`; bind first to know the URL (the JWT audience)
    before creating the app."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets, and
    # without it a response written in two parts waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


def base_url(sock: socket.socket) -> str:
    """``http://host:port`` of a socket from :func:`bind`."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@contextlib.contextmanager
def serve_in_background(app: Any, *, host: str = "127.0.0.1", port: int = 0,
                        sock: socket.socket | None = None,
                        log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL.

    The listening socket (``sock``, or one bound to ``host``:``port``; port 0
    is a free port) exists before the thread starts and the call returns once
    the server has started, so the URL can be used at once. uvicorn's access
    log is off (:func:`disable_access_log`). The server stops when the ``with`` block ends.
    """
    import uvicorn

    ready = threading.Event()

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets=sockets)
            finally:
                ready.set()

    if sock is None:
        sock = bind(host, port)
    url = base_url(sock)
    disable_access_log()
    server = _Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                    lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"cdss-serve-{url.rsplit(':', 1)[-1]}", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout=60) or not server.started:
            raise CDSSError("the CDS Hooks service did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
