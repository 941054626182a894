"""The CDS Hooks 2.0 protocol without a server: request and feedback models,
discovery, prefetch (from the request or the client's FHIR server, one
paging core for blocking and async fetches) and the handling of
``patient-view``, ``order-select`` and ``order-sign``.

The HTTP service that speaks it is :mod:`cdss.service` (extra ``service``);
the cards are rendered by :func:`cdss.outputs.cds_hooks.cards`.
"""

from __future__ import annotations

from cdss import _exports
from cdss.errors import HookRequestError
from cdss.hooks._protocol import (
    HOOK,
    HOOKS,
    LAB_COUNT,
    ORDER_SELECT,
    ORDER_SIGN,
    SOURCE_EXTENSION,
    FeedbackRequest,
    Fetch,
    HookRequest,
    OrderContext,
    OrderSelectContext,
    assess_request,
    collect_pages,
    collect_pages_async,
    discovery,
    evaluate_request,
    fetch_headers,
    handle_hook,
    handle_patient_view,
    hook_services,
    http_fetch,
    missing_prefetch,
    order_context,
    prefetch_templates,
    read_fhir_json,
    service_ids,
    single_page,
    source_attributes,
    validate_feedback,
    validate_request,
)

__all__ = [
    "HOOK",
    "HOOKS",
    "LAB_COUNT",
    "ORDER_SELECT",
    "ORDER_SIGN",
    "SOURCE_EXTENSION",
    "FeedbackRequest",
    "Fetch",
    "HookRequest",
    "HookRequestError",
    "OrderContext",
    "OrderSelectContext",
    "assess_request",
    "collect_pages",
    "collect_pages_async",
    "discovery",
    "evaluate_request",
    "fetch_headers",
    "handle_hook",
    "handle_patient_view",
    "hook_services",
    "http_fetch",
    "missing_prefetch",
    "order_context",
    "prefetch_templates",
    "read_fhir_json",
    "service_ids",
    "single_page",
    "source_attributes",
    "validate_feedback",
    "validate_request",
]

_exports.claim(globals())
