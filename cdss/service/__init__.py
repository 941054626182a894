"""The CDS Hooks HTTP service, 2.0 and 3.0 (extra ``service``: starlette, uvicorn,
httpx, PyJWT), and :func:`check_service`, a conformance check of any CDS Hooks service.

:func:`create_app` builds the Starlette app from rulesets and a
:class:`ServiceConfig` (:func:`load_config` reads its file): trusted CDS
clients and their keys, the FHIR servers each may have read, the limits.
:func:`serve_in_background` runs an app on a bound socket (tests, benchmarks,
embedding). The package's modules are the only importers of starlette,
uvicorn, httpx and PyJWT; ``import cdss`` imports none of them.
"""

from __future__ import annotations

from cdss import _exports
from cdss.errors import AuthenticationFailed, ReplayCacheFull, ServiceConfigError
from cdss.service._app import AUTH_FAILED, create_app
from cdss.service._config import (
    ASYMMETRIC_ALGORITHMS,
    CONFIG_ENV,
    DEFAULT_ALGORITHMS,
    PUBLIC_URL_ENV,
    AllowedServer,
    IssuerConfig,
    JwksPolicy,
    Limits,
    ServiceConfig,
    StoreConfig,
    TokenPolicy,
    load_config,
)
from cdss.service._conformance import CHECKS, Check, ConformanceReport, check_service
from cdss.service._limits import json_depth, json_too_deep
from cdss.service._logging import disable_access_log
from cdss.service._server import base_url, bind, serve_in_background

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "AUTH_FAILED",
    "CHECKS",
    "CONFIG_ENV",
    "DEFAULT_ALGORITHMS",
    "PUBLIC_URL_ENV",
    "AllowedServer",
    "AuthenticationFailed",
    "Check",
    "ConformanceReport",
    "IssuerConfig",
    "JwksPolicy",
    "Limits",
    "ReplayCacheFull",
    "ServiceConfig",
    "ServiceConfigError",
    "StoreConfig",
    "TokenPolicy",
    "base_url",
    "bind",
    "check_service",
    "create_app",
    "disable_access_log",
    "json_depth",
    "json_too_deep",
    "load_config",
    "serve_in_background",
]

_exports.claim(globals())
