"""Draft orders: facts on both engines, the order hooks' requests, prefetch and cards."""

from __future__ import annotations

from typing import Any

import pytest

import cdss
from cdss.errors import HookRequestError, InputError, RulesetError
from cdss.hooks import (
    HOOKS,
    LAB_COUNT,
    SOURCE_EXTENSION,
    discovery,
    handle_hook,
    hook_services,
    prefetch_templates,
)
from cdss.outputs.cds_hooks import CARD_EXTENSION
from cdss.rulesets import load_ruleset_file
from tests.support.builders import finding, lab, patient
from tests.support.orders import ORDERS_SPEC, draft_lab, draft_med, order_request
from tests.unit.hooks.test_cds_hooks import assert_spec_cards

AS_OF = "2026-03-01"
ENGINES = ("rete", "reference")
FUROSEMIDE = "313988"  # Furosemide 40 MG Oral Tablet
LISINOPRIL = "314076"  # Lisinopril 10 MG Oral Tablet
KCL = "8591"  # Potassium Chloride


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(ORDERS_SPEC)


def k(value: float) -> dict[str, Any]:
    return lab("k1", "2823-3", value, "mmol/L", when="2026-02-20")


def mg(value: float) -> dict[str, Any]:
    return lab("m1", "2601-3", value, "mmol/L", when="2026-02-20")


def cramps() -> dict[str, Any]:
    return finding("c1", "leg-cramps", when="2026-02-20")


# --------------------------------------------------------------------------- #
# Facts
# --------------------------------------------------------------------------- #
def test_a_draft_order_is_an_order_fact_not_an_active_medication(rs: cdss.Ruleset) -> None:
    facts = cdss.extract_facts([patient()], ruleset=rs, as_of=AS_OF,
                               draft_orders=[draft_med("o1", FUROSEMIDE, "Furosemide 40 mg")])
    (order,) = [f for f in facts.items if f.kind == "order"]
    assert order.name == "order" and order.sources == ("MedicationRequest/o1",)
    assert order.values == {"concept": "loop_diuretic", "status": "draft", "selected": True,
                            "reference": "MedicationRequest/o1",
                            "resource_type": "MedicationRequest", "text": "Furosemide 40 mg"}
    assert facts.get("loop_diuretic") is None


def test_a_lab_service_request_is_a_draft_lab_order(rs: cdss.Ruleset) -> None:
    facts = cdss.extract_facts([patient()], ruleset=rs, as_of=AS_OF,
                               draft_orders=[draft_lab("s1", "2823-3")])
    (order,) = [f for f in facts.items if f.kind == "order"]
    assert order.values["concept"] == "potassium"
    assert order.values["resource_type"] == "ServiceRequest"


def test_a_draft_medication_known_by_name_is_noted(rs: cdss.Ruleset) -> None:
    facts = cdss.extract_facts([patient()], ruleset=rs, as_of=AS_OF,
                               draft_orders=[draft_med("o1", text="Potassium chloride 20 mEq")])
    assert [f.values["concept"] for f in facts.items if f.kind == "order"] == [
        "potassium_supplement"]
    assert [n.code for n in facts.data_quality] == ["medication-by-name"]


def test_selections_mark_the_orders_selected(rs: cdss.Ruleset) -> None:
    orders = [draft_med("o1", FUROSEMIDE), draft_med("o2", LISINOPRIL)]
    facts = cdss.extract_facts([patient()], ruleset=rs, as_of=AS_OF, draft_orders=orders,
                               selections=["MedicationRequest/o2"])
    assert {f.values["reference"]: f.values["selected"] for f in facts.items
            if f.kind == "order"} == {"MedicationRequest/o1": False,
                                      "MedicationRequest/o2": True}


def test_a_selection_naming_no_order_is_refused(rs: cdss.Ruleset) -> None:
    with pytest.raises(InputError, match="names no draft order"):
        cdss.extract_facts([patient()], ruleset=rs, as_of=AS_OF,
                           draft_orders=[draft_med("o1", FUROSEMIDE)],
                           selections=["MedicationRequest/o9"])


def test_a_draft_order_about_another_patient_is_refused(rs: cdss.Ruleset) -> None:
    with pytest.raises(InputError, match="about Patient/p2"):
        cdss.evaluate([patient()], ruleset=rs, as_of=AS_OF,
                      draft_orders=[draft_med("o1", FUROSEMIDE, pid="p2")])


def test_an_order_that_is_not_a_draft_is_left_out(rs: cdss.Ruleset) -> None:
    a = cdss.evaluate([patient(), cramps()], ruleset=rs, as_of=AS_OF,
                      draft_orders=[draft_med("o1", FUROSEMIDE, status="active")])
    assert a.incomplete and [lo.resource for lo in a.left_out] == ["MedicationRequest/o1"]
    assert a.flag("diuretic-order-electrolytes") is None


@pytest.mark.parametrize("engine", ENGINES)
def test_order_rules_on_both_engines(rs: cdss.Ruleset, engine: str) -> None:
    orders = [draft_med("o1", FUROSEMIDE), draft_med("o2", KCL), draft_lab("s1", "2601-3")]
    a = cdss.evaluate([patient(), cramps(), k(5.4)], ruleset=rs, as_of=AS_OF, engine=engine,
                      draft_orders=orders)
    by_code = {f.code: f for f in a.flags}
    assert [o.sources for o in by_code["diuretic-order-electrolytes"].orders] == [
        ["MedicationRequest/o1"]]
    removal = by_code["potassium-supplement-hyperkalemia"]
    assert removal.order_suggestion == "remove" and removal.severity == "high"
    assert [o.sources for o in removal.orders] == [["MedicationRequest/o2"]]
    assert a.data_requests == []  # magnesium is among the draft orders; potassium is known


@pytest.mark.parametrize("engine", ENGINES)
def test_a_missing_lab_names_the_orders_it_is_needed_for(rs: cdss.Ruleset, engine: str) -> None:
    a = cdss.evaluate([patient()], ruleset=rs, as_of=AS_OF, engine=engine,
                      draft_orders=[draft_med("o1", FUROSEMIDE), draft_med("o2", LISINOPRIL)])
    by_analyte = {d.analyte: [o.sources[0] for o in d.orders] for d in a.data_requests}
    assert by_analyte == {"potassium": ["MedicationRequest/o1", "MedicationRequest/o2"],
                          "magnesium": ["MedicationRequest/o1"]}


def test_older_versions_ignore_draft_orders() -> None:
    record = [patient(), cramps(), k(3.8), mg(0.8)]
    plain = cdss.evaluate(record, ruleset="plantar-cramps@1.2.0", as_of=AS_OF)
    drafted = cdss.evaluate(record, ruleset="plantar-cramps@1.2.0", as_of=AS_OF,
                            draft_orders=[draft_med("o1", FUROSEMIDE)])
    assert drafted.to_json() == plain.to_json()


def test_selected_may_not_be_negated(tmp_path: Any, rs: cdss.Ruleset) -> None:
    text = rs.path.read_text().replace(
        "- {fact: order, where: {selected: true, concept: potassium_supplement}}",
        "- {fact: order, where: {selected: false, concept: potassium_supplement}}")
    assert text != rs.path.read_text()
    folder = tmp_path / "plantar-cramps"
    folder.mkdir()
    for source in rs.path.parent.glob("*.yaml"):
        (folder / source.name).write_text(source.read_text())
    (folder / "1.3.0.yaml").write_text(text)
    with pytest.raises(RulesetError, match="selected may only be required"):
        load_ruleset_file(folder / "1.3.0.yaml")


# --------------------------------------------------------------------------- #
# The hooks
# --------------------------------------------------------------------------- #
def test_one_service_per_hook_with_source_attributes(rs: cdss.Ruleset) -> None:
    assert list(hook_services([rs])) == ["plantar-cramps", "plantar-cramps-order-select",
                                         "plantar-cramps-order-sign"]
    doc = discovery([rs], hooks=HOOKS)
    assert [(s["id"], s["hook"]) for s in doc["services"]] == [
        ("plantar-cramps", "patient-view"), ("plantar-cramps-order-select", "order-select"),
        ("plantar-cramps-order-sign", "order-sign")]
    source = doc["services"][1]["extension"][SOURCE_EXTENSION]
    assert source["version"] == "1.3.0" and source["developer"] and source["releaseDate"]
    assert any("PC-ORD-02" in s["rules"] for s in source["sources"])


def test_order_prefetch_is_bounded_to_the_newest_results(rs: cdss.Ruleset) -> None:
    templates = prefetch_templates(rs, "order-sign")
    assert "labs" not in templates
    assert templates["lab-potassium"].endswith(f"&_sort=-date&_count={LAB_COUNT}")
    assert "http://loinc.org|2823-3" in templates["lab-potassium"]
    assert templates["medicationRequests"].endswith("&status=active")
    assert prefetch_templates(rs)["medicationRequests"] == \
        "MedicationRequest?patient={{context.patientId}}"


@pytest.mark.parametrize(("change", "field"), [
    (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
    (lambda b: b["context"].pop("userId"), "context.userId"),
    (lambda b: b["context"].update(selections=["MedicationRequest/zz"]), "context.selections"),
    (lambda b: b["context"].update(selections=[]), "context.selections"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(status="active"),
     "status must be 'draft'"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(
        resourceType="Observation"), "is not an order type"),
    (lambda b: b["context"].update(draftOrders={"resourceType": "Patient"}),
     "context.draftOrders"),
    (lambda b: b.update(hook="patient-view"), "'order-select' hook"),
])
def test_order_select_requests_are_validated(rs: cdss.Ruleset, change: Any, field: str) -> None:
    body = order_request(rs, "order-select", [], [draft_med("o1", FUROSEMIDE)])
    change(body)
    with pytest.raises(HookRequestError) as info:
        handle_hook(body, rs, hook="order-select", as_of=AS_OF)
    assert info.value.status == 400 and field in info.value.reason


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_order_cards_name_the_draft_order(rs: cdss.Ruleset, hook: str) -> None:
    orders = [draft_med("o1", KCL, "Potassium chloride 20 mEq ER tablet")]
    body = order_request(rs, hook, [k(5.4), mg(0.8)], orders)
    found = assert_spec_cards(handle_hook(body, rs, hook=hook, as_of=AS_OF))
    removal = found[0]
    assert removal["indicator"] == "warning"
    assert "`MedicationRequest/o1`" in removal["detail"]
    assert "Potassium chloride 20 mEq ER tablet" in removal["detail"]
    (suggestion,) = removal["suggestions"]
    assert suggestion["actions"] == [{
        "type": "delete", "resourceId": ["MedicationRequest/o1"],
        "description": "Remove the draft order MedicationRequest/o1 (Potassium chloride 20 "
                       "mEq ER tablet)"}]
    risk = [c for c in found if "Hyperkalaemia risk with this order" in c["summary"]]
    assert len(risk) == 1 and "suggestions" not in risk[0]
    # only cards on the draft orders: no plan card, no patient-level flag card
    assert all("Draft order" in c["detail"] for c in found)
    provenance = removal["extension"][CARD_EXTENSION]
    assert provenance["version"] == "1.3.0" and provenance["developer"]
    assert provenance["releaseDate"] == "2026-12-02"
    assert [c["rule"] for c in provenance["citations"]] == ["PC-ORD-03"]


def test_a_missing_lab_card_orders_it_for_the_draft_order(rs: cdss.Ruleset) -> None:
    body = order_request(rs, "order-sign", [mg(0.8)], [draft_med("o1", LISINOPRIL)])
    (card,) = assert_spec_cards(handle_hook(body, rs, hook="order-sign", as_of=AS_OF))
    assert card["summary"].startswith("No recent potassium for the draft order")
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    resource = action["resource"]
    assert resource["code"]["coding"][0]["code"] == "2823-3"
    assert resource["supportingInfo"] == [{"reference": "MedicationRequest/o1"}]


def test_no_lab_card_when_the_lab_is_among_the_draft_orders(rs: cdss.Ruleset) -> None:
    orders = [draft_med("o1", LISINOPRIL), draft_lab("s1", "2823-3")]
    body = order_request(rs, "order-sign", [mg(0.8)], orders)
    assert handle_hook(body, rs, hook="order-sign", as_of=AS_OF) == {"cards": []}


def test_sign_is_at_least_as_strict_as_select(rs: cdss.Ruleset) -> None:
    orders = [draft_med("o1", FUROSEMIDE), draft_med("o2", LISINOPRIL), draft_med("o3", KCL)]
    record = [cramps(), k(5.3)]
    signed = handle_hook(order_request(rs, "order-sign", record, orders, instance=INSTANCE),
                         rs, hook="order-sign", as_of=AS_OF)["cards"]
    for ref in ("MedicationRequest/o1", "MedicationRequest/o2", "MedicationRequest/o3"):
        body = order_request(rs, "order-select", record, orders, [ref], instance=INSTANCE)
        selected = handle_hook(body, rs, hook="order-select", as_of=AS_OF)["cards"]
        assert selected, ref
        assert {c["summary"] for c in selected} <= {c["summary"] for c in signed}


INSTANCE = "5b0b1c62-3c5e-4b6d-9a07-0d0d6f3b6a11"


def test_order_cards_are_deterministic(rs: cdss.Ruleset) -> None:
    orders = [draft_med("o1", KCL)]
    body = order_request(rs, "order-sign", [k(5.4)], orders, instance=INSTANCE)
    first = handle_hook(body, rs, hook="order-sign", as_of=AS_OF)
    again = handle_hook(body, rs, hook="order-sign", as_of=AS_OF)
    assert first == again and first["cards"]
