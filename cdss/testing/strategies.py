"""Hypothesis strategies of FHIR R4 records for a ruleset.

Every strategy reads the ruleset's own files: the concepts and their codings
(``valuesets.concepts[...].codes``, systems resolved through
``valuesets.systems``), the analytes with their canonical unit, molar mass,
valence, plausible range and lookback, and the compiled rules with their
thresholds. Nothing here knows about plantar fasciitis: the strategies work
for any ruleset, a site's own included.

A record is a list of FHIR R4 resource dicts holding exactly one Patient.
Times are relative to ``as_of``, which the caller controls and which must be
the ``as_of`` the record is evaluated at: a lab "2 days old" is dated two days
before it. Generated resources are valid FHIR R4 (they pass the strict intake
of :func:`cdss.evaluate`), and lab values stay inside their analyte's
plausible range, so the only errors a ruleset author meets are real ones.

Shrinking: every strategy shrinks towards the simplest record that still
fails, which means fewer resources, the first coding of a concept, the
canonical unit, status ``final``, active conditions, findings recorded as
present, dates at ``as_of``, and values at ``min_value`` (or, for
:func:`from_ruleset`, at the threshold of the first rule aimed at).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from hypothesis import strategies as st

from cdss.errors import InvalidArgument
from cdss.evaluation import resolve_as_of, resolve_ruleset
from cdss.rulesets import ORDER, Analyte, CompiledRule, Pattern, Ruleset, Test, _content
from cdss.terminology import LOINC, SNOMED, UCUM
from cdss.units import convert

__all__ = [
    "DEFAULT_AS_OF",
    "PATIENT_ID",
    "allergies",
    "conditions",
    "findings",
    "from_ruleset",
    "medications",
    "observations",
    "patients",
    "records",
    "unit_factors",
]

Resource = dict[str, Any]
RecordList = list[Resource]

#: The evaluation time records are dated against unless a caller gives one.
DEFAULT_AS_OF = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: The id of the generated Patient unless a caller gives one.
PATIENT_ID = "p1"

_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_FACT_KINDS = ("lab", "finding", "condition", "medication", "allergy")

# Units that are valid UCUM but convert to no analyte concentration, tried in
# order to make a value indeterminate.
_UNCONVERTIBLE = ("U/L", "[IU]/L", "kg")


# --------------------------------------------------------------------------- #
# Drawing: strategy objects are built once (hypothesis validates each new one)
# --------------------------------------------------------------------------- #
_BOOLEANS = st.booleans()


@lru_cache(maxsize=8192)
def _sampled(choices: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(choices)


@lru_cache(maxsize=8192)
def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def _pick(draw: st.DrawFn, choices: Sequence[Any]) -> Any:
    """One of ``choices``; shrinks towards the first."""
    index: int = draw(_ints(0, len(choices) - 1))
    return choices[index]


# --------------------------------------------------------------------------- #
# Units
# --------------------------------------------------------------------------- #
def unit_factors(analyte: Analyte) -> dict[str, float]:
    """``{unit: factor to the canonical unit}`` of the units the strategies
    write ``analyte`` in, the canonical unit first (factor 1): mmol/L, umol/L,
    meq/L and mg/dL as its valence and molar mass allow."""
    return _content.unit_factors(analyte)




# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #
def _suggestion(name: str, choices: Sequence[str]) -> str:
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {found[0]!r}?)" if found else ""


def _as_of(as_of: Any) -> datetime:
    if as_of is None:
        raise InvalidArgument("as_of must be given: generated records are dated relative to it")
    return resolve_as_of(as_of)


def _ruleset(ruleset: Any) -> Ruleset:
    return resolve_ruleset(ruleset)


def _patient_id(patient_id: Any) -> str:
    if not isinstance(patient_id, str) or not _FHIR_ID.match(patient_id):
        raise InvalidArgument(f"patient_id must be a FHIR id (1-64 of A-Z a-z 0-9 - .), "
                              f"got {patient_id!r}")
    return patient_id


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number or None, got {value!r}")
    return float(value)


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def _bool(name: str, value: Any, *, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name} must be True or False{' or None' if optional else ''}, "
                              f"got {value!r}")
    return value


# --------------------------------------------------------------------------- #
# What the strategies of one ruleset need
# --------------------------------------------------------------------------- #
def _instant(when: datetime) -> str:
    when = when.astimezone(timezone.utc)
    text = when.isoformat(timespec="microseconds" if when.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _birth_date(as_of: datetime, age: int, days_past_birthday: int) -> str:
    """The birth date of someone aged ``age`` at ``as_of`` whose birthday was
    ``days_past_birthday`` days before it."""
    today = as_of.date()
    year = today.year - age
    try:
        birthday = today.replace(year=year)
    except ValueError:  # 29 February in a year without one
        birthday = date(year, 2, 28)
    return (birthday - timedelta(days=days_past_birthday)).isoformat()


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)]}


class _Kit:
    """A ruleset's value sets, analytes and rules, read once, with the
    evaluation time and patient id records are written for."""

    def __init__(self, ruleset: Ruleset, as_of: datetime, patient_id: str) -> None:
        self.ruleset = ruleset
        self.as_of = as_of
        self.patient_id = patient_id
        self.subject = {"reference": f"Patient/{patient_id}"}
        vs = ruleset.valuesets
        self.valuesets = vs
        self.terminology = ruleset.terminology
        self.finding_lookback = ruleset.file.finding_lookback_days
        self.kinds: dict[str, str] = {name: c.kind for name, c in vs.concepts.items()}
        # derived_facts is a frozenset: sorted, so that nothing here follows the
        # string hash order of the process (PYTHONHASHSEED)
        self.kinds.update({name: "derived" for name in sorted(ruleset.derived_facts)})
        self.kinds["patient"] = "patient"
        self.kinds[ORDER] = ORDER
        self.codings: dict[str, list[_content.Coding]] = _content.concept_codings(vs)
        self.units = {name: unit_factors(a) for name, a in vs.analytes.items()}
        self.sites = [n for n, c in vs.concepts.items() if c.kind == "body_site" and c.codes]
        self.qualifiers = [n for n, c in vs.concepts.items()
                           if c.kind == "qualifier" and c.codes]
        self.producers: dict[str, list[CompiledRule]] = {}
        for rule in ruleset.rules:
            for action in rule.rule.then:
                if action.derive:
                    self.producers.setdefault(action.derive, []).append(rule)
        used: list[str] = []
        for rule in ruleset.rules:
            for pattern in (*rule.all, *rule.any, *rule.none):
                if self.kinds.get(pattern.fact) in _FACT_KINDS and pattern.fact not in used:
                    used.append(pattern.fact)
        for name, analyte in vs.analytes.items():
            for part in analyte.ratio_of or ():
                if name in used and part not in used:
                    used.append(part)
        rest = [n for n, c in vs.concepts.items() if c.kind in _FACT_KINDS and n not in used]
        #: fact concepts, those the rules use first (in rule order)
        self.concepts = [n for n in (*used, *rest) if self.codings.get(n)]
        self.unconvertible = {name: self._unconvertible(a) for name, a in vs.analytes.items()}
        self.unrelated_labs = [lab for lab in _content.UNRELATED_LABS
                               if not self.terminology.concepts_of_coding(LOINC, lab[0])]
        self.unrelated_conditions = [c for c in _content.UNRELATED_CONDITIONS
                                     if not self.terminology.concepts_of_coding(SNOMED, c[0])]

    @staticmethod
    def _unconvertible(analyte: Analyte) -> str | None:
        for unit in _UNCONVERTIBLE:
            if convert(1.0, unit, analyte).value is None:
                return unit
        return None

    # -- names -----------------------------------------------------------
    def concept(self, name: Any, kinds: Sequence[str], what: str) -> str:
        if not isinstance(name, str):
            raise InvalidArgument(f"{what} must be a concept name, got {name!r}")
        choices = [n for n, k in self.kinds.items() if k in kinds]
        if self.kinds.get(name) not in kinds:
            kind = self.kinds.get(name)
            known = f" is a {kind} concept, not a {' or '.join(kinds)}" if kind else \
                " is not a concept of its value sets"
            raise InvalidArgument(f"{what} {name!r}{known} in {self.ruleset.spec}"
                                  f"{_suggestion(name, choices)}; choices: {sorted(choices)}")
        if not self.codings.get(name):
            raise InvalidArgument(f"{what} {name!r} has no codes in {self.ruleset.spec}")
        return name

    def analyte(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.valuesets.analytes:
            choices = sorted(self.valuesets.analytes)
            hint = _suggestion(name, choices) if isinstance(name, str) else ""
            raise InvalidArgument(f"analyte {name!r} is not an analyte of {self.ruleset.spec}"
                                  f"{hint}; choices: {choices}")
        return name

    # -- times -----------------------------------------------------------
    def hours_ago(self, hours: float) -> str:
        return _instant(self.as_of - timedelta(hours=hours))

    # -- values ----------------------------------------------------------
    def plausible(self, analyte: str) -> tuple[float, float]:
        return _content.plausible(self.valuesets.analytes[analyte])

    def lab_codings(self, concept: str, unit: str | None) -> list[tuple[str, str, str | None]]:
        """The concept's codings, those whose display names the kind of
        quantity ``unit`` measures first (a mass unit under a Mass/volume LOINC
        code), so that generated labs look like real ones."""
        return _content.lab_codings(self.codings[concept], self.units.get(concept, {}), unit)


def _kit(ruleset: Ruleset, as_of: datetime, patient_id: str) -> _Kit:
    """The kit of ``ruleset`` for records dated relative to ``as_of``, built
    once. ``as_of`` is keyed with its UTC offset: aware datetimes of the same
    instant compare (and hash) equal whatever their offset, yet a kit's
    ``as_of`` is written into the records (birth dates are counted from its
    calendar date), so a kit cached for one offset must not serve another:
    records would then depend on what the process generated before."""
    return _cached_kit(ruleset, as_of, as_of.utcoffset(), patient_id)


@lru_cache(maxsize=64)
def _cached_kit(ruleset: Ruleset, as_of: datetime, offset: timedelta | None,
                patient_id: str) -> _Kit:
    return _Kit(ruleset, as_of, patient_id)


def _make_kit(ruleset: Any, as_of: Any, patient_id: Any) -> _Kit:
    return _kit(_ruleset(ruleset), _as_of(as_of), _patient_id(patient_id))


# --------------------------------------------------------------------------- #
# Resources (plain dicts; ids are given when the record is assembled)
# --------------------------------------------------------------------------- #
def _observation(kit: _Kit, coding: tuple[str, str, str | None], *, status: str,
                 effective: str, category: str, value: dict[str, Any]) -> Resource:
    res: Resource = {
        "resourceType": "Observation", "status": status,
        "category": [_cc(_OBS_CATEGORY, category)],
        "code": _cc(*coding), "subject": dict(kit.subject), "effectiveDateTime": effective,
    }
    res.update(value)
    return res


@st.composite
def _quantity(draw: st.DrawFn, kit: _Kit, analyte: str, canonical_value: float,
              unit: str) -> dict[str, Any]:
    """``valueQuantity`` of a canonical value written in ``unit``: with a UCUM
    coding, or (as some feeds send it) as unit text only."""
    value = _content.written(canonical_value, kit.units[analyte][unit])
    if draw(_BOOLEANS):
        spelled = _pick(draw, (unit, *_content.SPELLINGS.get(unit, ())))
        return {"valueQuantity": {"value": value, "unit": spelled}}
    return {"valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def _grid_value(draw: st.DrawFn, low: float, high: float, factor: float) -> float:
    """A value between ``low`` and ``high`` (canonical) that has few decimals
    in the unit of ``factor``, as labs report; shrinks towards ``low``."""
    lo_u, hi_u = low / factor, high / factor
    if hi_u <= lo_u:
        return low
    decimals = max(0, 3 - math.floor(math.log10(max(abs(hi_u), 1e-9))))
    for extra in (0, 2, 4):
        scale = 10 ** (decimals + extra)
        first, last = math.ceil(lo_u * scale), math.floor(hi_u * scale)
        if first <= last:
            n: int = draw(_ints(first, last))
            return float(min(max(n / scale * factor, low), high))
    return low


@st.composite
def _lab(draw: st.DrawFn, kit: _Kit, concept: str, *, value: float | None = None,
         low: float | None = None, high: float | None = None, unit: str | None = None,
         hours: float = 0.0, status: str = "final", form: str = "value") -> Resource:
    """One lab Observation of ``concept``: ``form`` is ``value`` (a number,
    ``value`` or one drawn between ``low`` and ``high``), ``bound`` (a ``<``
    or ``>`` value), ``unconvertible`` (a unit that cannot be converted),
    ``no-unit`` or ``text`` (no number at all)."""
    analyte = kit.valuesets.analytes.get(concept)
    if analyte is None:  # a lab concept without analyte data never becomes a fact
        coding = _pick(draw, kit.codings[concept])
        return _observation(kit, coding, status=status, effective=kit.hours_ago(hours),
                            category="laboratory", value={"valueString": "see report"})
    factors = kit.units[concept]
    if unit is None:
        unit = _pick(draw, list(factors))
    lo, hi = kit.plausible(concept)
    if value is None:
        value = _grid_value(draw, lo if low is None else low, hi if high is None else high,
                            factors[unit])
    part: dict[str, Any]
    if form == "unconvertible" and kit.unconvertible[concept] is None:
        form = "no-unit"
    if form == "value":
        part = draw(_quantity(kit, concept, value, unit))
    elif form == "bound":
        part = draw(_quantity(kit, concept, value, unit))
        part["valueQuantity"]["comparator"] = _pick(draw, ["<", ">"])
    elif form == "unconvertible":
        bad = kit.unconvertible[concept]
        part = {"valueQuantity": {"value": _content.significant(value, 4), "unit": bad,
                                  "system": UCUM, "code": bad}}
    elif form == "no-unit":
        part = {"valueQuantity": {"value": _content.written(value, factors[unit])}}
    else:
        part = {"valueString": _pick(draw, ["haemolysed, please repeat",
                                                     "sample insufficient"])}
    coding = _pick(draw, kit.lab_codings(concept, unit))
    return _observation(kit, coding, status=status, effective=kit.hours_ago(hours),
                        category="laboratory", value=part)


_PRESENT_VALUES = (("valueBoolean", True), ("snomed", "52101004"), ("snomed", "373066001"),
                   ("none", None))
_ABSENT_VALUES = (("valueBoolean", False), ("snomed", "2667000"), ("snomed", "373067005"))


@st.composite
def _finding(draw: st.DrawFn, kit: _Kit, concept: str, *, status: str | None = "present",
             site: str | None = None, nocturnal: bool | None = None, hours: float = 0.0,
             obs_status: str = "final", as_condition: bool = False) -> Resource:
    """A finding: an Observation saying present or absent (``status``; None
    means "asked, answer unreadable"), or, when ``as_condition``, an active
    Condition coding it (present)."""
    coding = _pick(draw, kit.codings[concept])
    when = kit.hours_ago(hours)
    if as_condition:
        res: Resource = {
            "resourceType": "Condition",
            "clinicalStatus": _cc(_CONDITION_CLINICAL, "active"),
            "code": _cc(*coding), "subject": dict(kit.subject), "onsetDateTime": when,
        }
        if site:
            res["bodySite"] = [_cc(*_pick(draw, kit.codings[site]))]
        return res
    value: dict[str, Any]
    if status is None:
        value = {"valueCodeableConcept": _cc(SNOMED, "261665006", "Unknown")}
    else:
        how, what = _pick(draw, _PRESENT_VALUES if status == "present"
                                         else _ABSENT_VALUES)
        if how == "valueBoolean":
            value = {"valueBoolean": what}
        elif how == "snomed":
            value = {"valueCodeableConcept": _cc(SNOMED, str(what))}
        else:
            value = {}
    res = _observation(kit, coding, status=obs_status, effective=when, category="exam",
                       value=value)
    if site:
        res["bodySite"] = _cc(*_pick(draw, kit.codings[site]))
    if nocturnal is not None and "nocturnal" in kit.qualifiers:
        res["component"] = [{"code": _cc(*_pick(draw, kit.codings["nocturnal"])),
                             "valueBoolean": nocturnal}]
    return res


_ACTIVE_CONDITION = ("active", "recurrence", "relapse", None)
_INACTIVE_CONDITION = ("inactive", "resolved", "remission", "refuted", "entered-in-error")


@st.composite
def _condition(draw: st.DrawFn, kit: _Kit, concept: str, *, state: str = "active",
               hours: float = 24.0) -> Resource:
    """A Condition coding ``concept``; ``state`` is a clinical status (``None``
    for none recorded, read as active), or ``refuted`` / ``entered-in-error``
    (a verification status)."""
    coding = _pick(draw, kit.codings[concept])
    res: Resource = {"resourceType": "Condition"}
    if state in ("refuted", "entered-in-error"):
        if state == "refuted":
            res["clinicalStatus"] = _cc(_CONDITION_CLINICAL, "inactive")
        res["verificationStatus"] = _cc(_CONDITION_VERIFICATION, state)
    elif state is not None:
        res["clinicalStatus"] = _cc(_CONDITION_CLINICAL, state)
        if draw(_BOOLEANS):
            res["verificationStatus"] = _cc(_CONDITION_VERIFICATION,
                                            _pick(draw, ["confirmed", "provisional"]))
    res.update(code=_cc(*coding), subject=dict(kit.subject), onsetDateTime=kit.hours_ago(hours))
    return res


_MEDICATION_STATUSES = ("active", "completed", "stopped", "on-hold", "entered-in-error")


@st.composite
def _medication(draw: st.DrawFn, kit: _Kit, concept: str, *, status: str = "active") -> Resource:
    """A MedicationRequest or MedicationStatement of ``concept``: by one of its
    codes, or (when the concept lists ingredients) by a product name alone."""
    kind = _pick(draw, ["MedicationRequest", "MedicationStatement"])
    ingredients = kit.valuesets.concepts[concept].ingredients
    by_name: bool = draw(_BOOLEANS)
    if ingredients and by_name:
        name = _pick(draw, ingredients)
        dose = _pick(draw, ["10", "25", "40"])
        codeable: dict[str, Any] = {"text": f"{name.title()} {dose} MG Oral Tablet"}
    else:
        codeable = _cc(*_pick(draw, kit.codings[concept]))
    res: Resource = {"resourceType": kind, "status": status}
    if kind == "MedicationRequest":
        res["intent"] = "order"
    res.update(medicationCodeableConcept=codeable, subject=dict(kit.subject))
    return res


_ACTIVE_ALLERGY = ("active", None)
_INACTIVE_ALLERGY = ("inactive", "resolved", "refuted", "entered-in-error")


@st.composite
def _allergy(draw: st.DrawFn, kit: _Kit, concept: str, *, state: str | None = "active"
             ) -> Resource:
    """An AllergyIntolerance of ``concept``, by its code or by the substance
    of a reaction; ``state`` is a clinical status or ``refuted`` /
    ``entered-in-error`` (a verification status)."""
    coding = _cc(*_pick(draw, kit.codings[concept]))
    res: Resource = {"resourceType": "AllergyIntolerance"}
    if state == "entered-in-error":
        res["verificationStatus"] = _cc(_ALLERGY_VERIFICATION, state)
    elif state == "refuted":
        res["clinicalStatus"] = _cc(_ALLERGY_CLINICAL, "inactive")
        res["verificationStatus"] = _cc(_ALLERGY_VERIFICATION, state)
    else:
        res["clinicalStatus"] = _cc(_ALLERGY_CLINICAL, state or "active")
        res["verificationStatus"] = _cc(_ALLERGY_VERIFICATION, "confirmed")
    by_code: bool = draw(_BOOLEANS)
    if by_code:
        res["code"] = coding
    res["patient"] = dict(kit.subject)
    if not by_code:
        res["reaction"] = [{"substance": coding,
                            "manifestation": [_cc(SNOMED, "271807003", "Eruption of skin")]}]
    return res


@st.composite
def _irrelevant(draw: st.DrawFn, kit: _Kit) -> Resource:
    """A resource no rule reads: an Encounter, Claim, Practitioner or
    Organization, or an Observation or Condition whose code is in no value set."""
    kinds = ["Encounter", "Claim", "Practitioner", "Organization"]
    if kit.unrelated_labs:
        kinds.append("Observation")
    if kit.unrelated_conditions:
        kinds.append("Condition")
    kind = _pick(draw, kinds)
    when = kit.hours_ago(draw(_ints(0, 24 * 400)))
    if kind == "Encounter":
        return {"resourceType": "Encounter", "status": "finished",
                "class": _coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB",
                                 "ambulatory"),
                "subject": dict(kit.subject), "period": {"start": when, "end": when}}
    if kind == "Claim":
        return {"resourceType": "Claim", "status": "active",
                "type": _cc("http://terminology.hl7.org/CodeSystem/claim-type", "professional"),
                "use": "claim", "patient": dict(kit.subject), "created": when[:10],
                "provider": {"display": "Community clinic"},
                "priority": _cc("http://terminology.hl7.org/CodeSystem/processpriority",
                                "normal"),
                "insurance": [{"sequence": 1, "focal": True,
                               "coverage": {"display": "Self-pay"}}]}
    if kind == "Practitioner":
        return {"resourceType": "Practitioner", "name": [{"family": "Okafor", "given": ["Ada"]}]}
    if kind == "Organization":
        return {"resourceType": "Organization", "name": "Community clinic"}
    if kind == "Observation":
        code, display, value, unit = _pick(draw, kit.unrelated_labs)
        return _observation(kit, (LOINC, code, display), status="final", effective=when,
                            category="vital-signs" if unit != "g/dL" else "laboratory",
                            value={"valueQuantity": {"value": value, "unit": unit,
                                                     "system": UCUM, "code": unit}})
    code, display = _pick(draw, kit.unrelated_conditions)
    return {"resourceType": "Condition", "clinicalStatus": _cc(_CONDITION_CLINICAL, "active"),
            "code": _cc(SNOMED, code, display), "subject": dict(kit.subject)}


@st.composite
def _patient(draw: st.DrawFn, as_of: datetime, patient_id: str, *,
             ages: Sequence[int] | None = None, min_age: int = 18, max_age: int = 95,
             sexes: Sequence[str | None] | None = None, mess: bool = False) -> Resource:
    """A Patient; ``ages`` are exact ages (birthday at ``as_of``) to choose
    from, else any age from ``min_age`` to ``max_age``; with ``mess`` the
    birth date is sometimes missing."""
    res: Resource = {"resourceType": "Patient", "id": patient_id}
    if ages:
        birth = _birth_date(as_of, _pick(draw, list(ages)), 0)
    else:
        birth = _birth_date(as_of, draw(_ints(min_age, max_age)),
                            draw(_ints(0, 364)))
    if not (mess and draw(_ints(0, 9)) == 9):
        res["birthDate"] = birth
    gender = _pick(draw, list(sexes) if sexes else ["female", "male", "other", "unknown", None])
    if gender is not None:
        res["gender"] = gender
    return res


# --------------------------------------------------------------------------- #
# Groups: resources that share an id (versions, exact duplicates)
# --------------------------------------------------------------------------- #
Group = list[Resource]

_ID_PREFIX = {"Observation": "obs", "Condition": "cond", "MedicationRequest": "medrx",
              "MedicationStatement": "medst", "AllergyIntolerance": "allergy",
              "Encounter": "enc", "Claim": "claim", "Practitioner": "pract",
              "Organization": "org"}


def _assemble(patient: Resource, groups: Sequence[Group]) -> RecordList:
    """The record: the Patient, then every group with an id of its own (the
    members of a group share it)."""
    out: RecordList = [patient]
    for n, group in enumerate(groups, start=1):
        for member in group:
            rtype = member["resourceType"]
            rid = f"{_ID_PREFIX.get(rtype, 'res')}-{n}"
            out.append({"resourceType": rtype, "id": rid,
                        **{k: v for k, v in member.items() if k not in ("resourceType", "id")}})
    return out


def _in_offset(when: datetime, hours: int) -> str:
    """``when`` written in the UTC offset of ``hours`` (the same instant)."""
    return when.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="seconds")


@st.composite
def _messy(draw: st.DrawFn, kit: _Kit, resource: Resource, hours: float) -> Group:
    """``resource`` alone, sent twice, or (an Observation) after a preliminary
    version, or before an amended one: the versions share an id and have
    increasing ``meta.versionId``; each later version is issued later, with
    ``issued`` in UTC, in another UTC offset, or not sent at all."""
    shape = _pick(draw, ["single", "duplicate", "versions"])
    if shape == "single":
        return [resource]
    if shape == "duplicate" or resource["resourceType"] != "Observation" or \
            resource["status"] not in ("final", "amended", "corrected"):
        return [resource, copy.deepcopy(resource)]
    effective = kit.as_of - timedelta(hours=max(hours, 3.0))
    first = copy.deepcopy(resource)
    second = copy.deepcopy(resource)
    first["effectiveDateTime"] = second["effectiveDateTime"] = _instant(effective)
    first["meta"] = {"versionId": "1"}
    second["meta"] = {"versionId": "2"}
    issued = _pick(draw, ["utc", "offset", "none"])
    if issued == "utc":
        first["issued"] = _instant(effective + timedelta(hours=1))
        second["issued"] = _instant(effective + timedelta(hours=2))
    elif issued == "offset":
        first["issued"] = _in_offset(effective + timedelta(hours=1), 2)
        second["issued"] = _in_offset(effective + timedelta(hours=2), -5)
    if draw(_BOOLEANS):
        first["status"] = "preliminary"
        if "valueQuantity" in first:
            first["valueQuantity"]["value"] = _content.significant(
                first["valueQuantity"]["value"] * _pick(draw, [0.8, 1.25]), 6)
    else:
        second["status"] = _pick(draw, ["amended", "corrected"])
    return [first, second]


_LAB_STATUSES = ("final", "amended", "corrected")
_IGNORED_LAB_STATUSES = ("preliminary", "registered", "entered-in-error", "cancelled")


@st.composite
def _random_group(draw: st.DrawFn, kit: _Kit, concept: str, mess: bool) -> Group:
    """Any resource the concept can be recorded in; with ``mess``, also the
    kinds of data cdss must ignore (entered in error, preliminary, stale,
    future-dated, unconvertible units) and duplicates and versions."""
    kind = kit.kinds[concept]
    hours: float = 0.0
    if kind == "lab":
        lookback = kit.valuesets.analytes[concept].lookback_days if \
            concept in kit.valuesets.analytes else 90
        when = _pick(draw, ["recent", "recent", "stale", "future"]) if mess \
            else "recent"
        if when == "recent":
            hours = draw(_ints(0, lookback * 24))
        elif when == "stale":
            hours = draw(_ints(lookback * 24 + 1, (lookback + 400) * 24))
        else:
            hours = -draw(_ints(1, 72))
        status = _pick(draw, _LAB_STATUSES + (_IGNORED_LAB_STATUSES if mess else ()))
        form = _pick(draw, ["value"] * 4 + ["bound", "unconvertible", "no-unit", "text"]) \
            if mess else "value"
        resource = draw(_lab(kit, concept, hours=hours, status=status, form=form))
    elif kind == "finding":
        hours = draw(_ints(0, (kit.finding_lookback + (60 if mess else 0)) * 24))
        if mess and draw(_BOOLEANS):
            # findings are often recorded by date alone
            hours = float(math.ceil(hours / 24) * 24)
        nocturnal = _pick(draw, [None, True, False]) if kit.qualifiers else None
        site = _pick(draw, [None, *kit.sites])
        status_choice = _pick(draw, ["present", "absent", "unreadable"] if mess
                              else ["present", "absent"])
        resource = draw(_finding(
            kit, concept, status=None if status_choice == "unreadable" else status_choice,
            site=site, nocturnal=nocturnal, hours=hours,
            obs_status=_pick(draw, _LAB_STATUSES + (("preliminary", "entered-in-error")
                                                    if mess else ())),
            as_condition=status_choice == "present" and nocturnal is None and draw(_BOOLEANS),
        ))
        if mess and draw(_ints(0, 9)) == 9:
            # explicitly unknown: no value, a reason instead
            resource.pop("valueBoolean", None)
            resource.pop("valueCodeableConcept", None)
            if resource["resourceType"] == "Observation":
                resource["dataAbsentReason"] = _cc(
                    "http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-unknown")
    elif kind == "condition":
        states = _ACTIVE_CONDITION + (_INACTIVE_CONDITION if mess else ())
        resource = draw(_condition(kit, concept, state=_pick(draw, states),
                                   hours=draw(_ints(-72 if mess else 0, 24 * 3650))))
    elif kind == "medication":
        resource = draw(_medication(kit, concept, status=_pick(
            draw, _MEDICATION_STATUSES if mess else ("active",))))
    else:
        resource = draw(_allergy(kit, concept, state=_pick(
            draw, _ACTIVE_ALLERGY + (_INACTIVE_ALLERGY if mess else ()))))
    return draw(_messy(kit, resource, hours)) if mess else [resource]


@st.composite
def _background(draw: st.DrawFn, kit: _Kit, max_resources: int, mess: bool) -> list[Group]:
    groups: list[Group] = []
    if kit.concepts:
        groups = draw(st.lists(
            _sampled(tuple(kit.concepts)).flatmap(lambda c: _random_group(kit, c, mess)),
            max_size=max_resources))
    if mess:
        groups += [[r] for r in draw(st.lists(_irrelevant(kit), max_size=2))]
    return groups


# --------------------------------------------------------------------------- #
# Aiming at the rules: thresholds and boundaries
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Want:
    """A fact a generated record should hold: the concept, the tests on its
    fields the record aims at, and ``miss``: None to pass every test with
    usable data, or the one aspect to vary around its boundary (a tested
    field, ``age_days`` for the lookback edge, ``usable`` for data cdss must
    ignore) while the others still pass."""

    fact: str
    tests: tuple[Test, ...]
    miss: str | None

    def on(self, field: str) -> tuple[Test, ...]:
        return tuple(t for t in self.tests if t.field == field)

    def choose(self, draw: st.DrawFn, choices: Sequence[Any], passing: int,
               aspect: str) -> Any:
        """One of ``choices``, whose first ``passing`` pass the tests: one of
        those, unless this want varies ``aspect``: then any, those that fail
        first (the threshold itself for ``lt``/``gt``, which hypothesis then
        draws most and shrinks to)."""
        if self.miss == aspect or not passing:
            return _pick(draw, [*choices[passing:], *choices[:passing]])
        return _pick(draw, choices[:passing])


def _aspects(kind: str, tests: Sequence[Test]) -> list[str]:
    """What a near miss of a fact of ``kind`` may vary."""
    fields = list(dict.fromkeys(t.field for t in tests if not (
        kind == "finding" and t.field == "status" and t.op == "eq" and t.value == "present")))
    if kind in ("lab", "finding"):
        fields += [a for a in ("age_days", "usable") if a not in fields]
    elif kind in ("condition", "medication", "allergy"):
        fields.append("usable")
    if kind == "finding" and "status" not in fields:
        fields.append("status")
    return fields




def _numbers(tests: Sequence[Test], low: float, high: float) -> tuple[list[float], int]:
    """Values at, just below and just above every threshold of ``tests``
    (and a coarse step further), inside ``[low, high]``: those that pass all
    the tests first, and how many do."""
    unique = _content.boundary_points(tests, low, high)
    passing = [p for p in unique if all(t.holds({tests[0].field: p}) for t in tests)]
    return passing + [p for p in unique if p not in passing], len(passing)


def _texts(tests: Sequence[Test], field: str, choices: Sequence[Any]) -> tuple[list[Any], int]:
    """The ``choices`` for a text or boolean field, those passing ``tests``
    first, and how many do; ``None`` (the field left out) passes when there
    is no test, and then comes first, or when the tests pass on a fact
    without the field (``exists: false``)."""
    if not tests:
        return sorted(choices, key=lambda c: c is not None), len(choices)
    passing = [c for c in choices
               if all(t.holds({} if c is None else {field: c}) for t in tests)]
    return passing + [c for c in choices if c not in passing], len(passing)


def _hours(draw: st.DrawFn, want: _Want, lookback: int) -> float:
    """Hours before as_of: at and around the ``age_days`` thresholds when the
    rule tests them; else anywhere in the lookback window or, when varying
    the age, at its edge (inside) or just past it."""
    tests = want.on("age_days")
    if tests:
        days, passing = _numbers(tests, 0, lookback + 1)
        if days:
            return float(want.choose(draw, days, passing, "age_days")) * 24.0
    if want.miss == "age_days":
        return float(_pick(draw, [lookback * 24.0, lookback * 24.0 + 1.0]))
    return float(draw(_ints(0, lookback * 24)))


@st.composite
def _lab_want(draw: st.DrawFn, kit: _Kit, want: _Want) -> list[Group]:
    concept = want.fact
    analyte = kit.valuesets.analytes.get(concept)
    if analyte is None:
        return [[draw(_lab(kit, concept))]]
    statuses, passing = _texts(want.on("status"), "status", ["determinate", "indeterminate"])
    if want.on("value"):  # an indeterminate lab has no value to pass a value test
        usable = [s for s in statuses[:passing] if s == "determinate"]
        statuses, passing = usable + [s for s in statuses if s not in usable], len(usable)
    status = want.choose(draw, statuses, passing, "status")
    hours = _hours(draw, want, analyte.lookback_days)
    low, high = kit.plausible(concept)
    values, passing = _numbers(want.on("value"), low, high)
    value = want.choose(draw, values, passing, "value") if values else None
    if status == "indeterminate":
        return [[draw(_lab(kit, concept, value=value, hours=hours, form=draw(
            _sampled(("unconvertible", "bound", "no-unit", "text")))))]]
    computed, passing = _texts(want.on("computed"), "computed", [False, True])
    if analyte.ratio_of and value is not None and \
            want.choose(draw, computed, passing, "computed"):
        parts = _ratio_parts(kit, analyte, value)
        if parts is not None:
            hours = min(hours, *(kit.valuesets.analytes[p].lookback_days * 24.0
                                 for p in analyte.ratio_of))
            return [[draw(_lab(kit, part, value=v, hours=hours))] for part, v in parts]
    lab_status = want.choose(draw, _LAB_STATUSES + _IGNORED_LAB_STATUSES, len(_LAB_STATUSES),
                             "usable")
    return [[draw(_lab(kit, concept, value=value, hours=hours, status=lab_status))]]


def _ratio_parts(kit: _Kit, analyte: Analyte, ratio: float
                 ) -> list[tuple[str, float]] | None:
    """Values of a ratio's parts whose ratio is ``ratio`` (both plausible)."""
    assert analyte.ratio_of is not None
    top, bottom = analyte.ratio_of
    top_lo, top_hi = kit.plausible(top)
    bottom_lo, bottom_hi = kit.plausible(bottom)
    for b in (1.0, 0.8, 1.25, 2.0, 0.5, 4.0, 0.25):
        if bottom_lo <= b <= bottom_hi and top_lo <= ratio * b <= top_hi:
            return [(top, _content.significant(ratio * b)), (bottom, b)]
    return None


@st.composite
def _finding_want(draw: st.DrawFn, kit: _Kit, want: _Want) -> list[Group]:
    status = want.choose(draw, *_texts(want.on("status"), "status", ["present", "absent"]),
                         "status")
    site = want.choose(draw, *_texts(want.on("site"), "site", [*kit.sites, None]), "site")
    nocturnal = want.choose(draw, *_texts(want.on("nocturnal"), "nocturnal",
                                          [True, False, None]), "nocturnal") \
        if kit.qualifiers else None
    hours = _hours(draw, want, kit.finding_lookback)
    obs_status = want.choose(draw, (*_LAB_STATUSES, "preliminary", "entered-in-error"),
                             len(_LAB_STATUSES), "usable")
    as_condition = status == "present" and nocturnal is None and \
        obs_status in _LAB_STATUSES and draw(_BOOLEANS)
    return [[draw(_finding(kit, want.fact, status=status, site=site, nocturnal=nocturnal,
                           hours=hours, obs_status=obs_status, as_condition=as_condition))]]


@st.composite
def _presence_want(draw: st.DrawFn, kit: _Kit, want: _Want) -> list[Group]:
    kind = kit.kinds[want.fact]
    if kind == "condition":
        state = want.choose(draw, ["active", None, "recurrence", "relapse", "resolved",
                                   "entered-in-error", "refuted"], 4, "usable")
        return [[draw(_condition(kit, want.fact, state=state))]]
    if kind == "medication":
        status = want.choose(draw, _MEDICATION_STATUSES, 1, "usable")
        return [[draw(_medication(kit, want.fact, status=status))]]
    state = want.choose(draw, [*_ACTIVE_ALLERGY, *_INACTIVE_ALLERGY], len(_ACTIVE_ALLERGY),
                        "usable")
    return [[draw(_allergy(kit, want.fact, state=state))]]


@st.composite
def _order_want(draw: st.DrawFn, kit: _Kit, want: _Want) -> list[Group]:
    """A draft MedicationRequest of a medication concept the pattern names (a
    record's draft orders are its draft MedicationRequests; lab orders come
    only as separate draft orders, which these records do not hold)."""
    named = [v for t in want.tests if t.field == "concept"
             for v in (t.value if t.op == "in" else (t.value,))]
    concepts = [c for c in named if kit.kinds.get(str(c)) == "medication"]
    if not concepts:
        return []
    res = draw(_medication(kit, str(_pick(draw, concepts)), status="draft"))
    if res["resourceType"] != "MedicationRequest":
        res = {**res, "resourceType": "MedicationRequest", "intent": "order"}
    return [[res]]


def _want(draw: st.DrawFn, kit: _Kit, pattern: Pattern, wants: list[_Want],
          depth: int) -> None:
    if kit.kinds.get(pattern.fact) == "derived":
        if depth < 4 and kit.producers.get(pattern.fact):
            _aim(draw, kit, _pick(draw, kit.producers[pattern.fact]), wants, depth + 1)
        return
    kind = kit.kinds.get(pattern.fact, "patient")
    aspects = _aspects(kind, pattern.tests)
    miss = _pick(draw, [None] * max(1, len(aspects)) + aspects)
    wants.append(_Want(pattern.fact, pattern.tests, miss))


def _aim(draw: st.DrawFn, kit: _Kit, rule: CompiledRule, wants: list[_Want], depth: int) -> None:
    """Add the facts that make ``rule`` fire, or just miss: every ``all``
    pattern, a non-empty choice of ``any`` patterns, and some ``none``
    patterns; derived facts through a rule that derives them."""
    for pattern in rule.all:
        _want(draw, kit, pattern, wants, depth)
    if rule.any:
        for i in draw(st.lists(_ints(0, len(rule.any) - 1), min_size=1,
                               max_size=len(rule.any), unique=True)):
            _want(draw, kit, rule.any[i], wants, depth)
    for pattern in rule.none:
        if draw(_BOOLEANS):
            _want(draw, kit, pattern, wants, depth)


@st.composite
def _aimed_record(draw: st.DrawFn, kit: _Kit, targets: tuple[CompiledRule, ...],
                  mess: bool, others: tuple[CompiledRule, ...] = ()) -> RecordList:
    """A record aimed at one of ``targets`` and sometimes at one more rule of
    ``others`` (default: of ``targets``), with a few random resources."""
    aimed = [_pick(draw, targets)]
    if draw(_BOOLEANS):
        aimed.append(_pick(draw, others or targets))
    wants: list[_Want] = []
    for rule in aimed:
        _aim(draw, kit, rule, wants, 0)
    patient_wants = [w for w in wants if w.fact == "patient"]
    ages: list[int] | None = None
    sexes: list[str | None] | None = None
    for want in patient_wants:
        if want.on("age"):
            found, passing = _numbers(want.on("age"), 0, 120)
            whole = [int(a) for a in found if a == int(a)]
            if whole:
                ages = [want.choose(draw, whole,
                                    len([a for a in found[:passing] if a == int(a)]), "age")]
        if want.on("sex"):
            sexes = [want.choose(draw, *_texts(want.on("sex"), "sex",
                                               ["female", "male", "other", None]), "sex")]
    patient = draw(_patient(kit.as_of, kit.patient_id, ages=ages, sexes=sexes, mess=mess))
    groups: list[Group] = []
    for want in wants:
        kind = kit.kinds[want.fact]
        if kind == "lab":
            groups += draw(_lab_want(kit, want))
        elif kind == "finding":
            groups += draw(_finding_want(kit, want))
        elif kind in ("condition", "medication", "allergy"):
            groups += draw(_presence_want(kit, want))
        elif kind == ORDER:
            groups += draw(_order_want(kit, want))
    groups += draw(_background(kit, 3, mess))
    return _assemble(patient, groups)


# --------------------------------------------------------------------------- #
# Public strategies
# --------------------------------------------------------------------------- #
def patients(*, as_of: datetime | date | str = DEFAULT_AS_OF, patient_id: str = PATIENT_ID,
             min_age: int = 18, max_age: int = 95) -> st.SearchStrategy[Resource]:
    """A FHIR R4 Patient aged ``min_age`` to ``max_age`` years at ``as_of``,
    with any administrative gender or none.

    Shrinks towards a female patient aged ``min_age`` whose birthday is
    ``as_of``.
    """
    when = _as_of(as_of)
    low = _int("min_age", min_age, 0, 130)
    high = _int("max_age", max_age, low, 130)
    return _patient(when, _patient_id(patient_id), min_age=low, max_age=high)


def observations(*, analyte: str, ruleset: Ruleset | str | None = None,
                 min_value: float | None = None, max_value: float | None = None,
                 unit: str | None = None, as_of: datetime | date | str = DEFAULT_AS_OF,
                 max_days_ago: int | None = None,
                 patient_id: str = PATIENT_ID) -> st.SearchStrategy[Resource]:
    """A usable lab Observation of ``analyte``: final, amended or corrected,
    dated within the analyte's lookback before ``as_of`` (at most
    ``max_days_ago``), coded with any of the concept's codes, with a value
    from ``min_value`` to ``max_value`` **in the analyte's canonical unit**
    (default: its plausible range), written in ``unit`` or in any unit it
    converts from (:func:`unit_factors`).

    Shrinks towards a value at ``min_value``, in the canonical unit, under the
    concept's first code, status final, dated at ``as_of``.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    name = kit.analyte(analyte)
    lo, hi = kit.plausible(name)
    low = _number("min_value", min_value)
    high = _number("max_value", max_value)
    low = lo if low is None else low
    high = hi if high is None else high
    if not lo <= low <= high <= hi:
        raise InvalidArgument(f"need {lo} <= min_value <= max_value <= {hi} (the plausible range "
                              f"of {name} in {kit.valuesets.analytes[name].canonical_unit}), "
                              f"got min_value={low}, max_value={high}")
    if unit is not None and unit not in kit.units[name]:
        raise InvalidArgument(f"unit {unit!r} is not one {name} is generated in; choices: "
                              f"{list(kit.units[name])}")
    lookback = kit.valuesets.analytes[name].lookback_days
    days = lookback if max_days_ago is None else _int("max_days_ago", max_days_ago, 0, lookback)

    @st.composite
    def build(draw: st.DrawFn) -> Resource:
        chosen = unit if unit is not None else _pick(draw, list(kit.units[name]))
        value = _grid_value(draw, low, high, kit.units[name][chosen])
        res = draw(_lab(kit, name, value=value, unit=chosen,
                        hours=draw(_ints(0, days * 24)),
                        status=_pick(draw, _LAB_STATUSES)))
        return {"resourceType": "Observation", "id": f"obs-{name.replace('_', '-')}", **res}

    return build()


def findings(*, concept: str, ruleset: Ruleset | str | None = None,
             present: bool = True, site: str | None = None, nocturnal: bool | None = None,
             as_of: datetime | date | str = DEFAULT_AS_OF, max_days_ago: int | None = None,
             patient_id: str = PATIENT_ID) -> st.SearchStrategy[Resource]:
    """A usable finding Observation of ``concept``, recorded as ``present`` or
    absent, at body site ``site`` (a body-site concept) and with the nocturnal
    qualifier when given, dated within the finding lookback before ``as_of``.

    Shrinks towards the concept's first code with ``valueBoolean``, status
    final, dated at ``as_of``.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    name = kit.concept(concept, ("finding",), "concept")
    is_present = _bool("present", present)
    if site is not None:
        kit.concept(site, ("body_site",), "site")
    night = _bool("nocturnal", nocturnal, optional=True)
    if night is not None and "nocturnal" not in kit.qualifiers:
        raise InvalidArgument(f"{kit.ruleset.spec} has no 'nocturnal' qualifier concept")
    days = kit.finding_lookback if max_days_ago is None else \
        _int("max_days_ago", max_days_ago, 0, kit.finding_lookback)

    @st.composite
    def build(draw: st.DrawFn) -> Resource:
        res = draw(_finding(kit, name, status="present" if is_present else "absent", site=site,
                            nocturnal=night, hours=draw(_ints(0, days * 24)),
                            obs_status=_pick(draw, _LAB_STATUSES)))
        return {"resourceType": "Observation", "id": f"finding-{name.replace('_', '-')}", **res}

    return build()


def conditions(*, concept: str, ruleset: Ruleset | str | None = None, active: bool = True,
               as_of: datetime | date | str = DEFAULT_AS_OF,
               patient_id: str = PATIENT_ID) -> st.SearchStrategy[Resource]:
    """A Condition coding ``concept`` (a condition, or a finding coded as a
    diagnosis) with any of its codes: ``active`` (clinical status active,
    recurrence, relapse or none recorded) or not (inactive, resolved, in
    remission, refuted, entered in error). Onset up to ten years before
    ``as_of``.

    Shrinks towards the concept's first code, clinical status active, onset at
    ``as_of``.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    name = kit.concept(concept, ("condition", "finding"), "concept")
    states = _ACTIVE_CONDITION if _bool("active", active) else _INACTIVE_CONDITION

    @st.composite
    def build(draw: st.DrawFn) -> Resource:
        res = draw(_condition(kit, name, state=_pick(draw, states),
                              hours=draw(_ints(0, 24 * 3650))))
        return {"resourceType": "Condition", "id": f"cond-{name.replace('_', '-')}", **res}

    return build()


def medications(*, concept: str, ruleset: Ruleset | str | None = None,
                active: bool = True, as_of: datetime | date | str = DEFAULT_AS_OF,
                patient_id: str = PATIENT_ID) -> st.SearchStrategy[Resource]:
    """A MedicationRequest or MedicationStatement of medication class
    ``concept``, by any of its codes or by a product name naming one of its
    ingredients; ``active`` or not (completed, stopped, on hold, entered in
    error).

    Shrinks towards an active MedicationRequest with the concept's first code.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    name = kit.concept(concept, ("medication",), "concept")
    statuses = ("active",) if _bool("active", active) else _MEDICATION_STATUSES[1:]

    @st.composite
    def build(draw: st.DrawFn) -> Resource:
        res = draw(_medication(kit, name, status=_pick(draw, statuses)))
        return {"resourceType": res["resourceType"], "id": f"med-{name.replace('_', '-')}",
                **res}

    return build()


def allergies(*, concept: str, ruleset: Ruleset | str | None = None, active: bool = True,
              as_of: datetime | date | str = DEFAULT_AS_OF,
              patient_id: str = PATIENT_ID) -> st.SearchStrategy[Resource]:
    """An AllergyIntolerance of ``concept``, by its code or by a reaction's
    substance; ``active`` or not (inactive, resolved, refuted, entered in
    error).

    Shrinks towards an active, confirmed allergy under the concept's first code.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    name = kit.concept(concept, ("allergy",), "concept")
    states = _ACTIVE_ALLERGY if _bool("active", active) else _INACTIVE_ALLERGY

    @st.composite
    def build(draw: st.DrawFn) -> Resource:
        res = draw(_allergy(kit, name, state=_pick(draw, states)))
        return {"resourceType": "AllergyIntolerance",
                "id": f"allergy-{name.replace('_', '-')}", **res}

    return build()


def records(*, ruleset: Ruleset | str | None = None,
            as_of: datetime | date | str = DEFAULT_AS_OF, mess: bool = True,
            max_resources: int = 8, patient_id: str = PATIENT_ID
            ) -> st.SearchStrategy[RecordList]:
    """A patient's FHIR R4 record for ``ruleset``: one Patient and up to
    ``max_resources`` entries recording the ruleset's concepts (labs,
    findings, conditions, medications, allergies) in any of their codings, lab
    values in the canonical unit or any unit they convert from, dated before
    ``as_of``. (With ``mess`` an entry may be sent twice or in two versions,
    and up to two irrelevant resources are added.)

    With ``mess`` (the default) the record also holds what real records do:
    exact duplicates, preliminary then final versions and final then amended
    ones (sharing an id), entered-in-error, cancelled and registered entries,
    labs older than their lookback or dated after ``as_of``, bounds (``<``),
    unconvertible units and text results, findings recorded by date only or
    explicitly unknown, and irrelevant resources (Encounter, Claim,
    Practitioner, Organization, unmapped Observations and Conditions).

    Shrinks towards the Patient alone; then towards fewer resources, each of
    the concept the first rule uses, in its simplest form.
    """
    kit = _make_kit(ruleset, as_of, patient_id)
    with_mess = bool(_bool("mess", mess))
    size = _int("max_resources", max_resources, 0, 100)

    @st.composite
    def build(draw: st.DrawFn) -> RecordList:
        patient = draw(_patient(kit.as_of, kit.patient_id, mess=with_mess))
        return _assemble(patient, draw(_background(kit, size, with_mess)))

    return build()


def from_ruleset(ruleset: Ruleset | str, *, as_of: datetime | date | str = DEFAULT_AS_OF,
                 rules: Sequence[str] | None = None, mess: bool = True,
                 patient_id: str = PATIENT_ID) -> st.SearchStrategy[RecordList]:
    """Records aimed at the rules of ``ruleset`` (or at those named in
    ``rules``): each example picks one or two rules and writes the facts that
    make them fire or just miss, read from the compiled rules
    (``Ruleset.rules[i].all/any/none``, ``Pattern(fact, tests)``,
    ``Test(field, op, value)``): lab values at, just below and just above
    every threshold (and far from it), lab dates at and just past the
    lookback, findings at each site and with and without the nocturnal
    qualifier, patients at each age threshold, the ``none`` facts present or
    not, and derived facts through the rules that derive them. A few random
    resources and (with ``mess``) the real-world mess of :func:`records` are
    added.

    Shrinks towards the first rule aimed at, fired with the first passing
    value of each test (the threshold itself for ``le``/``ge``/``eq``, just
    inside it for ``lt``/``gt``), and no other resources.
    """
    rs = _ruleset(ruleset)
    kit = _kit(rs, _as_of(as_of), _patient_id(patient_id))
    with_mess = bool(_bool("mess", mess))
    if rules is None:
        targets = rs.rules
    else:
        if isinstance(rules, str) or not all(isinstance(r, str) for r in rules):
            raise InvalidArgument(f"rules must be a list of rule ids, got {rules!r}")
        ids = [r.id for r in rs.rules]
        for rid in rules:
            if rid not in ids:
                raise InvalidArgument(f"{rs.spec} has no rule {rid!r}{_suggestion(rid, ids)}")
        targets = tuple(r for r in rs.rules if r.id in rules)
        if not targets:
            raise InvalidArgument("rules must name at least one rule")
    return _aimed_record(kit, tuple(targets), with_mess)

