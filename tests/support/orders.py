"""Draft orders and order-hook requests for tests (the tests make their own data)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cdss
from cdss.hooks import prefetch_templates
from tests.support.builders import LOINC, PID, RXNORM, bundle, patient

#: The ruleset whose rules read draft orders (a draft version: named, never the default).
ORDERS_SPEC = "plantar-cramps@1.3.0"


def draft_med(oid: str, code: str | None = None, text: str | None = None, *,
              pid: str = PID, status: str = "draft") -> dict[str, Any]:
    """A draft MedicationRequest by RxNorm code and/or text."""
    codeable: dict[str, Any] = {}
    if code is not None:
        codeable["coding"] = [{"system": RXNORM, "code": code}]
    if text is not None:
        codeable["text"] = text
    return {"resourceType": "MedicationRequest", "id": oid, "status": status, "intent": "order",
            "subject": {"reference": f"Patient/{pid}"}, "medicationCodeableConcept": codeable}


def draft_lab(oid: str, loinc: str, *, pid: str = PID) -> dict[str, Any]:
    """A draft ServiceRequest for a lab (LOINC)."""
    return {"resourceType": "ServiceRequest", "id": oid, "status": "draft", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": loinc}]}}


def order_prefetch(rs: cdss.Ruleset, hook: str, pid: str,
                   record: list[dict[str, Any]]) -> dict[str, Any]:
    """A prefetch satisfying every template of ``hook``: observations split by code."""
    templates = prefetch_templates(rs, hook)
    out: dict[str, Any] = {k: None for k in templates}
    out["patient"] = patient(pid)
    for key, query in templates.items():
        params = parse_qs(urlsplit(query).query)
        if "code" not in params:
            continue
        codes = set(params["code"][0].split(","))
        found = [r for r in record if r["resourceType"] == "Observation"
                 and f"{r['code']['coding'][0]['system']}|{r['code']['coding'][0]['code']}"
                 in codes]
        out[key] = bundle(*found, kind="searchset") if found else None
    return out


def order_request(rs: cdss.Ruleset, hook: str, record: list[dict[str, Any]],
                  orders: list[dict[str, Any]], selections: list[str] | None = None, *,
                  pid: str = PID, instance: str | None = None) -> dict[str, Any]:
    """An order-select (with ``selections``) or order-sign request body."""
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": pid,
                               "encounterId": "e1",
                               "draftOrders": bundle(*orders, kind="collection")}
    if hook == "order-select":
        context["selections"] = selections if selections is not None else [
            f"{o['resourceType']}/{o['id']}" for o in orders[:1]]
    return {"hook": hook, "hookInstance": instance or str(uuid.uuid4()), "context": context,
            "prefetch": order_prefetch(rs, hook, pid, record)}
