"""The service's answers: JSON bodies, and the internal error for answers about
a call rather than its content."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["CATEGORY", "INTERNAL", "ISSUE_TYPE", "HTTPError", "error_response", "json_response",
           "operation_outcome"]

#: What a 500 says: the details go to the log only.
INTERNAL = "internal error; see the service log"
#: The log's category of each refused status.
CATEGORY = {400: "bad request", 401: "authentication", 404: "unknown service",
            405: "method not allowed", 408: "body too slow", 412: "data unavailable",
            413: "body too large", 500: "internal error", 503: "unavailable"}

#: The FHIR issue type of each refused status, for a 3.0 client's OperationOutcome.
ISSUE_TYPE = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
              405: "not-supported", 408: "timeout", 412: "processing", 413: "too-costly",
              500: "exception", 503: "transient"}


class HTTPError(Exception):
    """An answer about the call rather than its content (408, 413, 500, 503),
    which :class:`HookRequestError` (400, 404, 412) is not for: its ``status``,
    the ``message`` the client gets, and extra ``headers``."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_response(body: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> Response:
    """``body`` as a JSON response."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def operation_outcome(status: int, message: str) -> dict[str, Any]:
    """A refusal as the FHIR OperationOutcome CDS Hooks 3.0 recommends: one
    ``error`` issue of the status's type (:data:`ISSUE_TYPE`), ``diagnostics``
    the message (the same words a 2.0 client gets, never a traceback)."""
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": ISSUE_TYPE.get(status, "processing"),
        "details": {"text": f"HTTP {status}"}, "diagnostics": message}]}


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None, *,
                   version: str = "2.0") -> Response:
    """The error every refusal gets: for a 2.0 client
    ``{"error": {"status", "message"}}``, for a 3.0 client an OperationOutcome
    (:func:`operation_outcome`, ``application/fhir+json``)."""
    if version == "3.0":
        return Response(orjson.dumps(operation_outcome(status, message)), status_code=status,
                        media_type="application/fhir+json", headers=dict(headers or {}))
    return json_response({"error": {"status": status, "message": message}}, status, headers)
