"""What a call may cost: the body's size, the time it takes to arrive, and how
deep its JSON nests, all checked before the JSON is parsed."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from itertools import accumulate
from typing import TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from cdss.errors import HookRequestError
from cdss.service._responses import HTTPError

__all__ = ["LARGE_BODY", "check_depth", "checked", "json_depth", "json_too_deep", "read_body"]

_T = TypeVar("_T")

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_CHUNK = 1 << 16
#: Bodies larger than this are checked and validated in a worker thread, off the event loop.
LARGE_BODY = 256 * 1024
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


def check_depth(body: bytes, limit: int, what: str, status: int = 400) -> None:
    if json_too_deep(body, limit):
        raise HookRequestError(f"the {what} is nested more than {limit} levels deep",
                               status=status)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, read as a stream: 413 past ``limit`` bytes, 408 (and the
    connection closed) when it has not all arrived within ``timeout`` seconds,
    however steadily it trickles in. :class:`ClientDisconnect` when the
    client leaves first."""
    too_large = HTTPError(413, f"the request body is larger than {limit} bytes")
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
        raise HTTPError(408, f"the request body did not arrive within {timeout:g} seconds",
                         {"Connection": "close"}) from None


async def checked(body: bytes, check: Callable[[], _T]) -> _T:
    """``check()`` of ``body``, in a worker thread when the body is large, so
    that large bodies do not hold up the event loop."""
    if len(body) > LARGE_BODY:
        return await run_in_threadpool(check)
    return check()
