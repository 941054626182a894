"""The CDS Hooks HTTP service (extra ``service``: starlette, uvicorn, httpx, PyJWT).

CDS Hooks 2.0 at ``/cds-services``, 3.0 at ``/v3/cds-services`` (:data:`V3_PREFIX`;
the same endpoints, answered as 3.0: its discovery fields and prefetch, its
OperationOutcome errors and override reasons).

:func:`create_app` returns a Starlette application:

``GET /cds-services``
    the discovery document: per ruleset a ``patient-view`` service (id: the
    ruleset's service id) and its ``order-select`` and ``order-sign`` services
    (``<id>-order-select``, ``<id>-order-sign``);
``POST /cds-services/{id}``
    a call of that service's hook, answered with cards (one call path for
    every hook: authentication, limits, fetching, the evaluation thread);
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

This package is imported only when the service is used: ``import cdss`` never
imports starlette, uvicorn, httpx or PyJWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from cdss.errors import (
    AuthenticationFailed,
    HookRequestError,
    InvalidArgument,
    ReplayCacheFull,
    ServiceConfigError,
    StoreError,
)
from cdss.hooks import (
    HOOKS,
    V2,
    V3,
    FeedbackRequest,
    Fetch,
    HookRequest,
    discovery,
    hook_services,
    service_ids,
    validate_feedback,
    validate_request,
)
from cdss.intake import zone
from cdss.rulesets import Ruleset, load_ruleset
from cdss.service._auth import ClientAuthenticator
from cdss.service._config import AllowedServer, Limits, ServiceConfig, load_config
from cdss.service._fhir_client import Caller, fetch_missing
from cdss.service._limits import check_depth, checked, read_body
from cdss.service._logging import INSECURE, emit, log_failure, quiet_http_loggers
from cdss.service._metrics import Metrics, reason_label
from cdss.service._responses import CATEGORY, INTERNAL, HTTPError, json_response
from cdss.service._responses import error_response as _error_response
from cdss.service._runtime import Runtime, assess_in_thread, evaluate_in_thread
from cdss.service._shadow import AfterAnswer, load_candidates
from cdss.service._store import Store, open_store

__all__ = ["AUTH_FAILED", "V3_PREFIX", "create_app"]

#: The one message every refused token gets (details go to the log only).
AUTH_FAILED = "authentication failed"
#: Where the CDS Hooks 3.0 services are (``/v3/cds-services``): a 3.0 call carries
#: no version of its own, and the 3.0 ballot has a service supporting two
#: versions expose each at its own endpoint. ``/cds-services`` stays 2.0.
V3_PREFIX = "/v3"
_CORS_EXPOSE = ["Origin", "Accept", "Content-Location", "Location", "X-Requested-With"]


def _services(rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset] | None,
              paths: Sequence[str | Path] | None,
              concept_maps: Sequence[str | Path] = ()) -> dict[str, Ruleset]:
    if isinstance(rulesets, Mapping):
        return service_ids(rulesets)
    if rulesets is None:  # the default ruleset
        return service_ids([load_ruleset(paths=paths, concept_maps=concept_maps)])
    if isinstance(rulesets, (str, Ruleset)):
        rulesets = [rulesets]
    return service_ids([r if isinstance(r, Ruleset)
                        else load_ruleset(r, paths=paths, concept_maps=concept_maps)
                        for r in rulesets])


@dataclass(frozen=True)
class _Settings:
    """What :func:`create_app` was asked for, checked: the services, the
    configuration (``None``: an unauthenticated ``--insecure-dev`` service and
    its ``dev_servers``), the time zone and the limits."""

    services: dict[str, Ruleset]
    config: ServiceConfig | None
    dev_servers: list[AllowedServer] | None
    zone_name: str
    limit: Limits
    intake: str = "strict"
    shadow: Mapping[str, Ruleset] | None = None
    store: Store | None = None
    metrics_token: str | None = None


def _settings(*, rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset] | None,
              paths: Sequence[str | Path] | None, concept_maps: Sequence[str | Path],
              timezone: str | None, config: ServiceConfig | str | Path | None,
              intake: str | None,
              insecure_dev: bool, allowed_fhir_servers: Sequence[str] | None,
              limits: Limits | None, shadow: Mapping[str, str | Ruleset] | None = None,
              store: str | Path | None = None,
              metrics_token: str | None = None) -> _Settings:
    """The settings, or the error that stops the service at start."""
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
    mode = intake or (config.intake if config is not None else "strict")
    if mode not in ("strict", "lean"):
        raise InvalidArgument(f"intake must be 'strict' or 'lean', not {mode!r}")
    candidates = load_candidates(
        hook_services(services, HOOKS),
        shadow if shadow is not None else (config.shadow if config else {}),
        functools.partial(load_ruleset, paths=paths, concept_maps=concept_maps))
    if metrics_token is not None and len(metrics_token.strip()) < 16:
        raise ServiceConfigError("the metrics token must have at least 16 characters",
                                 field="metrics_token")
    kept = open_store(config.store if config is not None else None, store)
    return _Settings(services, config, dev_servers, zone_name, limit, mode, candidates, kept,
                     metrics_token.strip() if metrics_token is not None else None)


def _nothing() -> None:
    return None


def _refusal(exc: Exception, record: dict[str, Any], event: str,
             version: str = V2) -> Response:
    """The answer to a call that raised ``exc``, its reason noted in ``record``
    (an OperationOutcome for a 3.0 client)."""
    error_response = functools.partial(_error_response, version=version)
    if isinstance(exc, AuthenticationFailed):
        record["issuer"] = exc.issuer
        record["error"] = f"authentication: {exc.reason}"
        return error_response(401, AUTH_FAILED, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ReplayCacheFull):
        record["error"] = "replay cache full"
        return error_response(503, "the service is busy; try again later", {"Retry-After": "30"})
    if isinstance(exc, StoreError):  # the replay check could not be made: fail closed
        record["error"] = "store unavailable"
        return error_response(503, "the service is unavailable; try again later",
                              {"Retry-After": "5"})
    if isinstance(exc, HookRequestError):
        record["error"] = CATEGORY.get(exc.status, "refused")
        return error_response(exc.status, exc.reason)
    if isinstance(exc, HTTPError):
        record["error"] = CATEGORY.get(exc.status, "refused")
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, ClientDisconnect):  # gone before its body arrived: nobody to answer
        record["error"] = "client disconnected"
        return Response(status_code=499)
    log_failure(exc, event)
    record["error"] = CATEGORY[500]
    return error_response(500, INTERNAL)


_Handler = Callable[[Request, dict[str, Any], str], Awaitable[Response]]


class _Service:
    """The endpoints and what they share between calls. Each endpoint returns
    its response and fills the call's log record; :meth:`logged` answers what
    they raise and writes the record."""

    def __init__(self, settings: _Settings, *, clock: Callable[[], datetime] | None,
                 fetch: Fetch | None,
                 on_feedback: Callable[[str, dict[str, Any]], None] | None) -> None:
        self.settings = settings
        self.limit = settings.limit
        self.clock = clock
        self.fetch = fetch
        self.on_feedback = on_feedback
        self.endpoints = hook_services(settings.services, HOOKS)
        self.documents = {v: discovery(settings.services, hooks=HOOKS, version=v)
                          for v in (V2, V3)}
        self.runtime = Runtime(self.limit.fhir_timeout_seconds,
                               self.limit.evaluation_timeout_seconds, self.limit.shadow_queue)
        self.store = settings.store
        self.after = AfterAnswer(settings.shadow or {}, self.store,
                                 timezone_name=settings.zone_name, intake=settings.intake)
        self.metrics = Metrics()
        self.draining = False  # SIGTERM: /readyz answers 503 from then on
        self.after.on_cards = self._count_cards
        self.after.on_drop = lambda sid: self.metrics.shadow_dropped.labels(sid).inc()
        self.replay_pool: ThreadPoolExecutor | None = None
        if self.store is not None:
            metrics = self.metrics
            self.store.on_error = lambda op: metrics.store_errors.labels(op).inc()
            self.store.on_drop = lambda kind, n: metrics.store_dropped.labels(kind).inc(n)
            self.store.on_feedback = self._count_feedback
            self.replay_pool = ThreadPoolExecutor(4, thread_name_prefix="cdss-replay")
        config = settings.config
        self.authenticator = ClientAuthenticator(
            config, self.runtime.http,
            shared_replay=self._shared_replay if self.store is not None else None) \
            if config is not None else None
        self.servers = {i.issuer: i.allowed_servers for i in config.issuers} if config else {}
        self.feedback_log: deque[dict[str, Any]] = deque(maxlen=1000)

    # -- metrics ---------------------------------------------------------------- #
    def _count_cards(self, sid: str, issued: Sequence[Any]) -> None:
        for card in issued:
            for rule in card.rules or ("",):
                self.metrics.cards.labels(sid, rule).inc()

    def _count_feedback(self, sid: str, rules: tuple[str, ...] | None, outcome: str) -> None:
        for rule in (rules or ("",)) if rules is not None else ("unknown",):
            self.metrics.feedback.labels(sid, rule, outcome).inc()

    async def _shared_replay(self, key: tuple[str, str], until: float, now: float) -> bool:
        """The store's replay check, off the event loop (on threads of its own,
        so that a slow store cannot take the loop's default pool)."""
        assert self.store is not None
        assert self.replay_pool is not None
        return await asyncio.get_running_loop().run_in_executor(
            self.replay_pool, self.store.remember, key, until, now)

    # -- what every endpoint needs ------------------------------------------- #
    async def caller_of(self, request: Request, path: str) -> Caller:
        """The authenticated caller (or the unauthenticated one of a dev service)."""
        if self.authenticator is None:
            return Caller(None, self.settings.dev_servers)
        values = request.headers.getlist("authorization")
        if len(values) > 1:  # which one a proxy or a client library would use is anyone's guess
            raise AuthenticationFailed("more than one Authorization header")
        issuer = await self.authenticator.authenticate(values[0] if values else None, path)
        return Caller(issuer.issuer, self.servers[issuer.issuer])

    def ruleset_of(self, request: Request, record: dict[str, Any]) -> tuple[str, Ruleset]:
        """The service the path names and its ruleset (404 for an unknown one)."""
        sid, _, rs = self.service_of(request, record)
        return sid, rs

    def service_of(self, request: Request, record: dict[str, Any]) -> tuple[str, str, Ruleset]:
        """The service the path names, its hook and its ruleset (404 for an unknown one)."""
        sid = request.path_params["service_id"]
        found = self.endpoints.get(sid)
        if found is None:
            raise HookRequestError(f"no CDS service {sid!r}; see GET /cds-services", status=404)
        hook, rs = found
        record["service"], record["ruleset"] = sid, rs.spec
        return sid, hook, rs

    async def parsed(self, request: Request, what: str, validate: Callable[[bytes], Any]) -> Any:
        """The body read within the size limit, its depth checked before parsing,
        then validated; large bodies are handled in a worker thread."""
        body = await read_body(request, self.limit.max_body_bytes,
                               self.limit.body_timeout_seconds)

        def check_and_validate() -> Any:
            check_depth(body, self.limit.max_json_depth, what)
            return validate(body)

        return await checked(body, check_and_validate)

    async def evaluate(self, req: HookRequest, rs: Ruleset, fetched: dict[str, Any],
                       hook: str, as_of: datetime | None = None, *,
                       with_assessment: bool = False, version: str = V2) -> Any:
        """The cards, from the evaluation thread within the evaluation timeout
        (else 503); with ``with_assessment``, ``(cards, Assessment)``."""
        run = assess_in_thread if with_assessment else evaluate_in_thread
        work = self.runtime.worker().submit(functools.partial(
            run, req, rs, fetched, as_of, self.settings.zone_name, self.settings.intake, hook,
            version))
        try:
            return await asyncio.wait_for(work, timeout=self.limit.evaluation_timeout_seconds)
        except asyncio.TimeoutError:
            raise HTTPError(503, "the evaluation did not finish in time; try again later",
                            {"Retry-After": "5"}) from None

    # -- the endpoints --------------------------------------------------------- #
    async def list_services(self, request: Request, record: dict[str, Any],
                            version: str = V2) -> Response:
        """``GET /cds-services``: the discovery document (``/v3/cds-services``: 3.0's)."""
        record["issuer"] = (await self.caller_of(request, f"{_prefix(version)}/cds-services")
                            ).issuer
        return json_response(self.documents[version])

    async def call_service(self, request: Request, record: dict[str, Any],
                           version: str = V2) -> Response:
        """``POST /cds-services/{id}``: a call of the service's hook, answered with
        cards (``/v3/cds-services/{id}``: read and answered as CDS Hooks 3.0)."""
        sid = request.path_params["service_id"]
        caller = await self.caller_of(request, f"{_prefix(version)}/cds-services/{sid}")
        record["issuer"] = caller.issuer
        _, hook, rs = self.service_of(request, record)
        record["event"] = hook
        req: HookRequest = await self.parsed(request, "request body",
                                             functools.partial(validate_request, hook=hook))
        record["hookInstance"] = str(req.hookInstance)
        as_of = self.after.as_of(sid, self.clock() if self.clock is not None else None)
        fetched = await fetch_missing(req, rs, caller, self.limit, client=self.runtime.http,
                                      fetch=self.fetch, version=version,
                                      today=as_of.date() if as_of is not None else None)
        shadowed = sid in self.after.candidates
        # the Assessment behind the cards: a shadow candidate is compared with it, and
        # the store counts the codes it could not map (cdss monitor)
        with_assessment = shadowed or self.store is not None
        result = await self.evaluate(req, rs, fetched, hook, as_of,
                                     with_assessment=with_assessment, version=version)
        served = None
        if with_assessment:
            result, served = result
        record["cards"] = len(result["cards"])
        response = json_response(result)
        # after the answer is sent: its cards noted, the shadow candidate queued
        response.background = BackgroundTask(self.after, sid, rs, req, fetched, as_of, result,
                                             self.runtime.worker(), hook, served,
                                             version=version)
        return response

    async def feedback(self, request: Request, record: dict[str, Any],
                       version: str = V2) -> Response:
        """``POST /cds-services/{id}/feedback``: validated, counted, passed on
        (the same for both versions; only a refusal's shape differs)."""
        sid = request.path_params["service_id"]
        caller = await self.caller_of(request, f"{_prefix(version)}/cds-services/{sid}/feedback")
        record["issuer"] = caller.issuer
        self.ruleset_of(request, record)
        body: FeedbackRequest = await self.parsed(request, "feedback body", validate_feedback)
        outcomes = [entry.outcome for entry in body.feedback]
        record["accepted"] = outcomes.count("accepted")
        record["overridden"] = outcomes.count("overridden")
        for entry in body.feedback:
            kept = entry.model_dump(mode="json", exclude_none=True)
            self.feedback_log.append({"service": sid, **kept})
            if self.on_feedback is not None:
                try:
                    self.on_feedback(sid, kept)
                except Exception as exc:
                    log_failure(exc, "feedback callback")
                    raise HTTPError(500, "feedback could not be stored") from None
        if self.store is None:
            for outcome in outcomes:
                self.metrics.feedback.labels(sid, "unknown", outcome).inc()
        if self.store is not None:  # waits, off the event loop, for the rows to be committed
            try:
                record["unknown_cards"] = await asyncio.wrap_future(
                    self.store.record_feedback(sid, body.feedback))
            except Exception:
                raise HTTPError(500, "feedback could not be stored") from None
        return json_response({"received": len(body.feedback)})

    # -- around every call ----------------------------------------------------- #
    def logged(self, event: str, handler: _Handler,
               version: str = V2) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` as the endpoint of CDS Hooks ``version``: its refusals
        answered, one log line written (with the version of a 3.0 call)."""
        async def run(request: Request) -> Response:
            record: dict[str, Any] = {"event": event, "service": None, "hookInstance": None,
                                      "issuer": None}
            if version != V2:
                record["version"] = version
            start = time.perf_counter()
            try:
                response = await handler(request, record, version)
            except Exception as exc:
                response = _refusal(exc, record, event, version)
            record["status"] = response.status_code
            elapsed = time.perf_counter() - start
            record["duration_ms"] = round(elapsed * 1000, 1)
            self._measure(record, request.path_params.get("service_id"), elapsed)
            if self.authenticator is None:
                record["warning"] = INSECURE
                level = logging.WARNING
            else:
                level = logging.ERROR if response.status_code >= 500 else logging.INFO
            emit(level, record)
            return response

        return run

    def _measure(self, record: dict[str, Any], path_sid: str | None, elapsed: float) -> None:
        """The call in the metrics: bounded labels only (an unknown service is ``unknown``)."""
        sid = path_sid if path_sid in self.endpoints else (
            "" if record["event"] == "discovery" else "unknown")
        hook = str(record["event"])
        if hook == "patient-view" and path_sid in self.endpoints:
            hook = self.endpoints[path_sid][0]  # refused before its hook was noted
        self.metrics.calls.labels(sid, hook, str(record["status"])).inc()
        self.metrics.latency.labels(sid, hook).observe(elapsed)
        error = record.get("error")
        if record["status"] == 401 and isinstance(error, str):
            self.metrics.auth_failures.labels(
                reason_label(error.removeprefix("authentication: "))).inc()
        elif error == "store unavailable":
            self.metrics.auth_failures.labels("store unavailable").inc()

    # -- for the platform: health, readiness, metrics ---------------------------- #
    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: the process answers (liveness)."""
        return json_response({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: rulesets loaded, store reachable, evaluation thread
        answering, not shutting down; 503 naming what is not."""
        checks: dict[str, bool] = {"rulesets": bool(self.endpoints), "draining": self.draining}
        if self.store is not None:
            try:
                checks["store"] = await asyncio.wait_for(asyncio.to_thread(self.store.ping), 5)
            except asyncio.TimeoutError:
                checks["store"] = False
        try:
            await asyncio.wait_for(self.runtime.worker().submit(_nothing), 2)
            checks["evaluation"] = True
        except asyncio.TimeoutError:
            checks["evaluation"] = False
        ready = all(v for k, v in checks.items() if k != "draining") and not self.draining
        self.metrics.ready.set(1 if ready else 0)
        status = "ready" if ready else "not ready"
        return json_response({"status": status, "checks": checks}, status=200 if ready else 503)

    async def metrics_endpoint(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text, for a bearer of the metrics token
        only (404 when no token is configured, 401 for any other caller)."""
        token = self.settings.metrics_token
        if token is None:
            return _error_response(404, "no such endpoint")
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()):
            self.metrics.auth_failures.labels("metrics token").inc()
            return _error_response(401, AUTH_FAILED, {"WWW-Authenticate": "Bearer"})
        body, content_type = await asyncio.to_thread(self.metrics.exposition)
        return Response(body, media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """The evaluation thread started with the app; the thread and client closed after."""
        self.runtime.worker()
        if self.store is not None:
            self.store.start()
        if self.authenticator is None:
            emit(logging.WARNING, {"event": "start", "warning": INSECURE})
        try:
            yield
        finally:
            self.draining = True
            self.metrics.ready.set(0)
            await self.runtime.close()
            if self.replay_pool is not None:
                self.replay_pool.shutdown(wait=False)
            if self.store is not None:  # what is queued is written first
                await asyncio.to_thread(self.store.close)
            if self.after.candidates:
                emit(logging.INFO, {"event": "shadow stopped", **self.after.summary()})


def _prefix(version: str) -> str:
    """The path prefix of the services of CDS Hooks ``version``."""
    return V3_PREFIX if version == V3 else ""


def _version_of_path(request: Request) -> str:
    return V3 if request.url.path.startswith(f"{V3_PREFIX}/") else V2


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    version = _version_of_path(request)
    if exc.status_code == 404:
        return _error_response(404, "no such endpoint", version=version)
    return _error_response(exc.status_code, str(exc.detail), exc.headers, version=version)


async def _on_any_error(request: Request, exc: Exception) -> Response:
    log_failure(exc, "request")
    return _error_response(500, INTERNAL, version=_version_of_path(request))


def _starlette(service: _Service, cors_origins: Sequence[str]) -> Starlette:
    """The routes, CORS and error handlers around ``service``'s endpoints."""
    return Starlette(
        routes=[
            Route("/cds-services", service.logged("discovery", service.list_services),
                  methods=["GET"]),
            Route("/cds-services/{service_id}",
                  service.logged("patient-view", service.call_service), methods=["POST"]),
            Route("/cds-services/{service_id}/feedback",
                  service.logged("feedback", service.feedback), methods=["POST"]),
            Route(f"{V3_PREFIX}/cds-services",
                  service.logged("discovery", service.list_services, V3), methods=["GET"]),
            Route(f"{V3_PREFIX}/cds-services/{{service_id}}",
                  service.logged("patient-view", service.call_service, V3), methods=["POST"]),
            Route(f"{V3_PREFIX}/cds-services/{{service_id}}/feedback",
                  service.logged("feedback", service.feedback, V3), methods=["POST"]),
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/readyz", service.readyz, methods=["GET"]),
            Route("/metrics", service.metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(
            CORSMiddleware, allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=_CORS_EXPOSE, allow_credentials=False, max_age=600)],
        exception_handlers={HTTPException: _on_http_error, Exception: _on_any_error},
        lifespan=service.lifespan,
    )


def create_app(
    *,
    rulesets: Sequence[str | Ruleset] | Mapping[str, Ruleset] | None = None,
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
    timezone: str | None = None,
    intake: str | None = None,
    config: ServiceConfig | str | Path | None = None,
    insecure_dev: bool = False,
    allowed_fhir_servers: Sequence[str] | None = None,
    limits: Limits | None = None,
    clock: Callable[[], datetime] | None = None,
    fetch: Fetch | None = None,
    cors_origins: Sequence[str] = ("*",),
    on_feedback: Callable[[str, dict[str, Any]], None] | None = None,
    shadow: Mapping[str, str | Ruleset] | None = None,
    store: str | Path | None = None,
    metrics_token: str | None = None,
) -> Starlette:
    """The CDS Hooks service as a Starlette app.

    ``rulesets``: ruleset specs (``id`` or ``id@version``) or loaded rulesets,
    one service each (or a mapping of service id to ruleset; None: the default
    ruleset); ``paths`` adds
    ruleset folders and ``concept_maps`` a site's code maps to the rulesets
    named by spec (after the configuration's). Rulesets are loaded here, so a
    bad one fails at start. ``timezone`` (IANA; default the configuration's,
    else UTC) is the zone of times an EHR sends without one. ``intake``
    (default the configuration's, else ``strict``) is how records are read:
    ``strict`` validates every resource that can give a fact with
    fhir.resources, ``lean`` only the fields the facts read (the same facts
    and the same records refused, in less time).

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

    ``shadow`` (default: the configuration's) maps service ids to a candidate
    ruleset (spec or loaded) evaluated beside the active one after each answer,
    its differences recorded (see :mod:`cdss.service._shadow`); its cards are
    never returned. ``store`` is the store of the cards issued, feedback,
    shadow differences and the replay cache: a SQLite file's path or a
    ``postgresql://`` URL; default: the configuration's ``store``, and none
    without one (then the replay cache is this process's memory).

    ``metrics_token`` (16 characters or more) is the bearer token
    ``GET /metrics`` requires; without one, ``/metrics`` is a 404.
    ``/healthz`` and ``/readyz`` need no token and say nothing of patients.
    """
    settings = _settings(rulesets=rulesets, paths=paths, concept_maps=concept_maps,
                         timezone=timezone, intake=intake, config=config,
                         insecure_dev=insecure_dev,
                         allowed_fhir_servers=allowed_fhir_servers, limits=limits,
                         shadow=shadow, store=store, metrics_token=metrics_token)
    quiet_http_loggers()
    service = _Service(settings, clock=clock, fetch=fetch, on_feedback=on_feedback)
    app = _starlette(service, cors_origins)
    app.state.services = settings.services
    app.state.feedback = service.feedback_log
    app.state.store = service.store
    app.state.shadow = service.after
    app.state.config = settings.config
    app.state.authenticator = service.authenticator
    app.state.insecure_dev = service.authenticator is None
    app.state.service = service
    app.state.metrics = service.metrics
    return app
