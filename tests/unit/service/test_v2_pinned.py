"""CDS Hooks 2.0 answers pinned byte for byte: serving CDS Hooks 3.0 beside 2.0
must not change a single byte a 2.0 client gets (discovery, cards, errors,
feedback). The files in ``pinned_v2/`` were written by the service before 3.0
was added; set ``CDSS_REPIN=1`` to write them again after a deliberate change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import cdss
from cdss.service import create_app, serve_in_background
from tests.support.builders import bundle, finding, lab, patient
from tests.support.orders import draft_med, order_request
from tests.unit.hooks.test_cds_hooks import full_prefetch, red_flag_record

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
PINNED = Path(__file__).parent / "pinned_v2"
INSTANCE = "5a1d2f60-7c1e-4a57-9d0e-2b3c4d5e6f70"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    app = create_app(rulesets=("plantar-cramps@1.0.0", "plantar-cramps@1.4.0"),
                     clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(app) as base, httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _k(v: float) -> dict[str, Any]:
    return lab("k1", "2823-3", v, "mmol/L", when="2026-02-20")


def _calls() -> dict[str, tuple[str, str, Any]]:
    """name -> (method, path, body)."""
    v1 = cdss.load_ruleset("plantar-cramps@1.0.0")
    v4 = cdss.load_ruleset("plantar-cramps@1.4.0")
    record = [*red_flag_record("p1"), _k(3.1)]
    pv: dict[str, Any] = {"hook": "patient-view", "hookInstance": INSTANCE,
                          "context": {"patientId": "p1", "userId": "Practitioner/u1"},
                          "prefetch": full_prefetch(v1, "p1", record)}
    sign = order_request(v4, "order-sign",
                         [_k(5.4), lab("m1", "2601-3", 0.8, "mmol/L", when="2026-02-20"),
                          finding("c1", "leg-cramps", when="2026-02-20")],
                         [draft_med("o1", "8591")], instance=INSTANCE)
    no_prefetch = {"hook": "patient-view", "hookInstance": INSTANCE,
                   "context": {"patientId": "p1"}}
    feedback = {"feedback": [{"card": "0d7c5b1e-1111-4f3a-8c2b-3a4b5c6d7e8f",
                              "outcome": "overridden",
                              "outcomeTimestamp": "2026-03-01T10:00:00Z"}]}
    other_patient = dict(pv, prefetch={**pv["prefetch"], "patient": patient("p2")})
    return {
        "discovery": ("GET", "/cds-services", None),
        "patient-view": ("POST", "/cds-services/plantar-cramps-1.0.0", pv),
        "order-sign": ("POST", "/cds-services/plantar-cramps-1.4.0-order-sign", sign),
        "error-400-not-json": ("POST", "/cds-services/plantar-cramps-1.0.0", b"{not json"),
        "error-400-other-patient": ("POST", "/cds-services/plantar-cramps-1.0.0",
                                    other_patient),
        "error-404-unknown-service": ("POST", "/cds-services/nope", pv),
        "error-412-no-data": ("POST", "/cds-services/plantar-cramps-1.0.0", no_prefetch),
        "error-405": ("GET", "/cds-services/plantar-cramps-1.0.0", None),
        "feedback": ("POST", "/cds-services/plantar-cramps-1.0.0/feedback", feedback),
        "empty-record": ("POST", "/cds-services/plantar-cramps-1.0.0",
                         dict(pv, prefetch={**{k: None for k in pv["prefetch"]},
                                            "patient": patient("p1"),
                                            "labs": bundle(kind="searchset")})),
    }


@pytest.mark.parametrize("name", sorted(_calls()))
def test_a_2_0_answer_is_unchanged_byte_for_byte(client: httpx.Client, name: str) -> None:
    method, path, body = _calls()[name]
    if isinstance(body, bytes):
        r = client.request(method, path, content=body,
                           headers={"Content-Type": "application/json"})
    else:
        r = client.request(method, path, json=body)
    got = f"{r.status_code} {r.headers.get('content-type')}\n".encode() + r.content
    pinned = PINNED / f"{name}.txt"
    if os.environ.get("CDSS_REPIN") == "1":
        pinned.write_bytes(got)
    assert pinned.exists(), f"{pinned} is missing: run once with CDSS_REPIN=1 to write it"
    assert got == pinned.read_bytes(), f"the 2.0 answer {name!r} changed"
