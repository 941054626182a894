"""The service's answers: JSON bodies, and the internal error for answers about
a call rather than its content."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["CATEGORY", "INTERNAL", "HTTPError", "error_response", "json_response"]

#: What a 500 says: the details go to the log only.
INTERNAL = "internal error; see the service log"
#: The log's category of each refused status.
CATEGORY = {400: "bad request", 401: "authentication", 404: "unknown service",
            405: "method not allowed", 408: "body too slow", 412: "data unavailable",
            413: "body too large", 500: "internal error", 503: "unavailable"}


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


def error_response(status: int, message: str,
                   headers: Mapping[str, str] | None = None) -> Response:
    """The JSON error every refusal gets: ``{"error": {"status", "message"}}``."""
    return json_response({"error": {"status": status, "message": message}}, status, headers)
