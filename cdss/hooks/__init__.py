"""The CDS Hooks 2.0 protocol without a server: request and feedback models,
discovery, prefetch (from the request or the client's FHIR server, one
paging core for blocking and async fetches) and ``patient-view`` handling.

The HTTP service that speaks it is :mod:`cdss.service` (extra ``service``);
the cards are rendered by :func:`cdss.outputs.cds_hooks.cards`.
"""

from __future__ import annotations

from cdss import _exports
from cdss.errors import HookRequestError
from cdss.hooks._protocol import (
    HOOK,
    FeedbackRequest,
    Fetch,
    HookRequest,
    assess_request,
    collect_pages,
    collect_pages_async,
    discovery,
    evaluate_request,
    fetch_headers,
    handle_patient_view,
    http_fetch,
    missing_prefetch,
    prefetch_templates,
    read_fhir_json,
    service_ids,
    validate_feedback,
    validate_request,
)

__all__ = [
    "HOOK",
    "FeedbackRequest",
    "Fetch",
    "HookRequest",
    "HookRequestError",
    "assess_request",
    "collect_pages",
    "collect_pages_async",
    "discovery",
    "evaluate_request",
    "fetch_headers",
    "handle_patient_view",
    "http_fetch",
    "missing_prefetch",
    "prefetch_templates",
    "read_fhir_json",
    "service_ids",
    "validate_feedback",
    "validate_request",
]

_exports.claim(globals())
