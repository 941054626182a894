"""Commands of the CDS Hooks service (`cdss serve`).

The service's packages (starlette, uvicorn, httpx, PyJWT: the ``service``
extra) are imported inside the command, so that ``cdss`` and its other
commands work without them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from cdss.errors import CDSSError


def _trusted(values: list[str]) -> dict[str, Any]:
    """``ISSUER=FILE`` options → issuer → key (PEM text, or a JWK / JWK Set as JSON)."""
    out: dict[str, Any] = {}
    for value in values:
        issuer, sep, file = value.rpartition("=")
        if not sep or not issuer or not file:
            raise typer.BadParameter(f"--trust takes ISSUER=FILE, not {value!r}")
        try:
            text = Path(file).read_bytes()
        except OSError as exc:
            raise typer.BadParameter(f"--trust {file}: {exc.strerror}") from None
        try:
            out[issuer] = orjson.loads(text)
        except orjson.JSONDecodeError:
            out[issuer] = text
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port to listen on (0: any free port)")] = 8080,
        ruleset: Annotated[list[str] | None, typer.Option(
            "--ruleset", help="ruleset id or id@version to serve; repeat for several "
                              "(default: plantar-cramps)")] = None,
        paths: Annotated[list[Path] | None, typer.Option(
            "--rulesets", help="extra ruleset folder")] = None,
        trust: Annotated[list[str] | None, typer.Option(
            "--trust", help="ISSUER=FILE: require every call to carry a JWT signed by "
                            "ISSUER, whose public key (PEM) or JWK Set (JSON) is in FILE; "
                            "repeat for several clients")] = None,
        public_url: Annotated[str | None, typer.Option(
            help="base URL clients use (the JWT audience), when behind a proxy")] = None,
        fhir_server: Annotated[list[str] | None, typer.Option(
            "--fhir-server", help="only fetch from FHIR servers under this base URL; "
                                  "repeat for several (default: any)")] = None,
        cors_origin: Annotated[list[str] | None, typer.Option(
            "--cors-origin", help="browser origin allowed to call, CORS (default: *)")] = None,
        timeout: Annotated[float, typer.Option(
            help="seconds to wait for a FHIR server")] = 10.0,
        log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    ) -> None:
        """Run the CDS Hooks 2.0 service (patient-view) over HTTP."""
        try:
            import uvicorn

            from cdss.service import create_app
        except ImportError as exc:
            typer.secho(f"error: the service needs the 'service' extra "
                        f"(pip install 'cdss[service]'): {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        trusted = _trusted(trust or [])
        try:
            application = create_app(
                rulesets=tuple(ruleset or ("plantar-cramps",)), paths=paths,
                fetch_timeout=timeout, trusted_clients=trusted or None,
                public_base_url=public_url, allowed_fhir_servers=fhir_server or None,
                cors_origins=tuple(cor for cor in (cors_origin or ["*"])))
        except CDSSError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        if not trusted and not _is_loopback(host):
            typer.secho("warning: no --trust given: any client that reaches this address can "
                        "call the service", err=True, fg=typer.colors.YELLOW)
        services = ", ".join(f"{sid} ({rs.spec})"
                             for sid, rs in application.state.services.items())
        typer.echo(f"CDS Hooks services: {services}", err=True)
        uvicorn.run(application, host=host, port=port, log_level=log_level)
