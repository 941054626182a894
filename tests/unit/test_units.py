"""Units: conversion to the analyte's canonical unit; never a guess."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cdss.rulesets import Analyte
from cdss.units import convert

MG = Analyte(canonical_unit="mmol/L", lookback_days=90, molar_mass_g_per_mol=24.305, valence=2)
K = Analyte(canonical_unit="mmol/L", lookback_days=90, valence=1)
CREAT = Analyte(canonical_unit="mg/dL", lookback_days=30, molar_mass_g_per_mol=113.12)
BUN = Analyte(canonical_unit="mg/dL", lookback_days=30, molar_mass_g_per_mol=28.0134)
EGFR = Analyte(canonical_unit="mL/min/{1.73_m2}", lookback_days=90)
SG = Analyte(canonical_unit="1", lookback_days=30)
OSM = Analyte(canonical_unit="mosm/kg", lookback_days=30)


@pytest.mark.parametrize(
    ("analyte", "value", "unit", "expected"),
    [
        (MG, 0.7, "mmol/L", 0.7),
        (MG, 1.7015, "mg/dL", 0.7),            # 0.7 mmol/L x 24.305 g/mol
        (MG, 1.4, "meq/L", 0.7),               # valence 2
        (MG, 1.4, "mEq/L", 0.7),               # common non-UCUM spelling
        (K, 3.2, "meq/L", 3.2),
        (K, 3.2, "mmol/l", 3.2),
        (CREAT, 88.4, "umol/L", 1.0),
        (CREAT, 88.4, "µmol/L", 1.0),
        (BUN, 7.14, "mmol/L", 20.0),           # urea mmol/L -> urea nitrogen mg/dL
        (EGFR, 50, "mL/min/{1.73_m2}", 50),
        (EGFR, 50, "mL/min/1.73m2", 50),
        (SG, 1.02, "{nominal}", 1.02),
        (SG, 1.02, "1", 1.02),
        (OSM, 300, "mosm/kg", 300),
    ],
)
def test_converts_to_canonical(analyte: Analyte, value: float, unit: str,
                               expected: float) -> None:
    result = convert(value, unit, analyte)
    assert result.reason is None
    assert result.value == pytest.approx(expected, rel=1e-3)
    assert result.unit == analyte.canonical_unit


@pytest.mark.parametrize(
    ("analyte", "unit", "why"),
    [
        (K, "mg/dL", "cannot be converted"),       # no molar mass for potassium here
        (K, "furlong", "not a UCUM unit"),
        (K, None, "no unit"),
        (MG, "mL/min", "cannot be converted"),
        (CREAT, "meq/L", "no valence"),
    ],
)
def test_unconvertible_unit_is_indeterminate_with_a_reason(analyte: Analyte, unit: str | None,
                                                           why: str) -> None:
    result = convert(1.0, unit, analyte)
    assert result.value is None
    assert result.reason is not None and why in result.reason


def test_a_unit_without_the_annotation_is_read_with_a_note() -> None:
    result = convert(50, "mL/min", EGFR)
    assert result.value == 50
    assert result.note is not None and "annotation" in result.note


# Units each analyte accepts (CLINICAL.md section 3, and the spellings EHR feeds use).
ACCEPTED = {
    "potassium": ["mmol/L", "mmol/l", "meq/L", "mEq/L"],
    "magnesium": ["mmol/L", "mg/dL", "mg/dl", "meq/L", "mEq/L"],
    "sodium": ["mmol/L", "meq/L", "mEq/L"],
    "osmolality": ["mosm/kg", "mOsm/kg"],
    "bun": ["mg/dL", "mmol/L"],
    "creatinine": ["mg/dL", "umol/L", "µmol/L"],
    "bun_creatinine_ratio": ["1", "{ratio}"],
    "urine_specific_gravity": ["1", "{nominal}", "{SG}"],
    "egfr": ["mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min/1.73 m2", "mL/min"],
}


def _shipped_analytes() -> list[tuple[str, str, Analyte]]:
    from cdss.rulesets import available_rulesets, load_ruleset

    out = []
    for spec in available_rulesets():
        rs = load_ruleset(spec)
        out += [(spec, name, analyte) for name, analyte in sorted(rs.valuesets.analytes.items())]
    return out


@pytest.mark.parametrize(("spec", "name", "analyte"), _shipped_analytes())
def test_the_registry_converts_every_unit_a_shipped_ruleset_accepts(
        spec: str, name: str, analyte: Analyte) -> None:
    assert name in ACCEPTED, f"{spec}: list the units {name} accepts"
    for unit in [analyte.canonical_unit, *ACCEPTED[name]]:
        result = convert(2.0, unit, analyte)
        assert result.value is not None and result.value > 0, (spec, name, unit, result.reason)


@pytest.fixture
def broken_unit_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ucumvert's registry refusing its definitions, as it does under Pint 0.26."""
    import ucumvert

    from cdss import units

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("Cannot define 'international_unit' (the alias i.U. is not valid)")

    caches = (units._registry, units._parse, units._factor)
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setattr(ucumvert, "PintUcumRegistry", broken)
    yield
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


@pytest.mark.usefixtures("broken_unit_library")
def test_a_unit_library_that_cannot_load_is_a_dependency_error() -> None:
    from cdss.errors import CDSSError, DependencyError

    with pytest.raises(DependencyError) as info:
        convert(3.2, "mmol/L", K)
    assert isinstance(info.value, CDSSError)
    assert "pint" in str(info.value) and "ucumvert" in str(info.value)
    assert "international_unit" in str(info.value)


@pytest.mark.usefixtures("broken_unit_library")
def test_a_broken_unit_library_fails_the_evaluation_not_each_lab() -> None:
    import cdss
    from cdss.errors import DependencyError
    from tests.support.builders import lab, patient

    with pytest.raises(DependencyError):
        cdss.evaluate([patient(), lab("k", "2823-3", 3.2, "mmol/L", when="2026-02-01")],
                      ruleset="plantar-cramps", as_of="2026-03-01")


def test_units_convert_after_the_broken_library_is_gone() -> None:
    assert convert(3.2, "mmol/L", K).value == pytest.approx(3.2)
