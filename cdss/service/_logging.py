"""Logging without patient data: one JSON line per call on the ``cdss.service``
logger, failures by type and stack only, uvicorn's access log off and the
HTTP client's request logs (whose URLs name patients) quiet."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

__all__ = ["INSECURE", "disable_access_log", "emit", "log_failure", "quiet_http_loggers"]

log = logging.getLogger("cdss.service")
#: The warning every call of an unauthenticated service logs.
INSECURE = "unauthenticated call: the service runs with --insecure-dev"


def emit(level: int, record: Mapping[str, Any]) -> None:
    line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
    log.log(level, orjson.dumps(line).decode())


def log_failure(exc: BaseException, event: str) -> None:
    """The type and stack of an unexpected failure; never its message, which
    may quote patient data."""
    stack = [f"{frame.filename}:{frame.lineno} in {frame.name}"
             for frame in traceback.extract_tb(exc.__traceback__)]
    emit(logging.ERROR, {"event": "failure", "during": event,
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


def quiet_http_loggers() -> None:
    # httpx logs every request's URL at INFO, and FHIR search URLs name the patient.
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
