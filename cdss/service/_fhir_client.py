"""Reading what ``prefetch`` lacks from the caller's own FHIR server: only a
server the calling issuer allows (every URL checked, next pages included),
no redirects, a cap on each answer's size, a timeout for all reads of a call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from cdss.errors import HookRequestError
from cdss.hooks import (
    V2,
    Fetch,
    HookRequest,
    collect_pages_async,
    fetch_headers,
    missing_prefetch,
    prefetch_continuations,
)
from cdss.hooks import read_fhir_json as parse_fhir_json
from cdss.rulesets import Ruleset
from cdss.service._config import AllowedServer, Limits
from cdss.service._limits import check_depth, checked

__all__ = ["Caller", "fetch_missing", "read_capped"]


class Caller:
    """Who is calling: a trusted issuer (and the FHIR servers it allows), or an
    unauthenticated caller of an ``--insecure-dev`` service (``servers``
    ``None``: any)."""

    def __init__(self, issuer: str | None, servers: Sequence[AllowedServer] | None) -> None:
        self.issuer = issuer
        self.servers = tuple(servers) if servers is not None else None

    def may_read(self, url: str) -> bool:
        """Whether ``url`` lies on a server this caller allows."""
        return self.servers is None or any(s.admits(url) for s in self.servers)


async def read_capped(client: httpx.AsyncClient, url: str, headers: Mapping[str, str],
                      limit: Limits) -> Any:
    """One GET of ``url``, read as a stream and abandoned past
    ``limit.fhir_max_response_bytes``; its depth checked before it is parsed.
    A :class:`HookRequestError` (412) for any failure."""
    cap = limit.fhir_max_response_bytes
    too_large = HookRequestError(f"the FHIR server's answer is larger than {cap} bytes",
                                 status=412)
    try:
        async with client.stream("GET", url, headers=dict(headers)) as response:
            status = response.status_code
            if not 200 <= status < 300:
                return parse_fhir_json(status, b"", url)  # raises 412 naming the status
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise too_large
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > cap:
                    raise too_large
    except httpx.HTTPError as exc:
        raise HookRequestError(f"the FHIR server could not be read: {type(exc).__name__}",
                               status=412) from None
    body = bytes(content)

    def check_and_parse() -> Any:
        check_depth(body, limit.max_json_depth, "FHIR server's answer", status=412)
        return parse_fhir_json(status, body, url)

    return await checked(body, check_and_parse)


async def fetch_missing(req: HookRequest, rs: Ruleset, caller: Caller, limit: Limits, *,
                        client: Callable[[], httpx.AsyncClient], fetch: Fetch | None,
                        version: str = V2, today: date | None = None) -> dict[str, Any]:
    """The prefetch keys ``req`` lacks (its CDS Hooks ``version``'s keys, 3.0
    windows ending ``today``), and for 3.0 the rest of each search the client
    paginated, read from its ``fhirServer`` with ``fetch`` (blocking, run off
    the event loop) or else ``client()``."""
    missing = missing_prefetch(req, rs, version=version, today=today)
    rest = prefetch_continuations(req, rs, version=version)
    if not missing and not rest:
        return {}
    assert req.fhirServer is not None  # missing_prefetch raised otherwise
    base = req.fhirServer
    if not caller.may_read(base):
        raise HookRequestError(f"fhirServer {base} is not one this service may call",
                               status=412)
    headers = fetch_headers(req)

    async def get(url: str, hdrs: Mapping[str, str]) -> Any:
        if not caller.may_read(url):  # a next page elsewhere, a dot segment, ...
            raise HookRequestError("a FHIR URL outside the allowed server was not followed",
                                   status=412)
        if fetch is not None:
            return await run_in_threadpool(fetch, url, hdrs)
        return await read_capped(client(), url, hdrs, limit)

    reads = [(k, u, False) for k, u in missing.items()] + \
        [(k, u, True) for k, u in rest.items()]  # the rest of a paginated prefetch: all pages
    keys = [k for k, _, _ in reads]
    try:
        pages = await asyncio.wait_for(
            asyncio.gather(*(collect_pages_async(u, headers, get, base, all_pages=every)
                             for _, u, every in reads)),
            timeout=limit.fhir_total_timeout_seconds)
    except asyncio.TimeoutError:
        raise HookRequestError("the FHIR server did not answer in time", status=412) from None
    return dict(zip(keys, pages, strict=True))
