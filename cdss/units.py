"""Units: a lab quantity converted to its analyte's canonical unit.

UCUM unit strings are parsed by ucumvert (a UCUM grammar on top of pint).
Conversions between amount and mass use the analyte's molar mass, and
equivalents use its valence; both are data in the ruleset's value-set file.
A unit that cannot be parsed or converted makes the value *indeterminate*
with a reason: a value is never guessed. A unit library that cannot load is a
broken installation: :class:`~cdss.errors.DependencyError` at first use, naming
the package versions, never a note on each lab (Pint 0.26 refuses ucumvert
0.3's definitions, so the project pins Pint below it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cdss.errors import DependencyError

if TYPE_CHECKING:  # a type only: units need no ruleset loading
    from cdss.rulesets import Analyte

__all__ = ["MAX_UNIT_LENGTH", "Conversion", "convert"]

# Common non-UCUM spellings seen in EHR feeds, mapped to their UCUM codes.
_SPELLINGS = {
    "meq/l": "meq/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "mg/dl": "mg/dL",
    "mosm/kg": "mosm/kg",
    "mosmol/kg": "mosm/kg",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73 m2": "mL/min/{1.73_m2}",
    "ml/min/{1.73_m2}": "mL/min/{1.73_m2}",
    "ml/min": "mL/min",
    "mg/l": "mg/L",
}
_ANNOTATION_ONLY = re.compile(r"^\{[^{}]*\}$")
#: The longest unit string parsed. Real UCUM units are a few characters; the
#: parser's cost grows faster than the length (4,096 nested brackets: about a
#: second), so a longer string is a unit cdss cannot read, at once.
MAX_UNIT_LENGTH = 64


@dataclass(frozen=True)
class Conversion:
    """A converted value, or ``value is None`` with the ``reason`` why not."""

    value: float | None
    unit: str
    reason: str | None = None
    note: str | None = None


def _versions() -> str:
    import importlib.metadata

    found = []
    for package in ("ucumvert", "pint"):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


@lru_cache(maxsize=1)
def _registry() -> Any:
    """The UCUM unit registry, loaded once; DependencyError when it cannot load."""
    try:
        from ucumvert import PintUcumRegistry

        registry = PintUcumRegistry()
        registry.from_ucum("mmol/L")
    except Exception as exc:  # any failure here is the installation's, not the data's
        raise DependencyError(
            f"the UCUM unit registry cannot load ({type(exc).__name__}: {exc}) with "
            f"{_versions()}; cdss needs pint>=0.24,<0.26 with ucumvert 0.3: "
            "pip install 'pint>=0.24,<0.26'",
            package="ucumvert",
        ) from exc
    return registry


@lru_cache(maxsize=1024)
def _parse(unit: str) -> tuple[Any, int] | None:
    """(pint quantity of one unit, equivalents flag) or None when unparseable.

    UCUM defines ``eq`` as a mole of charge, so for ions a factor of the
    valence is applied by the caller; here ``eq`` is rewritten to ``mol`` and
    flagged.
    """
    text = unit.strip()
    if len(text) > MAX_UNIT_LENGTH:
        return None
    if text in ("", "1") or _ANNOTATION_ONLY.match(text):
        text = "1"
    text = _SPELLINGS.get(text.lower(), text)
    equivalents = 0
    if re.search(r"(?<![a-z])(m|u|n)?eq(?![a-z])", text):
        text = re.sub(r"(?<![a-z])((?:m|u|n)?)eq(?![a-z])", r"\1mol", text)
        equivalents = 1
    # An annotation after a unit is semantically void in UCUM.
    text = re.sub(r"/\{[^{}]*\}", "", text)
    registry = _registry()  # outside the try: a broken installation is not a bad unit
    try:
        quantity = registry.from_ucum(text)
        if isinstance(quantity, (int, float)):  # ucumvert 0.2 returns a bare number for "1"
            quantity = registry.Quantity(quantity, "dimensionless")
        _ = quantity.dimensionality
    except Exception:  # the parser raises several unrelated types
        return None
    return quantity, equivalents


@lru_cache(maxsize=4096)
def _factor(unit: str, canonical: str, molar_mass: float | None, valence: int | None) -> (
    tuple[float | None, str | None]
):
    """Multiplicative factor from ``unit`` to ``canonical``, or (None, reason)."""
    src = _parse(unit)
    if src is None:
        if len(unit.strip()) > MAX_UNIT_LENGTH:
            return None, (f"unit of {len(unit):,} characters is longer than any UCUM unit "
                          f"cdss reads ({MAX_UNIT_LENGTH})")
        return None, f"unit {unit!r} is not a UCUM unit cdss can read"
    dst = _parse(canonical)
    if dst is None:  # pragma: no cover - canonical units are validated data
        return None, f"canonical unit {canonical!r} is not readable"
    (sq, s_eq), (dq, d_eq) = src, dst
    if s_eq or d_eq:
        if not valence:
            return None, f"unit {unit!r} is in equivalents but the analyte has no valence"
        sq = sq / valence if s_eq else sq
        dq = dq / valence if d_eq else dq
    try:
        if sq.dimensionality == dq.dimensionality:
            return float((sq / dq).to_base_units().magnitude), None
        if molar_mass is not None:
            registry = sq._REGISTRY
            molar = registry.Quantity(molar_mass, registry.parse_units("g/mol"))
            for candidate in (sq * molar, sq / molar):
                if candidate.dimensionality == dq.dimensionality:
                    return float((candidate / dq).to_base_units().magnitude), None
    except Exception:  # pint raises several types for odd combinations
        return None, f"unit {unit!r} cannot be converted to {canonical!r}"
    return None, f"unit {unit!r} cannot be converted to {canonical!r} for this analyte"


def convert(value: float, unit: str | None, analyte: Analyte) -> Conversion:
    """Convert ``value`` in ``unit`` to the analyte's canonical unit."""
    canonical = analyte.canonical_unit
    if unit is None:
        return Conversion(None, canonical, reason="the quantity has no unit")
    if not math.isfinite(value):
        return Conversion(None, canonical, reason="the value is not a finite number")
    factor, reason = _factor(unit, canonical, analyte.molar_mass_g_per_mol, analyte.valence)
    if factor is None:
        return Conversion(None, canonical, reason=reason)
    return Conversion(value * factor, canonical, note=_annotation_note(unit, canonical))


@lru_cache(maxsize=4096)
def _annotation_note(unit: str, canonical: str) -> str | None:
    """The note for a unit read as an annotated canonical unit it equals once
    annotations are dropped (``{SG}`` for ``1``), else None."""
    if "{" in canonical and unit.strip() != canonical and _parse(unit) == _parse(canonical):
        return f"unit {unit!r} read as {canonical!r} (UCUM annotations carry no dimension)"
    return None
