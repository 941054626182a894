"""Configuration of the CDS Hooks service: trusted CDS clients and limits.

A configuration file (YAML or JSON) names the service's public URL, the CDS
clients (EHRs) it trusts, and for each of them the keys its JWTs are signed
with, the ``jku`` URLs it may point at, and the FHIR servers the service may
read on its behalf::

    public_url: https://cds.example.org
    issuers:
      - issuer: https://ehr.example.org
        jwks_url: https://ehr.example.org/.well-known/jwks.json
        fhir_servers: [https://fhir.example.org/api/FHIR/R4]

:func:`load_config` reads it (the path may come from ``CDSS_SERVICE_CONFIG``,
the public URL from ``CDSS_PUBLIC_URL``) and raises
:class:`ServiceConfigError`, naming the field, when it is unusable. Keys
given as files are read and checked here, so a bad key fails at start.

The models need pydantic and PyYAML only; :func:`load_config` also loads the
keys with PyJWT and ``cryptography`` (the ``service`` extra). :mod:`cdss`
never imports this module.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdss.errors import ServiceConfigError

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "CONFIG_ENV",
    "DEFAULT_ALGORITHMS",
    "PUBLIC_URL_ENV",
    "AllowedServer",
    "IssuerConfig",
    "JwksPolicy",
    "Limits",
    "ServiceConfig",
    "StoreConfig",
    "TokenPolicy",
    "is_loopback_host",
    "load_config",
]

#: Environment variable naming the configuration file.
CONFIG_ENV = "CDSS_SERVICE_CONFIG"
#: Environment variable giving the service's public base URL.
PUBLIC_URL_ENV = "CDSS_PUBLIC_URL"

#: JWT algorithms a CDS client may sign with: asymmetric only (the specification
#: forbids ``none`` and every symmetric, HMAC-based algorithm).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")
Algorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                    "ES256", "ES384", "ES512", "EdDSA"]
#: The algorithms the specification recommends, accepted unless an issuer says otherwise.
DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = ("ES384", "RS384")


# --------------------------------------------------------------------------- #
# URLs
# --------------------------------------------------------------------------- #
def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]


def _parse(url: str, *, allow_query: bool) -> _Origin | None:
    """Scheme, host, port and path segments of an absolute http(s) URL, or
    ``None`` when the URL is one the service will not call: user info, a
    non-ASCII or empty host, a bad port, dot segments or encoded slashes in
    the path, a backslash, a fragment (and a query unless ``allow_query``)."""
    if not isinstance(url, str) or not url.isascii() or any(c in url for c in "\\\t\r\n "):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or parts.fragment:
        return None
    if parts.query and not allow_query:
        return None
    host = (parts.hostname or "").lower()
    if not host or "%" in host:
        return None
    segments = tuple(s for s in parts.path.split("/") if s)
    for segment in segments:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            return None
    return _Origin(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme], segments)


@dataclass(frozen=True)
class AllowedServer:
    """A FHIR server base URL the service may read: a URL is admitted when its
    scheme, host and port are equal and its path is this path or below it
    (whole segments: ``/r4`` admits ``/r4/Patient/1``, not ``/r4evil``)."""

    url: str
    origin: _Origin

    @classmethod
    def parse(cls, url: str) -> AllowedServer:
        origin = _parse(url, allow_query=False)
        if origin is None:
            raise ValueError(f"{url!r} is not a usable http(s) base URL")
        if origin.scheme != "https" and not is_loopback_host(origin.host):
            raise ValueError(f"{url!r} must use https (plain http only on loopback)")
        return cls(url.rstrip("/"), origin)

    def admits(self, url: str) -> bool:
        """Whether the service may send a request (and a bearer token) to ``url``."""
        other = _parse(url, allow_query=True)
        if other is None:
            return False
        mine = self.origin
        return ((other.scheme, other.host, other.port) == (mine.scheme, mine.host, mine.port)
                and other.segments[:len(mine.segments)] == mine.segments)


def _https_url(value: str, what: str) -> str:
    origin = _parse(value, allow_query=False)
    if origin is None:
        raise ValueError(f"{what} {value!r} is not an absolute http(s) URL without user "
                         "info, query or fragment")
    if origin.scheme != "https" and not is_loopback_host(origin.host):
        raise ValueError(f"{what} {value!r} must use https (plain http only on loopback)")
    return value


# --------------------------------------------------------------------------- #
# The models
# --------------------------------------------------------------------------- #
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IssuerConfig(_Strict):
    """One trusted CDS client (EHR), known by the ``iss`` of its JWTs.

    Its keys come from exactly one of ``jwks_url`` (fetched and cached),
    ``jwks`` (a JWK Set inline), ``jwks_file`` or ``public_key_file`` (PEM),
    or, when none is given, from the JWT's ``jku`` header, which must then be
    one of ``jku``. A ``jku`` header naming any other URL is refused.
    ``fhir_servers`` are the FHIR base URLs the service may read for this
    client; empty means none (prefetch only).
    """

    issuer: str = Field(min_length=1, max_length=2048)
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jwks_file: Path | None = None
    public_key_file: Path | None = None
    jku: tuple[str, ...] = ()
    algorithms: tuple[Algorithm, ...] = DEFAULT_ALGORITHMS
    fhir_servers: tuple[str, ...] = ()

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        return None if value is None else _https_url(value, "jwks_url")

    @field_validator("jku")
    @classmethod
    def _jku(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_https_url(v, "jku") for v in value)

    @field_validator("fhir_servers")
    @classmethod
    def _fhir_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(AllowedServer.parse(v).url for v in value)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one algorithm")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerConfig:
        given = [n for n in ("jwks_url", "jwks", "jwks_file", "public_key_file")
                 if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give one key source, not {' and '.join(given)}")
        if not given and not self.jku:
            raise ValueError("give the issuer's keys: jwks_url, jwks, jwks_file, "
                             "public_key_file, or the jku URLs its tokens may name")
        return self

    @property
    def allowed_servers(self) -> tuple[AllowedServer, ...]:
        return tuple(AllowedServer.parse(u) for u in self.fhir_servers)


class TokenPolicy(_Strict):
    """What a client's JWT must satisfy besides its signature."""

    #: ``exp`` may be at most this far in the future (and ``exp - iat`` at most this).
    max_lifetime_seconds: int = Field(default=300, ge=10, le=3600)
    #: Clock skew allowed on ``exp`` and ``iat``.
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    #: ``jti`` values remembered at once (each until its token expires).
    replay_cache_size: int = Field(default=100_000, ge=100, le=10_000_000)
    #: The longest token accepted, in characters.
    max_token_chars: int = Field(default=8192, ge=512, le=65536)


class JwksPolicy(_Strict):
    """How JWK Sets are fetched from ``jwks_url`` and allowed ``jku`` URLs."""

    cache_seconds: int = Field(default=300, ge=0, le=86400)
    #: An unknown ``kid`` refetches the set at most this often (key rotation).
    min_refresh_seconds: int = Field(default=30, ge=0, le=3600)
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    max_bytes: int = Field(default=256_000, ge=1024, le=10_000_000)


class Limits(_Strict):
    """Limits on what a call may cost the service."""

    max_body_bytes: int = Field(default=10_000_000, ge=1024)
    #: Seconds for a request body to arrive in full, from when its reading began
    #: (however steadily it trickles); 408, and the connection closed, after that.
    body_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: Nesting of arrays and objects allowed in a request body.
    max_json_depth: int = Field(default=64, ge=8, le=512)
    #: Seconds a call may wait for (and spend in) evaluation; 503 after that.
    evaluation_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    #: Seconds for one request to a FHIR server.
    fhir_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: Seconds for all FHIR reads of one call.
    fhir_total_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    #: Bytes of one FHIR server answer (after decompression).
    fhir_max_response_bytes: int = Field(default=20_000_000, ge=1024)
    #: Shadow evaluations waiting for the evaluation thread at most; past that
    #: a call's shadow evaluation is dropped (and counted).
    shadow_queue: int = Field(default=32, ge=1, le=1000)


class StoreConfig(_Strict):
    """The store of the cards issued, feedback, shadow differences and the
    replay cache (no patient data): one SQLite file (one host) or a PostgreSQL
    database (shared by replicas), and how long its rows are kept."""

    #: The SQLite file (default: ``cdss-service.sqlite3`` in ``CDSS_DATA_DIR``,
    #: else ``$XDG_STATE_HOME/cdss``, else ``~/.local/state/cdss``), relative
    #: to the configuration file.
    path: str | None = None
    #: A PostgreSQL database instead (``postgresql://user@host:5432/db``; a
    #: password is better kept in ``PGPASSWORD`` or ``~/.pgpass``).
    url: str | None = None
    #: Connections per process to PostgreSQL at most.
    pool_size: int = Field(default=8, ge=1, le=100)
    #: Seconds connecting, taking a connection, or one statement may take.
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    #: Days a card's uuid is mapped to its rules (feedback later than that is
    #: stored with the rule unknown).
    card_days: int = Field(default=30, ge=1, le=3650)
    #: Days feedback, cards-shown counts and shadow differences are kept.
    keep_days: int = Field(default=400, ge=1, le=36500)
    #: Writes waiting for the writer thread at most; past that they are
    #: dropped, counted and logged.
    max_pending: int = Field(default=10_000, ge=10, le=1_000_000)
    #: Whether the text of override comments is kept (else only that there was one).
    comments: bool = True

    @model_validator(mode="after")
    def _one_place(self) -> StoreConfig:
        if self.path is not None and self.url is not None:
            raise ValueError("give the store a path or a url, not both")
        if self.url is not None and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("the store's url must be a postgresql:// URL")
        return self


class ServiceConfig(_Strict):
    """The service's configuration: its public URL (the JWT audience is this
    URL plus the path called), the trusted issuers, and policies."""

    public_url: str
    issuers: tuple[IssuerConfig, ...] = Field(min_length=1)
    token: TokenPolicy = TokenPolicy()
    jwks: JwksPolicy = JwksPolicy()
    limits: Limits = Limits()
    #: The site's concept-map files (its local codes onto the rulesets'
    #: concepts), relative to the configuration file.
    concept_maps: tuple[str, ...] = ()
    #: IANA time zone of times the EHR sends without one.
    timezone: str = "UTC"
    #: How records are read: ``strict`` (fhir.resources) or ``lean`` (only
    #: the fields the facts read; the same facts, faster).
    intake: Literal["strict", "lean"] = "strict"
    #: The store of feedback, cards issued and shadow differences (none: not kept).
    store: StoreConfig | None = None
    #: Shadow mode: service id → candidate ruleset (``id@version``) evaluated
    #: beside the active one on every call, its cards never returned.
    shadow: dict[str, str] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from cdss.errors import InvalidArgument
        from cdss.intake import zone

        try:
            zone(value)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return _https_url(value, "public_url").rstrip("/")

    @model_validator(mode="after")
    def _unique_issuers(self) -> ServiceConfig:
        seen: set[str] = set()
        for item in self.issuers:
            if item.issuer in seen:
                raise ValueError(f"issuer {item.issuer!r} is listed twice")
            seen.add(item.issuer)
        return self

    def issuer(self, iss: str) -> IssuerConfig | None:
        """The configuration of issuer ``iss`` (exact match), or ``None``."""
        for item in self.issuers:
            if item.issuer == iss:
                return item
        return None


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _from_validation(exc: ValidationError, source: str | None) -> ServiceConfigError:
    errors = exc.errors(include_input=False)
    first = errors[0]
    message = first["msg"].removeprefix("Value error, ")
    if len(errors) > 1:
        others = "; ".join(f"{_field(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                           for e in errors[1:4])
        message += f" (also {others}{'; ...' if len(errors) > 4 else ''})"
    return ServiceConfigError(message, field=_field(first["loc"]), source=source)


def _resolve_files(data: Any, base: Path) -> Any:
    """Make the key file paths of ``data`` absolute, relative to ``base``."""
    if not isinstance(data, dict) or not isinstance(data.get("issuers"), list):
        return data
    maps = data.get("concept_maps")
    if isinstance(maps, list):
        data["concept_maps"] = [str(base / m) if isinstance(m, str) and not Path(m).is_absolute()
                                else m for m in maps]
    store = data.get("store")
    if isinstance(store, dict) and isinstance(store.get("path"), str) \
            and not Path(store["path"]).is_absolute():
        data["store"] = {**store, "path": str(base / store["path"])}
    for item in data["issuers"]:
        if isinstance(item, dict):
            for key in ("jwks_file", "public_key_file"):
                if isinstance(item.get(key), str) and not Path(item[key]).is_absolute():
                    item[key] = str(base / item[key])
    return data


def _read_file(path: Path) -> Any:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ServiceConfigError(f"cannot read the configuration: {exc.strerror}",
                                 source=str(path)) from None
    try:
        if path.suffix.lower() == ".json":
            return orjson.loads(text)
        return yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise ServiceConfigError(f"not valid {kind}: {exc}", source=str(path)) from None


def load_config(path: str | Path | None = None, *, public_url: str | None = None,
                data: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> ServiceConfig | None:
    """Read the service's configuration.

    ``path`` (default: the file named by ``CDSS_SERVICE_CONFIG``) is YAML, or
    JSON when it ends in ``.json``; ``data`` gives the same content as a
    mapping instead. ``public_url`` (default: ``CDSS_PUBLIC_URL``, then the
    file's ``public_url``) is the base URL clients call. Returns ``None`` when
    neither a path, data nor the environment variable is given. Every key the
    configuration names is loaded and checked, so an unusable key raises
    :class:`ServiceConfigError` here rather than failing calls later.
    """
    env = os.environ if environ is None else environ
    source: str | None = None
    if data is None:
        if path is None:
            path = env.get(CONFIG_ENV) or None
        if path is None:
            return None
        file = Path(path)
        source = str(file)
        raw = _read_file(file)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ServiceConfigError("the configuration must be a mapping", source=source)
        content = _resolve_files(raw, file.parent)
    else:
        content = dict(data)
    url = public_url or env.get(PUBLIC_URL_ENV) or content.get("public_url")
    if not url:
        raise ServiceConfigError(
            f"the service's public URL is not set: give public_url, {PUBLIC_URL_ENV} or "
            "--public-url (the URL clients call, which their JWTs name as audience)",
            field="public_url", source=source)
    try:
        config = ServiceConfig.model_validate({**content, "public_url": url})
    except ValidationError as exc:
        raise _from_validation(exc, source) from None
    from cdss.service._auth import load_static_keys

    for i, item in enumerate(config.issuers):
        try:
            load_static_keys(item)
        except ValueError as exc:
            raise ServiceConfigError(str(exc), field=f"issuers.{i}", source=source) from None
    return config
