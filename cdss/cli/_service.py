"""Commands of the CDS Hooks service (`cdss serve`).

The service's packages (starlette, uvicorn, httpx, PyJWT: the ``service``
extra) are imported inside the command, so that ``cdss`` and its other
commands work without them.
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from cdss.cli._help import Command
from cdss.cli._options import ConceptMaps, IntakeMode
from cdss.errors import CDSSError


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


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


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
        store: Annotated[Path | None, typer.Option(
            "--store", help="the store file (SQLite) of feedback, cards issued and shadow "
                            "differences (default: the configuration's store)")] = None,
    ) -> None:
        """Run the CDS Hooks 2.0 service over HTTP: patient-view, order-select and
        order-sign.

        Every call must carry a JWT signed by a CDS client named in --config;
        without a configuration the service refuses to start unless
        --insecure-dev is given.
        """
        try:
            import uvicorn

            from cdss.service import create_app, disable_access_log, load_config
        except ImportError as exc:
            _fail(f"the service needs the 'service' extra (pip install 'cdss[service]'): {exc}")
        if insecure_dev and config is not None:
            _fail("--insecure-dev and --config (or CDSS_SERVICE_CONFIG) exclude each other")
        if fhir_server and not insecure_dev:
            _fail("--fhir-server applies to --insecure-dev only; with a configuration, list "
                  "each issuer's FHIR servers in its fhir_servers")
        if config is None and not insecure_dev:
            _fail("no configuration of trusted CDS clients: give --config FILE (or set "
                  "CDSS_SERVICE_CONFIG), or --insecure-dev for an unauthenticated local demo; "
                  "see docs/deploying.md")
        candidates = None
        if shadow:
            pairs = [item.partition("=") for item in shadow]
            if any(not sid or not sep or not spec for sid, sep, spec in pairs):
                _fail("--shadow takes SERVICE=ID@VERSION")
            candidates = {sid: spec for sid, _, spec in pairs}
        try:
            settings = load_config(config, public_url=public_url) if config else None
            application = create_app(
                rulesets=tuple(ruleset) if ruleset else None, paths=paths,
                concept_maps=tuple(concept_maps or ()), timezone=timezone,
                intake=None if intake is None else intake.value,
                config=settings, insecure_dev=insecure_dev,
                allowed_fhir_servers=fhir_server or None,
                cors_origins=tuple(cor for cor in (cors_origin or ["*"])),
                shadow=candidates, store=store)
        except CDSSError as exc:
            _fail(str(exc))
        _log_to_stderr(log_level.value)
        disable_access_log()
        if insecure_dev:
            typer.secho("WARNING: --insecure-dev: calls are NOT authenticated; anyone who can "
                        f"reach {host}:{port} can read decision support about any patient. "
                        "Never use this with real patient data.",
                        err=True, fg=typer.colors.YELLOW)
        services = ", ".join(f"{sid} ({rs.spec})"
                             for sid, rs in application.state.services.items())
        typer.echo(f"CDS Hooks services: {services}", err=True)
        if settings is not None:
            issuers = ", ".join(i.issuer for i in settings.issuers)
            typer.echo(f"public URL {settings.public_url}; trusted issuers: {issuers}", err=True)
        uvicorn.run(application, host=host, port=port, log_level=log_level.value,
                    access_log=False, server_header=False)
