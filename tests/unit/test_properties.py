"""Invariants of evaluate(), stated in words, then as hypothesis properties.

1. The order of the resources does not change the Assessment.
2. A magnesium value in mg/dL and its mmol/L equivalent give the same Assessment.
3. The rete engine and the reference evaluator agree.
4. Any JSON input gives an Assessment or a CDSSError, never another exception.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cdss
from tests.support.builders import condition, finding, lab, medication, patient
from tests.support.paths import ROOT

AS_OF = "2026-03-01"
RULESET = cdss.load_ruleset("plantar-cramps@1.0.0")
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

FINDINGS = ["leg-cramps", "heel-pain", "first-step-pain", "calf-tightness", "low-fluid-intake",
            "radiating-leg-pain", "low-back-pain-symptom", "saddle-anaesthesia",
            "foot-numbness-tingling", "bilateral-leg-symptoms"]
CONDITIONS = ["202882003", "23056005", "279039007", "302226006", "73211009", "34095006"]
LABS = [("2823-3", "mmol/L", 2.0, 6.5), ("6298-4", "meq/L", 2.0, 6.5),
        ("2951-2", "mmol/L", 125, 160), ("2692-2", "mosm/kg", 260, 320),
        ("3094-0", "mg/dL", 5, 60), ("2160-0", "mg/dL", 0.5, 3),
        ("5811-5", "{nominal}", 1.0, 1.04), ("33914-3", "mL/min/{1.73_m2}", 10, 120)]
DAYS = st.integers(min_value=1, max_value=120)


def _day(days_before: int) -> str:
    return (date(2026, 3, 1) - timedelta(days=days_before)).isoformat()


@st.composite
def records(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [patient(birth=draw(st.sampled_from(
        ["1950-01-01", "1980-06-15", "2001-12-31"])))]
    for i, code in enumerate(draw(st.lists(st.sampled_from(FINDINGS), max_size=5, unique=True))):
        out.append(finding(f"f{i}", code, present=draw(st.booleans()),
                           site=draw(st.sampled_from([None, "calf", "foot"])),
                           nocturnal=draw(st.sampled_from([None, True, False])),
                           when=_day(draw(DAYS))))
    for i, code in enumerate(draw(st.lists(st.sampled_from(CONDITIONS), max_size=3,
                                           unique=True))):
        out.append(condition(f"c{i}", code))
    for i, (code, unit, low, high) in enumerate(draw(st.lists(st.sampled_from(LABS),
                                                              max_size=5))):
        value = draw(st.floats(min_value=low, max_value=high, allow_nan=False))
        out.append(lab(f"l{i}", code, round(value, 3), unit, when=_day(draw(DAYS))))
    if draw(st.booleans()):
        out.append(medication("m0", "316049"))
    return out


@FAST
@given(record=records(), data=st.data())
def test_resource_order_does_not_matter(record: list[dict[str, Any]], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(record))
    a = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF)
    b = cdss.evaluate(shuffled, ruleset=RULESET, as_of=AS_OF)
    assert a.to_json() == b.to_json()


@FAST
@given(record=records(), mmol=st.floats(min_value=0.3, max_value=1.2))
def test_magnesium_unit_does_not_matter(record: list[dict[str, Any]], mmol: float) -> None:
    mmol = round(mmol, 4)
    in_mmol = [*record, lab("mg", "2601-3", mmol, "mmol/L")]
    in_mg = [*record, lab("mg", "19123-9", mmol * 2.4305, "mg/dL")]
    in_meq = [*record, lab("mg", "2601-3", mmol * 2, "meq/L")]
    results = [cdss.evaluate(r, ruleset=RULESET, as_of=AS_OF) for r in (in_mmol, in_mg, in_meq)]
    # flags, plan and requests agree; evidence values agree after rounding
    summary = {(tuple(f.code for f in a.flags), tuple(p.code for p in a.plan),
                tuple(d.analyte for d in a.data_requests)) for a in results}
    assert len(summary) == 1


@FAST
@given(record=records())
def test_rete_and_reference_agree(record: list[dict[str, Any]]) -> None:
    rete = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF, engine="rete")
    reference = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF, engine="reference")
    assert rete.to_json(engine=False) == reference.to_json(engine=False)


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["resourceType", "id", "status", "code", "subject",
                                       "valueQuantity", "value", "unit", "entry", "resource",
                                       "type", "coding", "system", "reference"]),
                      children, max_size=5),
    max_leaves=20,
)
RESOURCE_TYPES = st.sampled_from(["Patient", "Observation", "Condition", "Bundle",
                                  "AllergyIntolerance", "MedicationRequest", "Encounter", "X"])


@st.composite
def hostile(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(min_value=0, max_value=3))
    if kind == 0:
        return draw(JSON)
    if kind == 1:
        return draw(st.text(max_size=40))
    resource = draw(st.dictionaries(st.sampled_from(["id", "status", "code", "subject",
                                                     "valueQuantity", "entry", "type"]),
                                    JSON, max_size=5))
    resource["resourceType"] = draw(RESOURCE_TYPES)
    if kind == 2:
        return [resource]
    return json.dumps({"resourceType": "Bundle", "type": "collection",
                       "entry": [{"resource": resource}]}, allow_nan=True)


@settings(max_examples=300, deadline=None)
@given(record=hostile())
def test_any_input_gives_an_assessment_or_a_cdss_error(record: Any) -> None:
    try:
        result = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF)
    except cdss.CDSSError:
        return
    assert isinstance(result, cdss.Assessment)


# --------------------------------------------------------------------------- #
# Mutated real-shaped records: an Assessment or a CDSSError, never a crash
# --------------------------------------------------------------------------- #
EXAMPLES = sorted((ROOT / "examples" / "patients").glob("*.json"))


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


def _extension_chain(n: int) -> Any:
    value: Any = {"url": "http://example.org/x", "valueString": "a"}
    for _ in range(n):
        value = {"url": "http://example.org/x", "extension": [value]}
    return [value]


HOSTILE_VALUES = st.sampled_from([
    lambda: 10**30, lambda: -(10**30), lambda: 2**63, lambda: 1e-05, lambda: 5e-324,
    lambda: 1e16, lambda: 1e300, lambda: -0.0, lambda: 0, lambda: "3.2", lambda: "",
    lambda: "1e-05", lambda: None, lambda: True, lambda: [], lambda: {},
    lambda: "2026-02-01T10:00:00", lambda: "2026-13-40", lambda: "yesterday",
    lambda: "\u0000", lambda: "\U0001d523\U0001d525", lambda: _deep(1000),
    lambda: _extension_chain(190), lambda: {"coding": {"code": 1}},
]).map(lambda make: make()) | st.floats(allow_nan=False, allow_infinity=False)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=st.sampled_from(EXAMPLES), data=st.data(), mode=st.sampled_from(["strict", "lean"]),
       engine=st.sampled_from(["rete", "reference"]))
def test_a_mutated_record_gives_an_assessment_or_a_cdss_error(
        example: Path, data: st.DataObject, mode: str, engine: str) -> None:
    record = json.loads(example.read_text())
    paths = _paths(record)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path, value = data.draw(st.sampled_from(paths)), data.draw(HOSTILE_VALUES)
        node = record
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation replaced this path's parent
    try:
        result = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF, mode=mode, engine=engine)
    except cdss.CDSSError:
        return
    assert isinstance(result, cdss.Assessment)
