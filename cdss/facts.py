"""Facts: a patient's resources turned into typed, immutable facts.

Terminology maps codes to concepts, units convert lab values to canonical
units, and time windows are relative to ``as_of``. One fact per concept:

* ``patient``: age in years at ``as_of`` and sex (fields absent when unknown);
* a lab concept (``potassium``...): the latest value within the analyte's
  lookback, ``status`` ``determinate`` with ``value`` in the canonical unit, or
  ``indeterminate`` without ``value`` when its unit cannot be converted;
* a finding (``leg_cramps``...): ``status`` ``present`` or ``absent`` from the
  latest record, with ``site`` and ``nocturnal`` when recorded; no fact at all
  means unknown, which is never the same as absent;
* a condition, a medication class, an allergy: present when active;
* ``order``: one fact per draft order and concept it maps to (a
  MedicationRequest by the medication value sets, RxNorm codes or ingredient
  names; a ServiceRequest by its lab code), with ``concept``, ``status``
  (``draft``), ``selected`` (the order is under review: one of the
  order-select ``selections``, or any order being signed), ``reference``
  (``MedicationRequest/o1``) and ``resource_type``; ``text`` (what the order
  says) is for the outputs, not for rules. Draft orders are never active
  medications: a rule on ``loop_diuretic`` does not see a loop diuretic
  being ordered.

Entered-in-error, cancelled, preliminary-only and future-dated data are
ignored and listed as data-quality notes.
"""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime, timezone
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from cdss.errors import InputError
from cdss.intake import Record, reference_path
from cdss.rulesets import ORDER
from cdss.terminology import Terminology, coding_displays, codings
from cdss.units import convert

__all__ = [
    "ORDER_TYPES",
    "DataQualityNote",
    "Fact",
    "Facts",
    "LeftOutResource",
    "UnmappedCodes",
    "build_facts",
    "contributes",
    "draft_order_resources",
    "parse_time",
]

Scalar = str | float | int | bool

_FINAL = frozenset({"final", "amended", "corrected"})
_PRESENT = frozenset({"52101004", "373066001", "Y", "y", "true"})
_ABSENT = frozenset({"2667000", "373067005", "N", "n", "false"})
_ACTIVE_CONDITION = frozenset({"active", "recurrence", "relapse"})
#: The resource types a draft order may be (CDS Hooks ``draftOrders``).
ORDER_TYPES = frozenset({"DeviceRequest", "MedicationRequest", "NutritionOrder",
                         "ServiceRequest", "VisionPrescription"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Fact(_Frozen):
    """One fact: its ``name`` (a concept or ``patient``), ``kind``, the field
    values rules compare, and the ids of the resources it comes from."""

    id: str
    name: str
    kind: str
    values: dict[str, Scalar]
    sources: tuple[str, ...]


class DataQualityNote(_Frozen):
    """Something about the data that was ignored or could not be used.
    ``coding`` (``system|code``) names the code of an ``unmapped-code`` note, and
    ``display`` that code's display as the records chart it (the first in
    alphabetical order when they chart several; none when they chart none)."""

    code: str
    resource: str | None
    message: str
    coding: str | None = None
    display: str | None = None


class LeftOutResource(_Frozen):
    """A resource left out because it cannot be read: which, the field, why."""

    resource: str
    field: str | None
    reason: str


class Facts(_Frozen):
    """All facts of one patient at ``as_of``, sorted by id. ``left_out`` lists
    the resources that could not be read and were left out (the assessment is
    then incomplete)."""

    as_of: datetime
    patient: str | None
    items: tuple[Fact, ...]
    data_quality: tuple[DataQualityNote, ...]
    skipped: dict[str, int]
    left_out: tuple[LeftOutResource, ...] = ()

    def get(self, name: str) -> Fact | None:
        for fact in self.items:
            if fact.name == name:
                return fact
        return None


def parse_time(text: str) -> datetime:
    """A FHIR date, dateTime or instant as an aware datetime (UTC when no zone).

    Partial dates (``2020``, ``2020-05``) mean their first day.
    """
    text = text.strip()
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if len(text) == 10:
        parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
    else:
        parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def _time_of(resource: Mapping[str, Any], *fields: str) -> datetime | None:
    for name in fields:
        value = resource.get(name)
        if isinstance(value, Mapping):  # a Period
            value = value.get("end") or value.get("start")
        if isinstance(value, str) and value:
            try:
                return parse_time(value)
            except ValueError:
                raise InputError(
                    f"{value!r} is not a FHIR date/time",
                    resource_type=str(resource.get("resourceType")),
                    resource_id=str(resource.get("id")),
                    field=name,
                ) from None
    return None


def _boolean(value: Any) -> bool | None:
    """A FHIR boolean; the JSON strings "true"/"false" (which the strict models
    accept) read as what they say, anything else as unreadable."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(value) if isinstance(value, str) else None


def _code(cc: Any) -> str | None:
    if isinstance(cc, Mapping):
        for coding in cc.get("coding") or []:
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                return str(coding["code"])
    return None


_STATUS_RANK = {"final": 0, "amended": 1, "corrected": 1}


def _recency_key(resource: Mapping[str, Any], when: datetime) -> tuple[Any, ...]:
    """A total order on records of one concept, latest last, whatever the input order.

    By effective time, then issued time (parsed, so time zones compare), then
    the resource version (``meta.versionId``, numerically when it is a number),
    then amended/corrected over final, then id, then the content itself, so
    that two records can never tie.
    """
    issued = _time_of(resource, "issued") or when
    version = (resource.get("meta") or {}).get("versionId") if isinstance(
        resource.get("meta"), Mapping) else None
    version_key = (0, int(version), "") if isinstance(version, str) and version.isdigit() \
        else (1, 0, str(version or ""))
    try:
        content = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # an integer beyond 64 bits, or nesting orjson will not write
        try:
            content = json.dumps(resource, sort_keys=True, default=str).encode()
        except (RecursionError, ValueError):
            raise InputError("the resource is nested too deeply to read",
                             resource_type=str(resource.get("resourceType")),
                             resource_id=str(resource.get("id"))) from None
    return (when, issued, version_key, _STATUS_RANK.get(str(resource.get("status")), 0),
            str(resource.get("id")), content)


class UnmappedCodes:
    """The codes of a patient's resources that match no value set, as the
    ``unmapped-code`` notes need them: per ``(system, code)`` the references of
    the resources charting it and the displays they give it; and the draft
    MedicationRequests among them (a selection may name one).

    Intake hands it the resources that can become no fact
    (:func:`contributes` is false) instead of keeping them in the Record, so
    they are never validated or read as facts; the facts add the unmapped
    resources they read themselves (a draft order of the request). Order does
    not matter: the notes sort what is tallied.
    """

    __slots__ = ("displays", "draft_orders", "note", "refs")

    def __init__(self) -> None:
        self.refs: dict[tuple[str, str], set[str]] = {}
        self.displays: dict[tuple[str, str], set[str]] = {}
        self.draft_orders: set[str] = set()
        self.note = self.note_reference if reference_path() else self.note_fast

    def add(self, resource: Mapping[str, Any]) -> None:
        """Tally a resource of the record that :func:`contributes` nothing."""
        rtype = resource.get("resourceType")
        if rtype in ("Observation", "Condition"):
            self.note(resource, resource.get("code"))
        elif rtype in ("MedicationRequest", "MedicationStatement"):
            if rtype == "MedicationRequest" and resource.get("status") == "draft":
                self.draft_orders.add(_ref(resource))
            self.note(resource, resource.get("medicationCodeableConcept"))
        elif rtype == "AllergyIntolerance":
            self.note(resource, *_allergy_codes(resource))
        else:  # pragma: no cover - every other type contributes
            raise TypeError(f"{rtype!r} resources always contribute")

    def note_reference(self, resource: Mapping[str, Any], *codeables: Any) -> None:
        """:meth:`note_fast` as the terminology reads codings: the reference
        the fast one is tested against."""
        codes = sorted({(system, code) for cc in codeables for system, code in codings(cc)})
        for key in codes or [("", "")]:
            self.refs.setdefault(key, set()).add(_ref(resource))
        for key, display in coding_displays(*codeables):
            self.displays.setdefault(key, set()).add(display)

    def note_fast(self, resource: Mapping[str, Any], *codeables: Any) -> None:
        """Remember ``resource`` under each well-formed coding of ``codeables``
        (under no code when it has none), with the codings' displays: one
        pass over the codings."""
        ref = _ref(resource)
        keys: set[tuple[str, str]] = set()
        for codeable in codeables:
            for cc in codeable if isinstance(codeable, list) else (codeable,):
                if type(cc) is not dict and not isinstance(cc, Mapping):
                    continue
                coding_list = cc.get("coding")
                if coding_list is None:
                    continue
                for coding in coding_list if isinstance(coding_list, list) else (coding_list,):
                    if type(coding) is not dict and not isinstance(coding, Mapping):
                        continue
                    system, code = coding.get("system"), coding.get("code")
                    if not (isinstance(system, str) and isinstance(code, str)):
                        continue
                    key = (system, code)
                    keys.add(key)
                    display = coding.get("display")
                    if isinstance(display, str):
                        display = display.strip()
                        if display:
                            found = self.displays.get(key)
                            if found is None:
                                self.displays[key] = {display}
                            else:
                                found.add(display)
        for key in keys or (("", ""),):
            held = self.refs.get(key)
            if held is None:
                self.refs[key] = {ref}
            else:
                held.add(ref)


class _Builder:
    def __init__(self, record: Record, terminology: Terminology, as_of: datetime,
                 finding_lookback_days: int,
                 selections: Collection[str] | None = None,
                 boundaries: Mapping[str, Sequence[float]] | None = None,
                 min_age: tuple[float, str] | None = None,
                 unmapped: UnmappedCodes | None = None) -> None:
        self.record = record
        self.boundaries = boundaries or {}
        self.min_age = min_age
        self.selections = None if selections is None else frozenset(selections)
        self.term = terminology
        self.as_of = as_of
        self.finding_lookback = finding_lookback_days
        self.notes: list[DataQualityNote] = []
        self.facts: dict[str, Fact] = {}
        # concept -> best candidate (sort key, fact)
        self.labs: dict[str, tuple[tuple[Any, ...], Fact]] = {}
        self.findings: dict[str, tuple[tuple[Any, ...], Fact]] = {}
        self.stale: dict[str, tuple[tuple[Any, ...], str, int]] = {}
        # (concept, side) -> the latest record stating it: (recency key, present?,
        # resource ref, age in days)
        self.sides: dict[tuple[str, str], tuple[tuple[Any, ...], bool, str, int]] = {}
        # the resources whose codes match no value set, by code, and their displays
        self.unmapped = unmapped if unmapped is not None else UnmappedCodes()

    def no_concept(self, res: Mapping[str, Any], *codeables: Any) -> None:
        """Remember a resource whose codes match no value set (noted by code)."""
        self.unmapped.note(res, *codeables)

    def side(self, concept: str, res: Mapping[str, Any], age: float, key: tuple[Any, ...],
             present: bool) -> None:
        """Remember the sides a record states; the latest record per side decides
        (a side later charted absent no longer counts). Records older than the
        finding lookback state no current side."""
        if age > self.finding_lookback:
            return
        stated, _, _ = self.term.statements(res.get("code"), concept)
        for side in sorted(stated | self.term.sides_of(res.get("bodySite"))):
            prev = self.sides.get((concept, side))
            if prev is None or key > prev[0]:
                self.sides[(concept, side)] = (key, present, _ref(res), max(0, math.floor(age)))

    def note(self, code: str, resource: Mapping[str, Any] | None, message: str) -> None:
        self.notes.append(
            DataQualityNote(code=code, resource=_ref(resource) if resource else None,
                            message=message)
        )

    def charted_at(self, res: Mapping[str, Any]) -> str:
        """The effective date as charted (its date part), for the evidence."""
        when = _time_of(res, "effectiveDateTime", "effectiveInstant", "effectivePeriod",
                        "issued")
        return when.date().isoformat() if when else ""

    def age_days(self, when: datetime) -> float:
        return (self.as_of - when).total_seconds() / 86400.0

    # -- patient -------------------------------------------------------------
    def patient(self) -> None:
        patient = self.record.patient
        values: dict[str, Scalar] = {}
        sources: tuple[str, ...] = ()
        if patient is not None:
            sources = (_ref(patient),)
            birth = patient.get("birthDate")
            if isinstance(birth, str):
                born = parse_time(birth).date()
                today = self.as_of.date()
                if born > today:
                    self.note("future-dated", patient, "birthDate is after as_of; age unknown")
                else:
                    age = today.year - born.year - (
                        (today.month, today.day) < (born.month, born.day)
                    )
                    values["age"] = age
                    if self.min_age is not None and age < self.min_age[0]:
                        self.note("outside-population", patient,
                                  f"age {age} is below {self.min_age[0]:g}: outside "
                                  f"the population the ruleset is for ({self.min_age[1]})")
            gender = patient.get("gender")
            if isinstance(gender, str) and gender != "unknown":
                values["sex"] = gender
        self.facts["patient"] = Fact(
            id="patient", name="patient", kind="patient", values=values, sources=sources
        )

    # -- observations --------------------------------------------------------
    def observation(self, obs: Mapping[str, Any]) -> None:
        concepts = self.term.concepts_of(obs.get("code"))
        if not concepts:
            self.no_concept(obs, obs.get("code"))
            return
        status = obs.get("status")
        if status in ("entered-in-error", "cancelled"):
            self.note(str(status), obs, f"{status} observation ignored")
            return
        if status not in _FINAL:
            self.note("not-final", obs, f"observation with status {status!r} ignored")
            return
        when = _time_of(obs, "effectiveDateTime", "effectiveInstant", "effectivePeriod", "issued")
        if when is None:
            self.note("no-time", obs, "observation has no effective time; ignored")
            return
        age = self.age_days(when)
        if age < 0:
            self.note("future-dated", obs, "observation is dated after as_of; ignored")
            return
        key = _recency_key(obs, when)
        for concept in sorted(concepts):
            kind = self.term.kind(concept)
            if kind == "lab":
                self.lab(concept, obs, age, key)
            elif kind == "finding":
                self.finding(concept, obs, age, key)

    def lab(self, concept: str, obs: Mapping[str, Any], age: float, key: tuple[Any, ...]) -> None:
        analyte = self.term.valuesets.analytes.get(concept)
        if analyte is None:
            return
        if age > analyte.lookback_days:
            prev = self.stale.get(concept)
            if prev is None or key > prev[0]:
                self.stale[concept] = (key, _ref(obs), analyte.lookback_days)
            return
        values: dict[str, Scalar] = {"age_days": math.floor(age), "computed": False}
        quantity = obs.get("valueQuantity")
        reason = None
        if not isinstance(quantity, Mapping) or quantity.get("value") is None:
            reason = "the observation has no numeric valueQuantity"
        elif quantity.get("comparator"):
            reason = f"the value is a bound ({quantity['comparator']}), not a measurement"
        if reason is None:
            assert isinstance(quantity, Mapping)
            raw = quantity["value"]
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                # FHIR JSON writes a decimal as a JSON number; "3.2" is invalid
                # (both intake modes refuse it alike)
                raise InputError(f"value {raw!r} is not a JSON number",
                                 resource_type="Observation", resource_id=str(obs.get("id")),
                                 field="valueQuantity.value")
            number = float(raw)
            if not math.isfinite(number):
                raise InputError("value is not a finite number", resource_type="Observation",
                                 resource_id=str(obs.get("id")), field="valueQuantity.value")
            unit = quantity.get("code") if quantity.get("system") == "http://unitsofmeasure.org" \
                else None
            unit = unit or quantity.get("unit") or quantity.get("code")
            values.update(charted_value=number, charted_unit=unit if isinstance(unit, str)
                          else "", charted_at=self.charted_at(obs))
            conv = convert(number, unit if isinstance(unit, str) else None, analyte)
            if conv.value is None:
                reason = conv.reason
            else:
                value = float(f"{conv.value:.10g}")
                low, high = analyte.plausible or (-math.inf, math.inf)
                if not low <= value <= high:
                    raise InputError(
                        f"{concept} {number} {unit} ({value} {conv.unit}) is outside the "
                        f"possible range {low}..{high} {conv.unit}",
                        resource_type="Observation", resource_id=str(obs.get("id")),
                        field="valueQuantity.value",
                    )
                at = _at_threshold(raw, value, self.boundaries.get(concept, ()))
                if at is not None:
                    self.note("at-threshold", obs,
                              f"{concept} {raw} {unit} ({value} {conv.unit}) is the threshold "
                              f"{at:g} {conv.unit} at the precision it was charted with: "
                              f"read as {at:g}")
                    value = at
                values.update(value=value, unit=conv.unit, status="determinate")
                if conv.note:
                    self.note("unit-annotation", obs, conv.note)
        if reason is not None:
            values.update(status="indeterminate", unit=analyte.canonical_unit)
        fact = Fact(id=f"lab:{concept}", name=concept, kind="lab", values=values,
                    sources=(_ref(obs),))
        if reason is not None:
            fact = fact.model_copy(update={"values": {**values, "reason": reason}})
        latest = self.labs.get(concept)
        if latest is None or key > latest[0]:
            self.labs[concept] = (key, fact)

    def finding(self, concept: str, res: Mapping[str, Any], age: float,
                key: tuple[Any, ...]) -> None:
        if age > self.finding_lookback:
            return
        status = "present"
        if "valueBoolean" in res:
            flag = _boolean(res["valueBoolean"])
            if flag is None:
                self.note("unreadable-finding", res, "valueBoolean is not a boolean")
                return
            status = "present" if flag else "absent"
        elif "valueCodeableConcept" in res:
            code = _code(res["valueCodeableConcept"])
            if code in _PRESENT:
                status = "present"
            elif code in _ABSENT:
                status = "absent"
            else:
                self.note("unreadable-finding", res, "finding value is neither present nor absent")
                return
        elif res.get("dataAbsentReason") is not None:
            return  # explicitly unknown: no fact
        values: dict[str, Scalar] = {"status": status, "age_days": max(0, math.floor(age))}
        sites = sorted(c for c in self.term.concepts_of(res.get("bodySite"))
                       if self.term.kind(c) == "body_site")
        _, implied, implied_nocturnal = self.term.statements(res.get("code"), concept)
        if sites:
            values["site"] = sites[0]
        elif implied is not None:  # the code itself names the site (calf spasm)
            values["site"] = implied
        self.side(concept, res, age, key, status == "present")
        for component in res.get("component") or []:
            if not isinstance(component, Mapping):
                continue
            names = self.term.concepts_of(component.get("code"))
            nocturnal = _boolean(component.get("valueBoolean"))
            if "nocturnal" in names and nocturnal is not None:
                values["nocturnal"] = nocturnal
        if "nocturnal" not in values and implied_nocturnal is not None:
            values["nocturnal"] = implied_nocturnal  # the code means it (sleep-related)
        fact = Fact(id=f"finding:{concept}", name=concept, kind="finding", values=values,
                    sources=(_ref(res),))
        prev = self.findings.get(concept)
        if prev is None or key > prev[0]:
            self.findings[concept] = (key, fact)

    # -- conditions, medications, allergies ----------------------------------
    def condition(self, cond: Mapping[str, Any]) -> None:
        concepts = self.term.concepts_of(cond.get("code"))
        if not concepts:
            self.no_concept(cond, cond.get("code"))
            return
        if self.refuted(cond, "condition"):
            return
        clinical = _code(cond.get("clinicalStatus"))
        if clinical is None:
            self.note("no-clinical-status", cond, "condition has no clinicalStatus; read as active")
        elif clinical not in _ACTIVE_CONDITION:
            return
        onset = _time_of(cond, "onsetDateTime", "recordedDate")
        if onset is not None and onset > self.as_of:
            self.note("future-dated", cond, "condition is dated after as_of; ignored")
            return
        for concept in sorted(concepts):
            kind = self.term.kind(concept)
            if kind == "condition":
                self.add(concept, "condition", cond, {})
                when = onset or self.as_of
                self.side(concept, cond, self.age_days(when), _recency_key(cond, when), True)
            elif kind == "finding":
                when = onset or self.as_of
                self.finding(concept, cond, self.age_days(when), _recency_key(cond, when))

    def medication_request(self, med: Mapping[str, Any]) -> None:
        """A MedicationRequest of the record: a draft one is a draft order."""
        if med.get("status") == "draft":
            self.order(med)
        else:
            self.medication(med)

    def order(self, res: Mapping[str, Any]) -> None:
        """A draft order: one ``order`` fact per concept it maps to."""
        rtype = str(res.get("resourceType"))
        if res.get("status") != "draft":
            raise InputError(f"a draft order must have status 'draft', not "
                             f"{res.get('status')!r}", resource_type=rtype,
                             resource_id=str(res.get("id")), field="status")
        if rtype == "MedicationRequest":
            codeable = res.get("medicationCodeableConcept")
            concepts = {c for c in self.term.concepts_of(codeable)
                        if self.term.kind(c) == "medication"}
            if not concepts:
                concepts = _named_medications(codeable, self.term)
                if concepts:
                    self.note("medication-by-name", res,
                              f"code not in the value sets; class "
                              f"{', '.join(sorted(concepts))} recognised from the "
                              "ingredient name")
        elif rtype == "ServiceRequest":
            codeable = res.get("code")
            concepts = {c for c in self.term.concepts_of(codeable)
                        if self.term.kind(c) == "lab"}
        else:
            codeable, concepts = None, set()
        if not concepts:
            self.no_concept(res, codeable)
            return
        ref = _ref(res)
        selected = self.selections is None or ref in self.selections
        text = _order_text(codeable)
        for concept in sorted(concepts):
            values: dict[str, Scalar] = {
                "concept": concept, "status": "draft", "selected": selected,
                "reference": ref, "resource_type": rtype,
                "text": text or self.term.valuesets.concepts[concept].display}
            fid = f"{ORDER}:{concept}:{ref}"
            self.facts[fid] = Fact(id=fid, name=ORDER, kind=ORDER, values=values,
                                   sources=(ref,))

    def medication(self, med: Mapping[str, Any]) -> None:
        codeable = med.get("medicationCodeableConcept")
        concepts = {c for c in self.term.concepts_of(codeable)
                    if self.term.kind(c) == "medication"}
        by_name = False
        if not concepts:
            concepts = _named_medications(codeable, self.term)
            by_name = bool(concepts)
        if not concepts:
            self.no_concept(med, codeable)
            return
        status = med.get("status")
        if status == "entered-in-error":
            self.note("entered-in-error", med, "medication entered in error; ignored")
            return
        if status != "active":
            return
        if by_name:
            self.note("medication-by-name", med,
                      f"code not in the value sets; class {', '.join(sorted(concepts))} "
                      "recognised from the ingredient name")
        for concept in sorted(concepts):
            self.add(concept, "medication", med, {})

    def allergy(self, allergy: Mapping[str, Any]) -> None:
        codes = _allergy_codes(allergy)
        concepts = {c for c in self.term.concepts_of(codes) if self.term.kind(c) == "allergy"}
        if not concepts:
            self.no_concept(allergy, *codes)
            return
        if self.refuted(allergy, "allergy"):
            return
        clinical = _code(allergy.get("clinicalStatus"))
        if clinical not in (None, "active"):
            return
        for concept in sorted(concepts):
            self.add(concept, "allergy", allergy, {})

    def refuted(self, res: Mapping[str, Any], what: str) -> bool:
        """True (and noted) when the record is refuted or entered in error."""
        verification = _code(res.get("verificationStatus"))
        if verification in ("entered-in-error", "refuted"):
            self.note(verification, res, f"{what} {verification}; ignored")
            return True
        return False

    def add(self, concept: str, kind: str, res: Mapping[str, Any],
            values: dict[str, Scalar]) -> None:
        fid = f"{kind}:{concept}"
        prev = self.facts.get(fid)
        sources = tuple(sorted({*(prev.sources if prev else ()), _ref(res)}))
        self.facts[fid] = Fact(id=fid, name=concept, kind=kind, values=values, sources=sources)

    # -- assembly ------------------------------------------------------------
    def finish(self) -> None:
        for _, fact in (*self.labs.values(), *self.findings.values()):
            self.facts[fact.id] = fact
        self.bilateral()
        for (system, code), held in sorted(self.unmapped.refs.items()):
            what = f"{system}|{code}" if system or code else "no code"
            refs = sorted(held)
            more = f" and {len(refs) - 1} more" if len(refs) > 1 else ""
            displays = sorted(self.unmapped.displays.get((system, code), ()))
            self.notes.append(DataQualityNote(
                code="unmapped-code", resource=refs[0], coding=what,
                display=displays[0] if displays else None,
                message=f"{what} matches no value set of the ruleset ({len(refs)} "
                        f"resource{'s' if len(refs) > 1 else ''}: {refs[0]}{more})"))
        for concept, (key, ref, days) in sorted(self.stale.items()):
            when = key[0]
            if concept not in self.labs:
                self.notes.append(DataQualityNote(
                    code="outside-lookback", resource=ref,
                    message=f"latest {concept} ({when.date().isoformat()}) is older than the "
                            f"{days}-day lookback; counted as missing"))
        for concept, (_, fact) in sorted(self.labs.items()):
            if fact.values.get("status") == "indeterminate":
                self.notes.append(DataQualityNote(
                    code="indeterminate", resource=fact.sources[0],
                    message=f"{concept}: {fact.values.get('reason')}"))
        self.ratios()

    def bilateral(self) -> None:
        """Findings the value sets make present from laterality: current records
        of their source concepts stating a right and a left side, or both. A
        record of the finding itself that is newer than all of them decides
        (a clinician who charts it absent after the coded sides is believed)."""
        for target, spec in sorted(self.term.valuesets.bilateral.items()):
            current = [(side, ref, age) for (concept, side), (_, present, ref, age)
                       in sorted(self.sides.items()) if concept in spec.from_ and present]
            sides = {side for side, _, _ in current}
            if not ("bilateral" in sides or {"left", "right"} <= sides):
                continue
            age = min(age for _, _, age in current)
            fid = f"finding:{target}"
            prev = self.facts.get(fid)
            if prev is not None and prev.values.get("status") == "absent" \
                    and int(prev.values["age_days"]) < age:
                continue
            sources = {ref for _, ref, _ in current} | set(prev.sources if prev else ())
            self.facts[fid] = Fact(
                id=fid, name=target, kind="finding",
                values={"status": "present", "age_days": age, "laterality": "bilateral"},
                sources=tuple(sorted(sources)))

    def ratios(self) -> None:
        for concept, analyte in sorted(self.term.valuesets.analytes.items()):
            if analyte.ratio_of is None:
                continue
            existing = self.facts.get(f"lab:{concept}")
            if existing is not None and existing.values.get("status") == "determinate":
                continue
            top, bottom = (self.facts.get(f"lab:{name}") for name in analyte.ratio_of)
            if top is None or bottom is None:
                continue
            tv, bv = top.values.get("value"), bottom.values.get("value")
            if not isinstance(tv, float) or not isinstance(bv, float) or bv <= 0:
                continue
            age = max(int(top.values["age_days"]), int(bottom.values["age_days"]))
            if age > analyte.lookback_days:
                continue
            self.facts[f"lab:{concept}"] = Fact(
                id=f"lab:{concept}", name=concept, kind="lab",
                values={"value": float(f"{tv / bv:.10g}"), "unit": analyte.canonical_unit,
                        "status": "determinate", "computed": True, "age_days": age},
                sources=tuple(sorted({*top.sources, *bottom.sources})),
            )


#: A threshold's equivalent is only matched at a precision whose half step is at
#: most this share of it: a value charted with no decimals where labs chart one
#: or two (a magnesium of "1" mg/dL) is too coarse to stand for a threshold.
_MAX_HALF_STEP = 0.05


def _at_threshold(raw: float | int, value: float, thresholds: Sequence[float]) -> float | None:
    """The threshold (canonical unit) a lab value charted as ``raw`` in another
    unit stands for, or None.

    ``value`` is ``raw`` converted. A charted value stands for a threshold when
    the threshold, converted to the charted unit and rounded to the decimals
    the value was charted with, is the charted value itself: 1.7 mg/dL of
    magnesium is the 0.70 mmol/L threshold (1.7015 mg/dL), not 0.6994 mmol/L
    below it. Then the value is neither side of the threshold and is read as
    it, so a conversion never moves a value across a threshold; a value one
    reporting step away is beyond the threshold in every unit.
    """
    if not thresholds or raw == 0 or value == raw:
        return None
    written = decimal.Decimal(raw if isinstance(raw, int) else repr(float(raw)))
    exponent = written.as_tuple().exponent
    if not isinstance(exponent, int):  # pragma: no cover - finite numbers only
        return None
    places = max(0, -exponent)
    if places > 12:
        return None
    step = decimal.Decimal(1).scaleb(-places)
    charted = written.quantize(step)
    factor = value / raw
    best: float | None = None
    for threshold in thresholds:
        equivalent = threshold / factor
        if not math.isfinite(equivalent) or equivalent == 0:
            continue
        if float(step) / 2 > _MAX_HALF_STEP * abs(equivalent):
            continue
        rounded = decimal.Decimal(repr(equivalent)).quantize(
            step, rounding=decimal.ROUND_HALF_EVEN)
        if rounded == charted and (best is None
                                   or abs(threshold - value) < abs(best - value)):
            best = threshold
    return best


def contributes(resource: Mapping[str, Any], terminology: Terminology) -> bool:
    """Whether ``resource`` can become a fact: its codes (or, for a
    medication, its ingredient names) map to a concept of the right kind. The
    same looks the facts take, cheap enough to decide what intake validates."""
    rtype = resource.get("resourceType")
    if rtype in ("Observation", "Condition"):
        return bool(terminology.concepts_of(resource.get("code")))
    if rtype in ("MedicationRequest", "MedicationStatement"):
        codeable = resource.get("medicationCodeableConcept")
        if any(terminology.kind(c) == "medication" for c in terminology.concepts_of(codeable)):
            return True
        return bool(_named_medications(codeable, terminology))
    if rtype == "AllergyIntolerance":
        return any(terminology.kind(c) == "allergy"
                   for c in terminology.concepts_of(_allergy_codes(resource)))
    return True


def _items(value: Any) -> list[Any]:
    """The items of a JSON array; nothing for anything else (unvalidated input)."""
    return value if isinstance(value, list) else []


def _named_medications(codeable: Any, terminology: Terminology) -> set[str]:
    """Medication concepts named by ingredient in a CodeableConcept's text or displays."""
    if not isinstance(codeable, Mapping):
        return set()
    texts = [codeable.get("text")] + [c.get("display") for c in _items(codeable.get("coding"))
                                      if isinstance(c, Mapping)]
    found: set[str] = set()
    for text in texts:
        if isinstance(text, str):
            found |= terminology.medications_named_in(text)
    return found


def _order_text(codeable: Any) -> str | None:
    """What an order's CodeableConcept says: its text, else its first display."""
    if not isinstance(codeable, Mapping):
        return None
    if isinstance(codeable.get("text"), str) and codeable["text"].strip():
        return " ".join(str(codeable["text"]).split())
    for coding in _items(codeable.get("coding")):
        if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
            return " ".join(str(coding["display"]).split())
    return None


def draft_order_resources(orders: Any) -> list[Mapping[str, Any]]:
    """The resources of draft orders given as a Bundle (CDS Hooks
    ``draftOrders``), a list of resources or one resource; InputError for
    anything else, or for a resource that is not of an order type."""
    if orders is None:
        return []
    if isinstance(orders, Mapping) and orders.get("resourceType") == "Bundle":
        entries = orders.get("entry") or []
        if not isinstance(entries, list):
            raise InputError("draft orders: Bundle.entry must be a list",
                             resource_type="Bundle", field="entry")
        items: list[Any] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
                raise InputError(f"draft orders: entry {i} holds no resource",
                                 resource_type="Bundle", field=f"entry[{i}]")
            items.append(entry["resource"])
    elif isinstance(orders, Mapping):
        items = [orders]
    elif isinstance(orders, Sequence) and not isinstance(orders, (str, bytes)):
        items = list(orders)
    else:
        raise InputError("draft orders must be a Bundle, a list of resources or a resource")
    out = []
    for i, res in enumerate(items):
        if not isinstance(res, Mapping) or res.get("resourceType") not in ORDER_TYPES:
            rtype = res.get("resourceType") if isinstance(res, Mapping) else None
            raise InputError(f"draft order {i} is {rtype!r}, not one of "
                             f"{', '.join(sorted(ORDER_TYPES))}", field="resourceType")
        if not isinstance(res.get("id"), str) or not res["id"]:
            raise InputError(f"draft order {i} has no id", resource_type=str(res["resourceType"]),
                             field="id")
        out.append(res)
    return out


def _order_patient(res: Mapping[str, Any]) -> str | None:
    """The patient reference of a draft order (``patient`` on NutritionOrder and
    VisionPrescription, ``subject`` on the others)."""
    key = "patient" if res.get("resourceType") in ("NutritionOrder", "VisionPrescription") \
        else "subject"
    subject = res.get(key)
    ref = subject.get("reference") if isinstance(subject, Mapping) else None
    return ref if isinstance(ref, str) else None


def _allergy_codes(allergy: Mapping[str, Any]) -> list[Any]:
    return [allergy.get("code")] + [r.get("substance") for r in _items(allergy.get("reaction"))
                                    if isinstance(r, Mapping)]


def build_facts(record: Record, terminology: Terminology, *, as_of: datetime,
                finding_lookback_days: int = 365, on_invalid: str = "refuse",
                draft_orders: Any = None,
                selections: Collection[str] | None = None,
                boundaries: Mapping[str, Sequence[float]] | None = None,
                min_age: tuple[float, str] | None = None,
                unmapped: UnmappedCodes | None = None) -> Facts:
    """Turn one patient's record into :class:`Facts` at ``as_of``.

    ``unmapped`` holds the codes of the record's resources that intake kept
    out of it because they can become no fact (``read_record(...,
    unmapped=tally.add)``): they are noted as the resources themselves would
    be.

    ``boundaries`` (analyte -> the thresholds rules compare its value with)
    reads a lab charted in another unit at a threshold's equivalent as the
    threshold (see :func:`_at_threshold`); ``min_age`` (years, the population
    in words) notes a patient younger than the ruleset's population.

    A resource whose content cannot be read (a bad date or value) raises
    :class:`InputError` with ``on_invalid="refuse"``; with ``"leave-out"`` it
    is left out and listed in :attr:`Facts.left_out`, with a note.

    ``draft_orders`` (a Bundle or a list of resources, as CDS Hooks
    ``draftOrders``) and the draft MedicationRequests of the record become
    ``order`` facts; ``selections`` names the orders under review
    (order-select), ``None`` every one (order-sign). A draft order about
    another patient than the record's, and a selection naming no draft order,
    are always refused.
    """
    orders = draft_order_resources(draft_orders)
    builder = _Builder(record, terminology, as_of, finding_lookback_days, selections,
                       boundaries, min_age, unmapped)
    builder.patient()
    left_out = [LeftOutResource(resource=lo.resource, field=lo.field, reason=lo.reason)
                for lo in record.left_out]
    readers = {"Observation": builder.observation, "Condition": builder.condition,
               "MedicationRequest": builder.medication_request,
               "MedicationStatement": builder.medication,
               "AllergyIntolerance": builder.allergy}
    for resource in record.resources:
        reader = readers.get(str(resource.get("resourceType")))
        if reader is None:
            continue
        try:
            reader(resource)
        except InputError as exc:
            if on_invalid == "refuse":
                raise
            left_out.append(LeftOutResource(resource=_ref(resource), field=exc.field,
                                            reason=exc.reason))
    refs = {_ref(res) for res in orders} | {
        _ref(res) for res in record.resources
        if res.get("resourceType") == "MedicationRequest" and res.get("status") == "draft"
    } | builder.unmapped.draft_orders
    for ref in sorted(set(selections or ()) - refs):
        raise InputError(f"selection {ref!r} names no draft order", field="selections")
    for res in orders:
        about = _order_patient(res)
        if about is not None and record.patient_ref is not None and about != record.patient_ref:
            raise InputError(f"the draft order is about {about}, not {record.patient_ref}",
                             resource_type=str(res.get("resourceType")),
                             resource_id=str(res.get("id")), field="subject")
        try:
            builder.order(res)
        except InputError as exc:
            if on_invalid == "refuse":
                raise
            left_out.append(LeftOutResource(resource=_ref(res), field=exc.field,
                                            reason=exc.reason))
    builder.finish()
    for code, ref, message in record.notes:
        builder.notes.append(DataQualityNote(code=code, resource=ref, message=message))
    for lo in left_out:
        where = f" ({lo.field})" if lo.field else ""
        builder.notes.append(DataQualityNote(code="left-out", resource=lo.resource,
                                             message=f"left out{where}: {lo.reason}"))
    notes = sorted(set(builder.notes), key=lambda n: (n.code, n.resource or "", n.message,
                                                      n.coding or ""))
    return Facts(
        as_of=as_of,
        patient=record.patient_ref,
        items=tuple(sorted(builder.facts.values(), key=lambda f: f.id)),
        data_quality=tuple(notes),
        skipped=dict(sorted(record.skipped.items())),
        left_out=tuple(sorted(set(left_out), key=lambda lo: (lo.resource, lo.field or ""))),
    )
