"""What a ruleset's own files say about the records it reads, for the code
that writes synthetic records (the hypothesis strategies of ``cdss.testing``
and the cohort generator of ``cdss.cohort``).

Everything here is read from the value sets and the compiled rules: the
codings of each concept (aliases resolved through ``valuesets.systems``), the
units a value of an analyte can be written in with their factors to the
canonical unit, the values at and around every threshold a rule compares an
analyte with, and the facts of the rules that raise a critical flag. Nothing
here knows about a clinical topic, and nothing imports hypothesis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from cdss.rulesets._compiled import CompiledRule, Pattern, Test
from cdss.rulesets._schema import Analyte, ValueSetFile

__all__ = [
    "SPELLINGS",
    "UNRELATED_CONDITIONS",
    "UNRELATED_LABS",
    "Coding",
    "around",
    "boundary_points",
    "concept_codings",
    "critical_facts",
    "lab_codings",
    "patterns",
    "plausible",
    "significant",
    "steps",
    "thresholds",
    "unit_factors",
    "written",
]

#: (system URI, code, display)
Coding = tuple[str, str, "str | None"]

# Amount-of-substance concentrations, in mmol/L per unit. Equivalents use the
# analyte's valence and mass concentrations its molar mass (both data).
_MOLAR = {"mmol/L": 1.0, "umol/L": 1e-3}
_MASS = {"mg/dL": 1.0}  # mg/dL per unit
_EQUIVALENTS = "meq/L"
#: How EHR feeds write these units as plain text, without a UCUM coding; every
#: spelling here is one cdss reads (checked by the test suite).
SPELLINGS: dict[str, tuple[str, ...]] = {
    "mmol/L": ("mmol/l",),
    "umol/L": ("umol/l", "µmol/L"),
    "meq/L": ("mEq/L", "meq/l"),
    "mg/dL": ("mg/dl",),
    "mosm/kg": ("mOsm/kg",),
    "mL/min/{1.73_m2}": ("mL/min/1.73m2",),
}
#: Resources no clinical ruleset is expected to map: LOINC (code, display,
#: value, unit) and SNOMED CT (code, display); use those the ruleset's
#: terminology does not read.
UNRELATED_LABS = (("718-7", "Hemoglobin [Mass/volume] in Blood", 13.5, "g/dL"),
                  ("8867-4", "Heart rate", 72, "/min"),
                  ("29463-7", "Body weight", 70.5, "kg"))
UNRELATED_CONDITIONS = (("38341003", "Hypertensive disorder"),
                        ("195967001", "Asthma"),
                        ("40055000", "Chronic sinusitis"))


# --------------------------------------------------------------------------- #
# Units and values
# --------------------------------------------------------------------------- #
def unit_factors(analyte: Analyte) -> dict[str, float]:
    """The units a value of ``analyte`` can be written in, each with the
    factor that turns a value in that unit into the canonical unit.

    The canonical unit comes first (factor 1). mmol/L, umol/L, meq/L and mg/dL
    are added where the analyte's canonical unit is one of them and its
    valence (for meq/L) or molar mass (for mg/dL and the molar units) allows
    the conversion; other analytes are written in their canonical unit only.
    """
    canonical = analyte.canonical_unit
    mass = analyte.molar_mass_g_per_mol
    valence = analyte.valence

    def mmol_per(unit: str) -> float | None:
        if unit in _MOLAR:
            return _MOLAR[unit]
        if unit == _EQUIVALENTS:
            return 1.0 / valence if valence else None
        if unit in _MASS:
            return _MASS[unit] * 10.0 / mass if mass else None
        return None

    factors = {canonical: 1.0}
    base = mmol_per(canonical)
    if base is None:
        return factors
    for unit in (*_MOLAR, _EQUIVALENTS, *_MASS):
        per = mmol_per(unit)
        if unit != canonical and per is not None:
            factors[unit] = per / base
    return factors


def significant(value: float, digits: int = 12) -> float:
    """``value`` rounded to ``digits`` significant digits."""
    return float(f"{value:.{digits}g}")


def written(canonical_value: float, factor: float) -> float:
    """``canonical_value`` written in a unit of ``factor``, as short as it can
    be while reading back as the same canonical value (cdss keeps ten
    significant digits)."""
    raw = canonical_value / factor
    for digits in (6, 9, 12):
        short = significant(raw, digits)
        if significant(short * factor, 10) == significant(canonical_value, 10):
            return short
    return raw


def plausible(analyte: Analyte) -> tuple[float, float]:
    """The plausible range of ``analyte`` (canonical unit), or a wide one when
    the value sets give none."""
    if analyte.plausible is not None:
        return float(analyte.plausible[0]), float(analyte.plausible[1])
    return 0.0, 1e6


def steps(value: float) -> tuple[float, float]:
    """A fine and a coarse step around ``value``: a thousandth and a tenth of
    its order of magnitude."""
    exponent = math.floor(math.log10(abs(value))) if value else 0
    return 10.0 ** (exponent - 3), 10.0 ** (exponent - 1)


def thresholds(tests: Iterable[Test]) -> list[float]:
    """The numbers ``tests`` compare with, in the order of the tests."""
    found: list[float] = []
    for test in tests:
        values = test.value if test.op == "in" else (test.value,)
        found += [float(v) for v in values
                  if not isinstance(v, bool) and isinstance(v, (int, float))]
    return found


def around(threshold: float) -> list[float]:
    """``threshold``, just below and just above it (a fine step), and a coarse
    step below and above it."""
    fine, coarse = steps(threshold)
    return [significant(threshold + d) for d in (0.0, -fine, fine, -coarse, coarse)]


def boundary_points(tests: Iterable[Test], low: float, high: float) -> list[float]:
    """Values at, just below and just above every numeric threshold of
    ``tests`` (and a coarse step further), inside ``[low, high]``, each once,
    in the order of the tests."""
    points = [p for v in thresholds(tests) for p in around(v)]
    return [p for i, p in enumerate(points) if p not in points[:i] and low <= p <= high]


# --------------------------------------------------------------------------- #
# Concepts and rules
# --------------------------------------------------------------------------- #
def concept_codings(valuesets: ValueSetFile) -> dict[str, list[Coding]]:
    """Every concept's codings, system aliases resolved, in file order."""
    return {name: [(valuesets.systems.get(c.system, c.system), c.code, c.display)
                   for c in concept.codes]
            for name, concept in valuesets.concepts.items()}


def lab_codings(codings: list[Coding], factors: dict[str, float],
                unit: str | None) -> list[Coding]:
    """A lab concept's ``codings``, those whose display names the kind of
    quantity ``unit`` measures first (a mass unit under a Mass/volume LOINC
    code), so that generated labs look like real ones; ``factors`` are the
    analyte's :func:`unit_factors`."""
    if unit is None or len(factors) < 2:
        return codings
    wanted = "[Mass/" if unit in _MASS else "[Moles/" if unit in (*_MOLAR, _EQUIVALENTS) \
        else None
    fitting = [c for c in codings if wanted and c[2] and wanted in c[2]]
    neutral = [c for c in codings if not (c[2] and ("[Mass/" in c[2] or "[Moles/" in c[2]))]
    return fitting or neutral or codings


def patterns(rules: Sequence[CompiledRule]) -> list[Pattern]:
    """Every pattern of ``rules`` (``all``, ``any``, ``none``), in rule order."""
    return [p for rule in rules for p in (*rule.all, *rule.any, *rule.none)]


def critical_facts(rules: Sequence[CompiledRule]) -> list[str]:
    """The facts the ``all`` and ``any`` patterns of the rules raising a
    critical flag test, in rule order: what a ruleset treats as a red flag."""
    found: list[str] = []
    for rule in rules:
        if any(a.flag is not None and a.flag.severity == "critical" for a in rule.rule.then):
            found += [p.fact for p in (*rule.all, *rule.any) if p.fact not in found]
    return found
