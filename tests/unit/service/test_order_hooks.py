"""order-select and order-sign over HTTP on loopback: discovery, each order rule
firing and not firing, request validation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

import cdss
from cdss.hooks import HOOKS, discovery
from cdss.service import create_app, serve_in_background
from tests.support.builders import finding, lab
from tests.support.orders import ORDERS_SPEC, draft_lab, draft_med, order_request
from tests.unit.hooks.test_cds_hooks import assert_spec_cards

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
SELECT = "plantar-cramps-order-select"
SIGN = "plantar-cramps-order-sign"


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(ORDERS_SPEC)


@pytest.fixture(scope="module")
def base(rs: cdss.Ruleset) -> Iterator[str]:
    app = create_app(rulesets=(ORDERS_SPEC,), clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(app) as url:
        yield url


def post(base: str, sid: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/cds-services/{sid}", json=body, timeout=10)


def summaries(base: str, rs: cdss.Ruleset, hook: str, record: list[dict[str, Any]],
              orders: list[dict[str, Any]], selections: list[str] | None = None) -> list[str]:
    sid = SELECT if hook == "order-select" else SIGN
    r = post(base, sid, order_request(rs, hook, record, orders, selections))
    assert r.status_code == 200, r.text
    return [c["summary"] for c in assert_spec_cards(r.json())]


def k(v: float) -> dict[str, Any]:
    return lab("k1", "2823-3", v, "mmol/L", when="2026-02-20")


def mg(v: float) -> dict[str, Any]:
    return lab("m1", "2601-3", v, "mmol/L", when="2026-02-20")


def egfr(v: float) -> dict[str, Any]:
    return lab("e1", "98979-8", v, "mL/min/{1.73_m2}", when="2026-02-20")


CRAMPS = finding("c1", "leg-cramps", when="2026-02-20")


def test_discovery_lists_every_hook(base: str, rs: cdss.Ruleset) -> None:
    r = httpx.get(f"{base}/cds-services", timeout=10)
    assert r.status_code == 200 and r.json() == discovery([rs], hooks=HOOKS)
    assert [s["id"] for s in r.json()["services"]] == ["plantar-cramps", SELECT, SIGN]


#: (record, draft orders, the start of the card summary expected, or None for no card)
RULES = {
    "PC-ORD-01 fires": ([CRAMPS, k(3.9), mg(0.8)], [draft_med("o1", "313988")],
                        "Diuretic ordered"),
    "PC-ORD-01 quiet": ([k(4.2), mg(0.85)], [draft_med("o1", "313988")], None),
    "PC-ORD-02 fires": ([k(4.5), mg(0.8), egfr(40)], [draft_med("o1", "314076")],
                        "Hyperkalaemia risk with this order"),
    "PC-ORD-02 quiet": ([k(4.5), mg(0.8), egfr(60)], [draft_med("o1", "314076")], None),
    "PC-ORD-03 fires": ([k(5.4), mg(0.8), egfr(75)], [draft_med("o1", "8591")],
                        "Potassium supplement ordered with a high potassium"),
    "PC-ORD-03 quiet": ([k(4.6), mg(0.8), egfr(75)], [draft_med("o1", "8591")], None),
    "PC-ORD-04 fires": ([mg(0.8)], [draft_med("o1", "314076")], "No recent potassium"),
    "PC-ORD-04 quiet": ([mg(0.8)], [draft_med("o1", "314076"), draft_lab("s1", "2823-3")],
                        None),
    "PC-ORD-05 fires": ([k(4.2)], [draft_med("o1", "313988")], "No recent magnesium"),
    "PC-ORD-05 quiet": ([k(4.2)], [draft_med("o1", "313988"), draft_lab("s1", "2601-3")],
                        None),
}


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
@pytest.mark.parametrize("case", sorted(RULES))
def test_each_order_rule(base: str, rs: cdss.Ruleset, hook: str, case: str) -> None:
    record, orders, expected = RULES[case]
    found = summaries(base, rs, hook, record, orders)
    if expected is None:
        assert found == []
    else:
        assert any(s.startswith(expected) for s in found), found


def test_order_select_looks_at_the_selected_orders(base: str, rs: cdss.Ruleset) -> None:
    orders = [draft_med("o1", "313988"), draft_med("o2", "314076")]
    record = [CRAMPS, k(4.4), mg(0.8), egfr(80)]
    assert summaries(base, rs, "order-select", record, orders, ["MedicationRequest/o2"]) == []
    assert summaries(base, rs, "order-select", record, orders, ["MedicationRequest/o1"])
    assert summaries(base, rs, "order-sign", record, orders)


@pytest.mark.parametrize(("sid", "change", "field"), [
    (SELECT, lambda b: b["context"].pop("selections"), "context.selections"),
    (SELECT, lambda b: b["context"].update(selections=["ServiceRequest/x"]),
     "context.selections[0]"),
    (SIGN, lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
    (SIGN, lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(
        status="active"), "status must be 'draft'"),
    (SIGN, lambda b: b["context"].update(patientId="not a fhir id"), "context.patientId"),
    (SIGN, lambda b: b.update(hook="order-select"), "'order-sign' hook"),
])
def test_order_requests_are_validated(base: str, rs: cdss.Ruleset, sid: str, change: Any,
                                      field: str) -> None:
    hook = "order-select" if sid == SELECT else "order-sign"
    body = order_request(rs, hook, [], [draft_med("o1", "313988")])
    change(body)
    r = post(base, sid, body)
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]


def test_a_draft_order_about_another_patient_is_refused(base: str, rs: cdss.Ruleset) -> None:
    body = order_request(rs, "order-sign", [], [draft_med("o1", "313988", pid="p2")])
    r = post(base, SIGN, body)
    assert r.status_code == 400 and "Patient/p2" in r.json()["error"]["message"]


def test_patient_view_keeps_its_id(base: str, rs: cdss.Ruleset) -> None:
    body = order_request(rs, "order-sign", [], [draft_med("o1", "313988")])
    body["hook"] = "order-sign"
    assert post(base, "plantar-cramps", body).status_code == 400  # it answers patient-view
    assert post(base, "plantar-cramps-order-view", body).status_code == 404
