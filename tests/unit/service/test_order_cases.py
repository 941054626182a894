"""The clinical cases with draft orders, through the CDS Hooks order hooks over HTTP.

Every case of ``rulesets/plantar-cramps/cases/`` that drafts orders and states
what plantar-cramps 1.4.0 answers is sent as an order-sign and an order-select
call (all of its draft orders selected) to a service answering with 1.4.0: the
cards on the orders are exactly the order flags the case expects, with the
expected severity as their indicator, and a flag whose rule suggests removing the
draft (a labelled contraindication) carries a ``delete`` suggestion of that order.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import yaml

import cdss
from cdss.rulesets import ORDER, builtin_folder
from cdss.service import create_app, serve_in_background
from tests.support.builders import bundle
from tests.support.orders import order_prefetch
from tests.unit.hooks.test_cds_hooks import assert_spec_cards

SPEC = "plantar-cramps@1.4.0"
VERSION = SPEC.split("@")[1]
NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
INDICATOR = {"low": "info", "moderate": "warning", "high": "warning", "critical": "critical"}
CASES = [(p, c) for p in sorted((builtin_folder() / "plantar-cramps" / "cases").glob("*.yaml"))
         for c in [yaml.safe_load(p.read_text())]
         if c.get("draft_orders") and VERSION in c["expected"]
         and "error" not in c["expected"][VERSION]]


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(app) as url:
        yield url


def _order_flags(rs: cdss.Ruleset) -> dict[str, bool]:
    """The codes of the flags raised by rules on draft orders, and whether a rule
    raising it suggests removing the order."""
    out: dict[str, bool] = {}
    for rule in rs.rules:
        if any(p.fact == ORDER for p in rule.all):
            for action in rule.rule.then:
                if action.flag:
                    out[action.flag.code] = out.get(action.flag.code, False) or \
                        action.flag.order_suggestion == "remove"
    return out


def _request(rs: cdss.Ruleset, hook: str, case: dict[str, Any]) -> dict[str, Any]:
    record = case["record"]
    pid = next(r["id"] for r in record if r["resourceType"] == "Patient")
    prefetch = order_prefetch(rs, hook, pid, record)
    prefetch["patient"] = next(r for r in record if r["resourceType"] == "Patient")
    for key, rtype in (("conditions", "Condition"), ("medicationRequests", "MedicationRequest"),
                       ("medicationStatements", "MedicationStatement"),
                       ("allergies", "AllergyIntolerance")):
        if key in prefetch:
            found = [r for r in record if r["resourceType"] == rtype]
            prefetch[key] = bundle(*found, kind="searchset")
    orders = case["draft_orders"]
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": pid,
                               "draftOrders": bundle(*orders, kind="collection")}
    if hook == "order-select":
        context["selections"] = case.get("selections") or [
            f"{o['resourceType']}/{o['id']}" for o in orders]
    return {"hook": hook, "hookInstance": "d1a0f0b2-1c2e-4f7a-9a55-0d6f1d3b7e21",
            "context": context, "prefetch": prefetch}


def test_there_are_order_cases_for_every_order_flag(rs: cdss.Ruleset) -> None:
    assert len(CASES) >= 10
    expected = {code for _, c in CASES for code in c["expected"][VERSION]["flags"]}
    assert set(_order_flags(rs)) <= expected


#: A case naming its selections is an order-select call; every other case is sent
#: as order-sign and as order-select with every draft order selected.
CALLS = [pytest.param(path, case, hook, id=f"{path.stem}-{hook}") for path, case in CASES
         for hook in (("order-select",) if case.get("selections") is not None
                      else ("order-sign", "order-select"))]


@pytest.mark.parametrize(("path", "case", "hook"), CALLS)
def test_order_case_through_the_order_hooks(base: str, rs: cdss.Ruleset, hook: str,
                                            path: Any, case: dict[str, Any]) -> None:
    order_flags = _order_flags(rs)
    expected = {code: severity for code, severity in case["expected"][VERSION]["flags"].items()
                if code in order_flags}
    sid = f"plantar-cramps-{hook}"
    r = httpx.post(f"{base}/cds-services/{sid}", json=_request(rs, hook, case), timeout=30)
    assert r.status_code == 200, r.text
    cards = assert_spec_cards(r.json())
    on_orders = [c for c in cards if c["source"].get("topic", {}).get("code") in order_flags]
    assert {c["source"]["topic"]["code"] for c in on_orders} == set(expected), path.name
    refs = {f"{o['resourceType']}/{o['id']}" for o in case["draft_orders"]}
    assessment = cdss.evaluate(case["record"], ruleset=rs, as_of=case["as_of"],
                               draft_orders=case["draft_orders"],
                               selections=case.get("selections"))
    for card in on_orders:
        code = card["source"]["topic"]["code"]
        assert card["indicator"] == INDICATOR[expected[code]], (path.name, code)
        removes = [a for s in card.get("suggestions", []) for a in s["actions"]
                   if a["type"] == "delete"]
        flag = assessment.flag(code)
        assert flag is not None
        if flag.order_suggestion == "remove":
            assert removes and {ref for a in removes for ref in a["resourceId"]} <= refs
        else:
            assert not removes
