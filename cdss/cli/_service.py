"""Commands of the CDS Hooks service (`cdss serve`).

The service's packages (starlette, uvicorn, httpx, PyJWT: the ``service``
extra) are imported inside the command, so that ``cdss`` and its other
commands work without them.
"""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cdss.cli._help import Command
from cdss.cli._options import ConceptMaps, IntakeMode, fail
from cdss.errors import CDSSError


class _StoreAction(str, Enum):
    """``cdss store`` actions."""

    migrate = "migrate"


class _HooksVersion(str, Enum):
    """``cdss check-service --version``: the CDS Hooks version to check."""

    v2 = "2.0"
    v3 = "3.0"


class _ReportFormat(str, Enum):
    """``cdss check-service --format``."""

    text = "text"
    json = "json"


class _LogLevel(str, Enum):
    """``--log-level``."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


def _log_to_stderr(level: str) -> None:
    """Send the ``cdss`` loggers' records (one JSON line each) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("cdss")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command(cls=Command)
    def serve(
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8080,
        ruleset: Annotated[list[str] | None, typer.Option(
            "--ruleset", help="ruleset id or id@version to serve; repeat for several "
                              "(default: the default ruleset)")] = None,
        paths: Annotated[list[Path] | None, typer.Option(
            "--rulesets", help="extra ruleset folder")] = None,
        config: Annotated[Path | None, typer.Option(
            "--config", envvar="CDSS_SERVICE_CONFIG",
            help="configuration file (YAML or JSON): the trusted CDS clients (issuers), "
                 "their keys and FHIR servers; required unless --insecure-dev")] = None,
        public_url: Annotated[str | None, typer.Option(
            envvar="CDSS_PUBLIC_URL",
            help="the base URL clients call (https, as seen through the TLS proxy); "
                 "JWTs must name it plus the path as audience")] = None,
        insecure_dev: Annotated[bool, typer.Option(
            "--insecure-dev", help="local demos only: accept calls without any "
                                   "authentication (a warning is logged on every call)")
        ] = False,
        fhir_server: Annotated[list[str] | None, typer.Option(
            "--fhir-server", help="with --insecure-dev: only read FHIR servers under this "
                                  "base URL; repeat for several (default: any)")] = None,
        cors_origin: Annotated[list[str] | None, typer.Option(
            "--cors-origin", help="browser origin allowed to call, CORS (default: *)")] = None,
        log_level: Annotated[_LogLevel, typer.Option(
            help="the least severe log records written")] = _LogLevel.info,
        concept_maps: ConceptMaps = None,
        intake: Annotated[IntakeMode | None, typer.Option(
            help="how records are read: strict or lean (default: the configuration's, "
                 "else strict)")] = None,
        timezone: Annotated[str | None, typer.Option(
            "--timezone", help="IANA time zone of times sent without one (default: the "
                               "configuration's, else UTC)")] = None,
        shadow: Annotated[list[str] | None, typer.Option(
            "--shadow", help="SERVICE=ID@VERSION: evaluate a candidate version beside the "
                             "service's after each answer and record the differences; "
                             "repeat for several (default: the configuration's shadow)")] = None,
        store: Annotated[str | None, typer.Option(
            "--store", envvar="CDSS_STORE",
            help="the store of feedback, cards issued, shadow differences and the replay "
                 "cache: a SQLite file (one host) or a postgresql:// URL (shared by "
                 "replicas) (default: the configuration's store)")] = None,
        workers: Annotated[int, typer.Option(
            min=1, max=64, help="worker processes sharing the port (SO_REUSEPORT), each "
                                "with its own evaluation thread; needs a store, which holds "
                                "the replay cache they share")] = 1,
        metrics_token_file: Annotated[Path | None, typer.Option(
            envvar="CDSS_METRICS_TOKEN_FILE",
            help="file holding the bearer token GET /metrics requires (16 characters or "
                 "more); without it /metrics is off")] = None,
        drain_seconds: Annotated[float, typer.Option(
            min=0, max=600, help="on SIGTERM, seconds to keep serving with /readyz "
                                 "answering 503, before no longer accepting calls")] = 0.0,
        graceful_seconds: Annotated[float, typer.Option(
            min=1, max=600, help="on SIGTERM, seconds calls in flight have to finish")
        ] = 30.0,
    ) -> None:
        """Run the CDS Hooks 2.0 service over HTTP: patient-view, order-select and
        order-sign.

        Every call must carry a JWT signed by a CDS client named in --config;
        without a configuration the service refuses to start unless
        --insecure-dev is given.
        """
        try:
            from cdss.service import create_app, disable_access_log, load_config
            from cdss.service._serving import (
                WORKER_ENV,
                listening_socket,
                run_worker,
                supervise,
                worker_command,
            )
        except ImportError as exc:
            fail("the service needs the 'service' extra "
                  f"(pip install 'cdss-fhir[service]'): {exc}")
        if insecure_dev and config is not None:
            fail("--insecure-dev and --config (or CDSS_SERVICE_CONFIG) exclude each other")
        if fhir_server and not insecure_dev:
            fail("--fhir-server applies to --insecure-dev only; with a configuration, list "
                  "each issuer's FHIR servers in its fhir_servers")
        if config is None and not insecure_dev:
            fail("no configuration of trusted CDS clients: give --config FILE (or set "
                  "CDSS_SERVICE_CONFIG), or --insecure-dev for an unauthenticated local demo; "
                  "see docs/deploying.md")
        candidates = None
        if shadow:
            pairs = [item.partition("=") for item in shadow]
            if any(not sid or not sep or not spec for sid, sep, spec in pairs):
                fail("--shadow takes SERVICE=ID@VERSION")
            candidates = {sid: spec for sid, _, spec in pairs}
        token = None
        if metrics_token_file is not None:
            try:
                token = metrics_token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"cannot read the metrics token file {metrics_token_file}: {exc}")
        worker = os.environ.get(WORKER_ENV)
        if worker is None:
            _log_to_stderr(log_level.value)
        try:
            settings = load_config(config, public_url=public_url) if config else None
            application = create_app(
                rulesets=tuple(ruleset) if ruleset else None, paths=paths,
                concept_maps=tuple(concept_maps or ()), timezone=timezone,
                intake=None if intake is None else intake.value,
                config=settings, insecure_dev=insecure_dev,
                allowed_fhir_servers=fhir_server or None,
                cors_origins=tuple(cor for cor in (cors_origin or ["*"])),
                shadow=candidates, store=store, metrics_token=token)
        except CDSSError as exc:
            fail(str(exc))
        if workers > 1 and worker is None and application.state.store is None:
            fail("--workers needs a store (--store, CDSS_STORE or store: in the "
                  "configuration): the workers share its replay cache")
        _log_to_stderr(log_level.value)
        disable_access_log()
        if worker is not None or workers == 1:
            try:
                sock = listening_socket(host, port, reuse_port=worker is not None)
            except OSError as exc:
                fail(f"cannot listen on {host}:{port}: {exc.strerror}")
            if worker is None:
                _announce(application, settings, insecure_dev, host, port)
            run_worker(application, sock, log_level=log_level.value.lower(),
                       drain_seconds=drain_seconds, graceful_seconds=graceful_seconds)
            return
        if application.state.store is not None:  # each worker opens its own
            application.state.store.close()
        _announce(application, settings, insecure_dev, host, port)
        raise typer.Exit(code=supervise(worker_command(), workers,
                                        stop_seconds=drain_seconds + graceful_seconds + 15))

    @app.command("check-service", cls=Command)
    def check_service_command(
        url: Annotated[str, typer.Argument(
            help="the service's base URL (discovery is URL/cds-services; cdss serves 3.0 "
                 "at its base URL plus /v3)")],
        version: Annotated[_HooksVersion, typer.Option(
            "--version", help="the CDS Hooks version to call it as")] = _HooksVersion.v2,
        patient: Annotated[Path | None, typer.Option(
            help="a JSON file (a Bundle or a list of resources with one Patient; draft "
                 "resources are the draft orders) the calls are built from; default: a "
                 "generated patient")] = None,
        key: Annotated[Path | None, typer.Option(
            help="a PEM private key (EC: ES384, RSA: RS384) signing a JWT for every call; "
                 "with it, calls without a JWT must be refused")] = None,
        issuer: Annotated[str | None, typer.Option(
            help="the iss of the tokens (needed with --key)")] = None,
        kid: Annotated[str | None, typer.Option(help="the kid of the tokens' header")] = None,
        jku: Annotated[str | None, typer.Option(
            help="the jku of the tokens' header (the issuer's JWK Set URL)")] = None,
        public_url: Annotated[str | None, typer.Option(
            help="the base URL the tokens' aud names, when the service knows itself by "
                 "another URL than URL")] = None,
        output_format: Annotated[_ReportFormat, typer.Option(
            "--format", help="text for people, json for programs")] = _ReportFormat.text,
    ) -> None:
        """Check a CDS Hooks service against the specification: cdss's own or any other.

        Checks discovery, each service's prefetch templates, a call per hook (patient-view,
        order-select, order-sign) built from a patient, the cards' schema (indicator,
        source, summary under 140 characters, uuids, suggestions and actions on resources
        that exist, links), error shapes (an OperationOutcome for 3.0), feedback and, with
        --key, that calls without a valid JWT are refused. Each check is passed, failed
        (with the JSON path of the fault) or not applicable. Exit status 1 when a check
        failed, 2 on a usage error.
        """
        try:
            from cdss.service._conformance import check_service
        except ImportError as exc:
            fail(f"check-service needs the 'service' extra (pip install 'cdss-fhir[service]'): "
                  f"{exc}")
        try:
            report = check_service(url, version=version.value, patient=patient, key=key,
                                   issuer=issuer, kid=kid, jku=jku, public_url=public_url)
        except CDSSError as exc:
            fail(str(exc))
        if output_format is _ReportFormat.json:
            import orjson

            typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        else:
            typer.echo(report.to_text())
        raise typer.Exit(code=0 if report.passed else 1)

    @app.command("store", cls=Command)
    def store_command(
        action: Annotated[_StoreAction, typer.Argument(
            help="migrate: bring the store to this cdss's schema version")],
        store: Annotated[str, typer.Option(
            "--store", envvar="CDSS_STORE",
            help="a SQLite file or a postgresql:// URL")],
    ) -> None:
        """Manage the service's store: cdss store migrate --store FILE|URL.

        The service creates an empty store itself; an existing store of an older schema
        version is changed only by this command (run it once, before the new version's
        replicas start; it is safe to run again).
        """
        try:
            from cdss.service._backends import shown
            from cdss.service._store import migrate_store

            found, now = migrate_store(store)
        except ImportError as exc:
            fail(f"the store needs the 'service' extra (pip install 'cdss-fhir[service]'): {exc}")
        except CDSSError as exc:
            fail(str(exc))
        where = shown(store)
        if found == now:
            typer.echo(f"{where}: schema version {now}, nothing to do")
        else:
            typer.echo(f"{where}: schema version {found if found is not None else 'none'} "
                       f"-> {now}")


def _announce(application: Any, settings: Any, insecure_dev: bool, host: str,
              port: int) -> None:
    """The start-up lines on stderr (what is served, to whom)."""
    if insecure_dev:
        typer.secho("WARNING: --insecure-dev: calls are NOT authenticated; anyone who can "
                    f"reach {host}:{port} can read decision support about any patient. "
                    "Never use this with real patient data.",
                    err=True, fg=typer.colors.YELLOW)
    services = ", ".join(f"{sid} ({rs.spec})"
                         for sid, rs in application.state.services.items())
    typer.echo(f"CDS Hooks services: {services}; CDS Hooks 2.0 at /cds-services, 3.0 at "
               "/v3/cds-services", err=True)
    if settings is not None:
        issuers = ", ".join(i.issuer for i in settings.issuers)
        typer.echo(f"public URL {settings.public_url}; trusted issuers: {issuers}", err=True)
