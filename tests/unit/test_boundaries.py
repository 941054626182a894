"""A value at a threshold stays at the threshold in every unit (plantar-cramps 1.4.0).

In words first:

1. For every threshold a rule compares an analyte's value with, and every unit
   the analyte is charted in, a value charted at the threshold's equivalent
   (rounded to the decimals labs chart that unit with) is read as the canonical
   value at the threshold, and gives the conclusions of the threshold charted in
   the canonical unit.
2. A value one reporting step below or above it is read on its side of the
   threshold.
3. For any value charted at any such precision, the value is beyond a threshold
   exactly when it is beyond the threshold's equivalent rounded to that precision
   in the charted unit: a conversion never flips a threshold.

A value's precision is the decimals it is written with: JSON parsers keep no
trailing zeros, so 1.700 is read as 1.7, at one decimal.

Versions without ``boundary_rounding: charted`` (1.0.0-1.3.0) keep reading the
converted value as it is: their answers do not change.
"""

from __future__ import annotations

import decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cdss
from cdss.rulesets import _content
from cdss.terminology import LOINC
from tests.support.builders import finding, lab, patient

AS_OF = "2026-03-01"
RULESET = cdss.load_ruleset("plantar-cramps@1.4.0")
#: Decimals labs chart a value with; a precision too coarse to stand for a
#: threshold (half a step above 5% of it) is not one labs use for it.
PRECISIONS = (0, 1, 2, 3)


def _decimals(value: float) -> int:
    if isinstance(value, int):
        return 0
    exponent = decimal.Decimal(repr(value)).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _round(value: float, places: int) -> float:
    """``value`` as a lab charts it with ``places`` decimals: a JSON integer
    when there are none."""
    step = decimal.Decimal(1).scaleb(-places)
    rounded = decimal.Decimal(repr(value)).quantize(step, rounding=decimal.ROUND_HALF_EVEN)
    return int(rounded) if places == 0 else float(rounded)


def _grid() -> list[Any]:
    """(analyte, threshold, unit, factor, places) for every threshold a rule
    compares an analyte's value with, every unit it converts from, and every
    precision labs chart that unit with."""
    params = []
    for analyte, thresholds in RULESET.boundaries.items():
        factors = _content.unit_factors(RULESET.valuesets.analytes[analyte])
        for threshold in thresholds:
            for unit, factor in factors.items():
                equivalent = threshold / factor
                for places in PRECISIONS:
                    if factor == 1.0 and places < _decimals(threshold):
                        continue  # the canonical unit charts the threshold as it is
                    if 0.5 * 10.0 ** -places > 0.05 * equivalent:
                        continue  # coarser than labs chart it
                    params.append(pytest.param(
                        analyte, threshold, unit, factor, places,
                        id=f"{analyte}-{threshold:g}-{unit}-{places}dp"))
    return params


GRID = _grid()


def _record(analyte: str, value: float, unit: str) -> list[dict[str, Any]]:
    code = RULESET.terminology.codes_of(analyte, LOINC)[0]
    return [patient(), finding("cr", "leg-cramps"),
            lab("x", code, value, unit, when="2026-02-20")]


def _value(analyte: str, value: float, unit: str) -> float:
    facts = cdss.extract_facts(_record(analyte, value, unit), ruleset=RULESET, as_of=AS_OF)
    fact = facts.get(analyte)
    assert fact is not None and fact.values["status"] == "determinate", fact
    read = fact.values["value"]
    assert isinstance(read, float)
    return read


def _conclusions(a: cdss.Assessment) -> tuple[Any, ...]:
    return ({f.code: f.severity for f in a.flags}, [p.code for p in a.plan],
            [s.code for s in a.suppressed], [r.code for r in a.referrals],
            [d.analyte for d in a.data_requests])


def test_the_grid_covers_every_analyte_threshold_and_unit() -> None:
    assert {p.values[0] for p in GRID} == set(RULESET.boundaries) >= {"potassium", "magnesium"}
    # magnesium in mg/dL at the precision labs chart it, the reported case
    assert any(p.values[:3] == ("magnesium", 0.7, "mg/dL") for p in GRID)
    units = {(p.values[0], p.values[2]) for p in GRID}
    assert {("potassium", "meq/L"), ("magnesium", "meq/L"), ("magnesium", "mg/dL")} <= units


@pytest.mark.parametrize(("analyte", "threshold", "unit", "factor", "places"), GRID)
def test_a_value_charted_at_a_thresholds_equivalent_is_the_threshold(
        analyte: str, threshold: float, unit: str, factor: float, places: int) -> None:
    charted = _round(threshold / factor, places)
    step = 10.0 ** -places
    assert _value(analyte, charted, unit) == pytest.approx(threshold, rel=1e-9)
    below, above = _round(charted - step, places), _round(charted + step, places)
    for neighbour, sign in ((below, -1), (above, 1)):
        if neighbour <= 0:
            continue
        read = _value(analyte, neighbour, unit)
        if _decimals(neighbour) == places:  # written at the same precision
            assert (read > threshold) if sign > 0 else (read < threshold), neighbour
        else:  # a trailing zero dropped (1.700 is 1.7): judged at its own precision
            assert _side(neighbour, threshold, factor) == _compare(read, threshold)
    canonical = RULESET.valuesets.analytes[analyte].canonical_unit
    at = cdss.evaluate(_record(analyte, charted, unit), ruleset=RULESET, as_of=AS_OF)
    there = cdss.evaluate(_record(analyte, threshold, canonical), ruleset=RULESET, as_of=AS_OF)
    assert _conclusions(at) == _conclusions(there)


def _compare(a: float, b: float) -> int:
    return (a > b) - (a < b)


def _side(charted: float, threshold: float, factor: float) -> int:
    """-1, 0 or 1: ``charted`` below, at or above the threshold's equivalent
    rounded to the decimals ``charted`` is written with (the raw comparison of
    the converted value where that precision is too coarse to stand for it)."""
    places = _decimals(charted)
    equivalent = threshold / factor
    if factor == 1.0 or 0.5 * 10.0 ** -places > 0.05 * equivalent:
        # the canonical unit needs no conversion; a coarse value is compared as read
        return _compare(charted * factor, threshold)
    return _compare(charted, _round(equivalent, places))


@settings(max_examples=150, deadline=None)
@given(point=st.sampled_from(GRID), offset=st.integers(min_value=-25, max_value=25))
def test_a_conversion_never_flips_a_threshold(point: Any, offset: int) -> None:
    analyte, threshold, unit, factor, places = point.values
    step = 10.0 ** -places
    charted = _round(_round(threshold / factor, places) + offset * step, places)
    low, high = _content.plausible(RULESET.valuesets.analytes[analyte])
    if not low <= charted * factor <= high:
        return  # not a measurement (an input error, tested elsewhere)
    read = _value(analyte, charted, unit)
    # beyond the threshold exactly when beyond its rounded equivalent
    assert _compare(read, threshold) == _side(charted, threshold, factor)


def test_the_magnesium_reported_at_the_lower_reference_limit_is_not_low() -> None:
    record = _record("magnesium", 1.7, "mg/dL")
    a = cdss.evaluate(record, ruleset=RULESET, as_of=AS_OF)
    assert a.flag("hypomagnesemia") is None
    note = next(n for n in a.data_quality if n.code == "at-threshold")
    assert note.resource == "Observation/x" and "read as 0.7" in note.message
    # the evidence still shows the value as charted
    facts = cdss.extract_facts(record, ruleset=RULESET, as_of=AS_OF)
    mg = facts.get("magnesium")
    assert mg is not None and mg.values["charted_value"] == 1.7


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0", "1.2.0", "1.3.0"])
def test_pinned_versions_read_the_converted_value_as_it_is(version: str) -> None:
    a = cdss.evaluate(_record("magnesium", 1.7, "mg/dL"), ruleset=f"plantar-cramps@{version}",
                      as_of=AS_OF)
    assert a.flag("hypomagnesemia") is not None
    assert not [n for n in a.data_quality if n.code == "at-threshold"]


def test_a_precision_too_coarse_for_a_threshold_is_not_read_as_it() -> None:
    # 1 mg/dL (no decimals) is 0.41 mmol/L: not the 0.50 threshold's equivalent
    # (1.2 mg/dL) at a precision labs chart magnesium with
    assert _value("magnesium", 1, "mg/dL") < 0.5
    a = cdss.evaluate(_record("magnesium", 1, "mg/dL"), ruleset=RULESET, as_of=AS_OF)
    hypo = a.flag("hypomagnesemia")
    assert hypo is not None and hypo.severity == "high"
