"""A synthetic cohort as a FHIR Bulk Data export, for tests and benchmarks.

``generate_cohort(patients, ruleset=..., seed=..., out=...)`` writes NDJSON
files the way a ``$export`` does: one or more files per resource type
(Observation split in several), lines not sorted by patient, and a manifest.

The clinical content is read from the ruleset's own files (the default
ruleset when none is given), so the generator knows no clinical topic:

* lab results of every analyte of the value sets, under each code its concept
  lists (those whose display names the kind of quantity first), in each unit
  the analyte converts from (canonical unit, and mmol/L, umol/L, meq/L or
  mg/dL where its molar mass or valence allows), some with a UCUM coding and
  some as free-text spellings; values at, just below and just above every
  threshold the rules compare the analyte with (canonical unit), and normal
  values on the side no rule fires on, inside the plausible range; dated
  within the analyte's lookback, or just past it;
* findings of the finding concepts, present or absent, at the body sites and
  with the qualifiers the rules test; conditions (some resolved, refuted or
  entered in error), medications (by code, or by a product name naming an
  ingredient) and allergies of the concepts of those kinds, coded with any of
  the codes listed, in every code system the value sets use;
* the facts of the rules that raise a critical flag (red flags) are rare;
  some patients are aimed at a rule: the facts of its ``all`` patterns and of
  one of its ``any`` patterns are written to pass its tests;
* what real feeds send: preliminary, entered-in-error and registered results,
  bounded (``<``) values, results older than the lookback or dated in the
  future, times in several UTC offsets, exact duplicates, Observations and
  Conditions of codes no value set lists, and Encounters, which no rule reads.

Output is deterministic: the same ``patients``, ``seed``, ``as_of`` and
ruleset give byte-identical files (each patient draws from its own seeded
generator, and lines are shuffled in blocks with seeded generators). Memory is
bounded by a block of patients, not by the cohort.
"""

from __future__ import annotations

import gzip
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from cdss.errors import InvalidArgument
from cdss.rulesets import (
    FIELDS,
    CompiledRule,
    Pattern,
    Ruleset,
    Test,
    _content,
    load_ruleset,
)
from cdss.terminology import LOINC, SNOMED, UCUM

__all__ = ["GeneratedCohort", "generate_cohort"]

_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
_ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
# answers to a yes/no question (SNOMED CT qualifier values Yes / No)
_YES, _NO = "373066001", "373067005"

#: Resource types written, in manifest order.
TYPES = ("Patient", "Observation", "Condition", "MedicationRequest", "AllergyIntolerance",
         "Encounter")
_BLOCK = 2000  # patients shuffled together; bounds memory

# How often things happen: generic rates, the same for every ruleset.
_LAB_RATE = 0.5  # an analyte a rule tests, per patient
_OTHER_LAB_RATE = 0.35  # an analyte no rule tests (such as the parts of a ratio)
_NEAR_THRESHOLD = 0.45  # a lab value near a threshold rather than normal
_SYMPTOMATIC = 0.6  # a patient with findings
_FINDING_RATE = 0.15  # a finding, per symptomatic patient
_RED_FLAG_RATE = 0.02  # a patient with red-flag findings
_CONDITION_RATE = 0.05
_RARE_CONDITION_RATE = 0.003  # a condition a critical rule tests
_MEDICATION_RATE = 0.06
_ALLERGY_RATE = 0.04
_UNRELATED_RATE = 0.08  # an unmapped Observation or Condition
_AIMED = 0.35  # a patient aimed at a rule


@dataclass(frozen=True)
class _Lab:
    """What the generator writes for one analyte."""

    name: str
    display: str
    factors: dict[str, float]  # unit -> factor to the canonical unit
    codings: dict[str, list[_content.Coding]]  # unit -> the codes that fit it
    near: tuple[float, ...]  # values around the thresholds (canonical unit)
    normal: tuple[float, float, int]  # low, high, decimals
    lookback: int
    rate: float


def _normal(tests: Sequence[Test], low: float, high: float) -> tuple[float, float, int]:
    """A range of values no test fires on, inside ``[low, high]``, and the
    decimals its values are written with: from the highest ``lt``/``le``
    threshold to the lowest ``gt``/``ge`` one; with thresholds on one side
    only, from the threshold halfway (log scale) to the plausible limit, at
    most a factor of 2 away; with none, around the middle (log scale) of the
    plausible range."""
    floors = _content.thresholds(t for t in tests if t.op in ("lt", "le"))
    ceilings = _content.thresholds(t for t in tests if t.op in ("gt", "ge"))
    a: float
    b: float
    if floors and ceilings:
        a, b = sorted((max(floors), min(ceilings)))
    elif floors and max(floors) > 0:
        a = max(floors)
        b = min(math.sqrt(a * high), a * 2) if high > a else a * 2
    elif ceilings and min(ceilings) > 0:
        b = min(ceilings)
        a = max(math.sqrt(b * low), b / 2) if 0 < low < b else b / 2
    elif low > 0:
        middle = math.sqrt(low * high)
        a, b = middle / 1.5, middle * 1.5
    else:
        a, b = low + (high - low) * 0.3, low + (high - low) * 0.5
    a, b = max(a, low), min(b, high)
    if a >= b:
        a, b = low, high
    decimals = max(0, math.ceil(-math.log10((b - a) / 20))) if b > a else 3
    return a, b, decimals


class _Content:
    """The clinical content of a ruleset, read once from its files: concepts
    with their codings per kind, analytes, the thresholds and the body sites
    and qualifiers the rules test, the facts that are red flags."""

    def __init__(self, ruleset: Ruleset) -> None:
        vs = ruleset.valuesets
        self.spec = ruleset.spec
        self.codings = _content.concept_codings(vs)
        self.finding_lookback = ruleset.file.finding_lookback_days
        patterns = _content.patterns(ruleset.rules)
        self.rare = set(_content.critical_facts(ruleset.rules))
        tested = {p.fact for p in patterns}

        def of_kind(kind: str) -> list[str]:
            return [n for n, c in vs.concepts.items() if c.kind == kind and self.codings[n]]

        self.kinds = {n: c.kind for n, c in vs.concepts.items()}
        self.displays = {n: c.display for n, c in vs.concepts.items()}
        self.ingredients = {n: list(c.ingredients) for n, c in vs.concepts.items()}
        self.labs: dict[str, _Lab] = {}
        for name in of_kind("lab"):
            analyte = vs.analytes.get(name)
            if analyte is None:  # a lab concept without analyte data never becomes a fact
                continue
            low, high = _content.plausible(analyte)
            tests = [t for p in patterns if p.fact == name for t in p.tests if t.field == "value"]
            near = [p for v in dict.fromkeys(_content.thresholds(tests))
                    for p in (v, *_content.around(v)) if low <= p <= high]
            factors = _content.unit_factors(analyte)
            self.labs[name] = _Lab(
                name=name, display=vs.concepts[name].display, factors=factors,
                codings={u: _content.lab_codings(self.codings[name], factors, u)
                         for u in factors},
                near=tuple(near), normal=_normal(tests, low, high),
                lookback=analyte.lookback_days,
                rate=_LAB_RATE if name in tested else _OTHER_LAB_RATE)
        self.findings = [n for n in of_kind("finding") if n not in self.rare]
        self.red_flags = [n for n in of_kind("finding") if n in self.rare]
        self.conditions = of_kind("condition")
        self.medications = of_kind("medication")
        self.allergies = of_kind("allergy")
        self.sites = of_kind("body_site")
        # qualifiers a finding can carry as a component: those that are finding fields
        self.qualifiers = [n for n in of_kind("qualifier") if n in FIELDS["finding"]]
        self.finding_sites: dict[str, list[str]] = {}
        self.finding_qualifiers: dict[str, list[str]] = {}
        for pattern in patterns:
            for test in pattern.tests:
                if test.field == "site":
                    names = test.value if test.op == "in" else (test.value,)
                    found = self.finding_sites.setdefault(pattern.fact, [])
                    found += [s for s in names if s in self.sites and s not in found]
                elif test.field in self.qualifiers:
                    found = self.finding_qualifiers.setdefault(pattern.fact, [])
                    if test.field not in found:
                        found.append(test.field)
        terminology = ruleset.terminology
        self.unrelated_labs = [lab for lab in _content.UNRELATED_LABS
                               if not terminology.concepts_of_coding(LOINC, lab[0])]
        self.unrelated_conditions = [c for c in _content.UNRELATED_CONDITIONS
                                     if not terminology.concepts_of_coding(SNOMED, c[0])]
        # rules a patient can be aimed at: none tests a red flag, directly or
        # through the facts it derives
        self.producers: dict[str, list[CompiledRule]] = {}
        for rule in ruleset.rules:
            for action in rule.rule.then:
                if action.derive:
                    self.producers.setdefault(action.derive, []).append(rule)
        self.aimable = [r for r in ruleset.rules
                        if not self._critical(r, ()) and (r.all or r.any)]

    def _critical(self, rule: CompiledRule, seen: tuple[str, ...]) -> bool:
        for pattern in (*rule.all, *rule.any):
            if pattern.fact in self.rare:
                return True
            if pattern.fact in self.producers and pattern.fact not in seen and all(
                    self._critical(r, (*seen, pattern.fact))
                    for r in self.producers[pattern.fact]):
                return True
        return False

    def aim(self, rng: random.Random, rule: CompiledRule, depth: int = 0) -> list[Pattern]:
        """The patterns of fact concepts that make ``rule`` fire: every ``all``
        pattern and one ``any`` pattern, derived facts through a rule deriving
        them that raises no red flag."""
        chosen = [*rule.all, *([rng.choice(rule.any)] if rule.any else [])]
        out: list[Pattern] = []
        for pattern in chosen:
            producers = [r for r in self.producers.get(pattern.fact, ())
                         if not self._critical(r, ())]
            if producers:
                if depth < 3:
                    out += self.aim(rng, rng.choice(producers), depth + 1)
            elif pattern.fact in self.kinds:
                out.append(pattern)
        return out


def _passing(tests: Sequence[Test], field_name: str, choices: Sequence[Any]) -> list[Any]:
    """The ``choices`` that pass the tests on ``field_name`` (all of them when
    there is none)."""
    on = [t for t in tests if t.field == field_name]
    return [c for c in choices if all(t.holds({field_name: c}) for t in on)]


@dataclass(frozen=True)
class GeneratedCohort:
    """What :func:`generate_cohort` wrote: the folder, its manifest, the files
    and the number of resources per type."""

    out: Path
    manifest: Path
    files: tuple[Path, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def patients(self) -> int:
        return self.counts.get("Patient", 0)


class _Patient:
    """The resources of one synthetic patient, drawn from its own generator."""

    def __init__(self, content: _Content, seed: int, index: int, as_of: datetime) -> None:
        self.content = content
        self.rng = random.Random(f"cdss-cohort:{seed}:{index}")
        self.pid = f"pt{index:07d}"
        self.as_of = as_of
        self.serial = 0
        self.out: list[tuple[str, dict[str, Any]]] = []
        self.aimed: dict[str, list[Pattern]] = {}

    def next_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{self.pid}-{prefix}{self.serial}"

    def when(self, days_back: float, *, time: bool | None = None) -> str:
        moment = self.as_of - timedelta(days=days_back)
        if time is None:
            time = self.rng.random() < 0.7
        if not time:
            return moment.date().isoformat()
        zone = self.rng.choice(("Z", "+00:00", "-05:00", "+01:00"))
        stamp = moment.replace(hour=self.rng.randrange(6, 20), minute=self.rng.randrange(60),
                               second=0, microsecond=0)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + zone

    def add(self, resource: dict[str, Any]) -> None:
        self.out.append((resource["resourceType"], resource))

    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def coding(self, concept: str) -> dict[str, str]:
        system, code, display = self.rng.choice(self.content.codings[concept])
        out = {"system": system, "code": code}
        if display:
            out["display"] = display
        return out

    def take(self, concept: str) -> list[Pattern]:
        """The patterns this patient is aimed at for ``concept`` (used once)."""
        return self.aimed.pop(concept, [])

    # -------------------------------------------------------------- patient
    def patient(self) -> None:
        rng = self.rng
        res: dict[str, Any] = {"resourceType": "Patient", "id": self.pid,
                               "meta": {"profile": ["http://hl7.org/fhir/us/core/"
                                                    "StructureDefinition/us-core-patient"]},
                               "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1",
                                               "value": f"MRN{rng.randrange(10**8):08d}"}],
                               "active": True}
        if rng.random() < 0.97:
            age_days = rng.randrange(18 * 365, 92 * 365)
            res["birthDate"] = (self.as_of.date() - timedelta(days=age_days)).isoformat()
        res["gender"] = rng.choices(("female", "male", "other", "unknown"),
                                    (0.5, 0.47, 0.02, 0.01))[0]
        res["name"] = [{"family": f"Test{rng.randrange(1000):03d}", "given": ["Synthetic"]}]
        self.add(res)

    def aim(self) -> None:
        """Some patients are aimed at a rule: the facts that make it fire."""
        rules = self.content.aimable
        if rules and self.rng.random() < _AIMED:
            for pattern in self.content.aim(self.rng, self.rng.choice(rules)):
                self.aimed.setdefault(pattern.fact, []).append(pattern)

    # ----------------------------------------------------------------- labs
    def labs(self) -> None:
        rng = self.rng
        for lab in self.content.labs.values():
            count = 0
            if rng.random() < lab.rate:
                count = rng.choices((1, 2, 3), (0.7, 0.22, 0.08))[0]
            for pattern in self.take(lab.name):
                values = _passing(pattern.tests, "value", lab.near)
                self.lab(lab, rng.choice(values) if values else None)
            for _ in range(count):
                self.lab(lab, None)
        for code, display, value, unit in self.content.unrelated_labs:
            if rng.random() < _UNRELATED_RATE:
                self.add({
                    "resourceType": "Observation", "id": self.next_id("obs"), "status": "final",
                    "category": [{"coding": [{"system": _CATEGORY, "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                    "subject": self.subject(), "effectiveDateTime": self.when(
                        rng.uniform(0, 400)),
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM,
                                      "code": unit}})

    def lab(self, lab: _Lab, canonical: float | None) -> None:
        """A result of ``lab``: ``canonical`` (canonical unit), or a value
        drawn near a threshold or in the normal range."""
        rng = self.rng
        if canonical is None:
            if lab.near and rng.random() < _NEAR_THRESHOLD:
                canonical = rng.choice(lab.near)
            else:
                low, high, decimals = lab.normal
                canonical = round(rng.uniform(low, high), decimals)
        units = list(lab.factors)
        unit = rng.choice([units[0], *units])  # the canonical unit most often
        age = rng.random()
        days: float
        if age < 0.1:
            days = lab.lookback + rng.randrange(1, 400)  # stale: outside the lookback
        elif age < 0.12:
            days = -rng.randrange(1, 30)  # future-dated
        else:
            days = rng.uniform(0, lab.lookback * 0.95)
        status = rng.choices(("final", "amended", "corrected", "preliminary",
                              "entered-in-error", "registered"),
                             (0.9, 0.02, 0.02, 0.03, 0.02, 0.01))[0]
        value = _content.written(canonical, lab.factors[unit])
        number: float | int = int(value) if value == int(value) and rng.random() < 0.3 else value
        quantity: dict[str, Any]
        if rng.random() < 0.3:  # unit as text only, in one of its spellings
            quantity = {"value": number,
                        "unit": rng.choice((unit, *_content.SPELLINGS.get(unit, ())))}
        else:
            quantity = {"value": number, "unit": unit, "system": UCUM, "code": unit}
        if rng.random() < 0.015:
            quantity["comparator"] = "<"
        system, code, display = rng.choice(lab.codings[unit])
        coding = {"system": system, "code": code, **({"display": display} if display else {})}
        when = self.when(days)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": self.next_id("lab"), "status": status,
            "category": [{"coding": [{"system": _CATEGORY, "code": "laboratory"}]}],
            "code": {"coding": [coding], "text": lab.display},
            "subject": self.subject(), "effectiveDateTime": when, "valueQuantity": quantity,
        }
        if "T" in when and rng.random() < 0.5:
            res["issued"] = when
        self.add(res)
        if rng.random() < 0.02:  # sent twice
            self.add(res)

    # ------------------------------------------------------------- findings
    def findings(self) -> None:
        rng = self.rng
        content = self.content
        symptomatic = rng.random() < _SYMPTOMATIC
        for name in content.findings:
            for pattern in self.take(name):
                self.finding(name, pattern.tests)
            if symptomatic and rng.random() < _FINDING_RATE:
                self.finding(name, (), present=rng.random() < 0.9)
        if content.red_flags:
            if rng.random() < _RED_FLAG_RATE:  # red flags, rare
                for name in rng.sample(content.red_flags,
                                       min(len(content.red_flags), rng.choice((1, 1, 2)))):
                    self.finding(name, (), present=True)
            if rng.random() < 0.03:  # a recorded absence
                self.finding(rng.choice(content.red_flags), (), present=False)

    def finding(self, name: str, tests: Sequence[Test], *, present: bool | None = None) -> None:
        """A finding of ``name``; with ``tests`` (a pattern aimed at), one that
        passes them."""
        rng = self.rng
        content = self.content
        if present is None:
            statuses = _passing(tests, "status", ("present", "absent")) or ["present"]
            present = rng.choice(statuses) == "present"
        lookback = content.finding_lookback
        days = rng.uniform(0, lookback * 1.4) if rng.random() < 0.15 and not tests else \
            rng.uniform(0, lookback * 0.8)
        res: dict[str, Any] = {
            "resourceType": "Observation", "id": self.next_id("obs"),
            "status": rng.choices(("final", "preliminary", "entered-in-error"),
                                  (0.95, 0.03, 0.02))[0],
            "category": [{"coding": [{"system": _CATEGORY, "code": "exam"}]}],
            "code": {"coding": [self.coding(name)]},
            "subject": self.subject(), "effectiveDateTime": self.when(days),
        }
        form = rng.random()
        if form < 0.6:
            res["valueBoolean"] = present
        elif form < 0.85:
            res["valueCodeableConcept"] = {"coding": [{"system": SNOMED,
                                                       "code": _YES if present else _NO}]}
        elif not present:
            res["valueBoolean"] = False
        tested = content.finding_sites.get(name, [])
        wanted = [t for t in tests if t.field == "site"]
        if wanted:
            sites = _passing(tests, "site", content.sites)
            site = rng.choice(sites) if sites else None
        elif tested and rng.random() < 0.7:
            others = [s for s in content.sites if s not in tested]
            site = rng.choice(tested if not others or rng.random() < 0.8 else others)
        elif content.sites and rng.random() < 0.1:
            site = rng.choice(content.sites)
        else:
            site = None
        if site:
            res["bodySite"] = {"coding": [self.coding(site)]}
        components = []
        for qualifier in content.finding_qualifiers.get(name, []):
            values = _passing(tests, qualifier, (True, False))
            if [t for t in tests if t.field == qualifier]:
                if not values:
                    continue
                value = rng.choice(values)
            elif rng.random() < 0.6:
                value = rng.random() < 0.7
            else:
                continue
            components.append({"code": {"coding": [self.coding(qualifier)]},
                               "valueBoolean": value})
        if components:
            res["component"] = components
        self.add(res)

    # ----------------------------------------------------------- conditions
    def conditions(self) -> None:
        rng = self.rng
        for name in self.content.conditions:
            aimed = self.take(name)
            rate = _RARE_CONDITION_RATE if name in self.content.rare else _CONDITION_RATE
            for _ in range(len(aimed) + (rng.random() < rate)):
                self.condition(self.coding(name))
        for code, display in self.content.unrelated_conditions:
            if rng.random() < _UNRELATED_RATE:
                self.condition({"system": SNOMED, "code": code, "display": display})

    def condition(self, coding: dict[str, str]) -> None:
        rng = self.rng
        res: dict[str, Any] = {
            "resourceType": "Condition", "id": self.next_id("cond"),
            "code": {"coding": [coding]},
            "subject": self.subject(),
            "recordedDate": self.when(rng.uniform(0, 2000), time=True),
        }
        clinical = rng.choices(("active", "resolved", "inactive", None),
                               (0.8, 0.1, 0.05, 0.05))[0]
        if clinical:
            res["clinicalStatus"] = {"coding": [{"system": _COND_CLINICAL, "code": clinical}]}
        verification = rng.choices(("confirmed", "provisional", "entered-in-error",
                                    "refuted"), (0.9, 0.05, 0.03, 0.02))[0]
        res["verificationStatus"] = {"coding": [{"system": _COND_VERIFICATION,
                                                 "code": verification}]}
        if rng.random() < 0.5:
            res["onsetDateTime"] = self.when(rng.uniform(0, 3000), time=False)
        self.add(res)

    # ---------------------------------------------------------- medications
    def medications(self) -> None:
        rng = self.rng
        for name in self.content.medications:
            aimed = self.take(name)
            for _ in range(len(aimed) + (rng.random() < _MEDICATION_RATE)):
                self.medication(name)

    def medication(self, name: str) -> None:
        rng = self.rng
        ingredients = self.content.ingredients[name]
        if ingredients and rng.random() < 0.2:  # a product name, no code
            text = f"{rng.choice(ingredients).title()} {rng.choice(('10', '25', '40'))} MG " \
                   "Oral Tablet"
            codeable: dict[str, Any] = {"text": text}
        else:
            coding = self.coding(name)
            codeable = {"coding": [coding]}
            if "display" in coding:
                codeable["text"] = coding["display"]
        self.add({
            "resourceType": "MedicationRequest", "id": self.next_id("med"),
            "status": rng.choices(("active", "stopped", "completed", "entered-in-error"),
                                  (0.85, 0.08, 0.05, 0.02))[0],
            "intent": "order",
            "medicationCodeableConcept": codeable,
            "subject": self.subject(),
            "authoredOn": self.when(rng.uniform(0, 700), time=False),
        })

    # ------------------------------------------------------------ allergies
    def allergies(self) -> None:
        rng = self.rng
        for name in self.content.allergies:
            aimed = self.take(name)
            for _ in range(len(aimed) + (rng.random() < _ALLERGY_RATE)):
                self.allergy(name)

    def allergy(self, name: str) -> None:
        rng = self.rng
        cc = {"coding": [self.coding(name)]}
        res: dict[str, Any] = {"resourceType": "AllergyIntolerance", "id": self.next_id("alg")}
        if rng.random() < 0.03:  # no clinical status then (FHIR ait-2)
            res["verificationStatus"] = {"coding": [{"system": _ALLERGY_VERIFICATION,
                                                     "code": "entered-in-error"}]}
        else:
            res["clinicalStatus"] = {"coding": [{"system": _ALLERGY_CLINICAL, "code": rng.choices(
                ("active", "inactive"), (0.92, 0.08))[0]}]}
        res["patient"] = self.subject()
        if rng.random() < 0.8:
            res["code"] = cc
        else:
            res["reaction"] = [{"substance": cc, "manifestation": [{"text": "hives"}]}]
        self.add(res)

    # ----------------------------------------------------------- encounters
    def encounters(self) -> None:
        rng = self.rng
        for _ in range(rng.choices((0, 1, 2, 3), (0.2, 0.4, 0.3, 0.1))[0]):
            start = self.when(rng.uniform(0, 700), time=True)
            self.add({
                "resourceType": "Encounter", "id": self.next_id("enc"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                          "code": "AMB"},
                "subject": self.subject(), "period": {"start": start, "end": start},
            })

    def build(self) -> list[tuple[str, dict[str, Any]]]:
        self.patient()
        self.aim()
        self.labs()
        self.findings()
        self.conditions()
        self.medications()
        self.allergies()
        self.encounters()
        return self.out


def _as_of(value: datetime | date | str | None) -> datetime:
    if value is None:
        return datetime(2026, 3, 1, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value[:10])
        except ValueError:
            raise InvalidArgument(f"as_of {value!r} is not an ISO date") from None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.combine(value, datetime.min.time(), tzinfo=timezone.utc)


def _resolve(ruleset: Ruleset | str | None) -> Ruleset:
    if ruleset is None:
        return load_ruleset()
    if isinstance(ruleset, Ruleset):
        return ruleset
    if isinstance(ruleset, str):
        return load_ruleset(ruleset)
    raise InvalidArgument(f"ruleset must be a Ruleset, 'id[@version]' or None, not {ruleset!r}")


def _blocks(content: _Content, patients: int, seed: int, as_of: datetime
            ) -> Iterator[list[tuple[str, bytes]]]:
    for start in range(0, patients, _BLOCK):
        lines: list[tuple[str, bytes]] = []
        for index in range(start, min(start + _BLOCK, patients)):
            lines += [(rtype, orjson.dumps(res))
                      for rtype, res in _Patient(content, seed, index, as_of).build()]
        random.Random(f"cdss-cohort:{seed}:block:{start}").shuffle(lines)
        yield lines


def generate_cohort(
    patients: int,
    *,
    ruleset: Ruleset | str | None = None,
    seed: int = 0,
    out: str | Path,
    as_of: datetime | date | str | None = None,
    observation_files: int = 2,
    gzip_files: bool = False,
) -> GeneratedCohort:
    """Write a synthetic bulk export of ``patients`` patients into ``out``,
    with the clinical content ``ruleset`` reads (a :class:`Ruleset`, or
    ``"id[@version]"``; default: the default ruleset of
    :func:`cdss.rulesets.load_ruleset`).

    ``as_of`` (default 2026-03-01) is the date the data is relative to: screen
    it with the same ``as_of``. Observations are spread over
    ``observation_files`` files (at least 2), chosen line by line, so one
    patient's results are in several files. ``gzip_files`` writes
    ``.ndjson.gz`` files (deterministic: no time stamp in the header).
    Returns what was written; the manifest is ``out/manifest.json``.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 0:
        raise InvalidArgument(f"patients must be a whole number >= 0, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    if observation_files < 2:
        raise InvalidArgument("observation_files must be at least 2")
    when = _as_of(as_of)
    content = _Content(_resolve(ruleset))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".ndjson.gz" if gzip_files else ".ndjson"
    names: dict[str, list[str]] = {
        rtype: ([f"{rtype}.{i + 1}{suffix}" for i in range(observation_files)]
                if rtype == "Observation" else [f"{rtype}{suffix}"])
        for rtype in TYPES
    }
    handles: dict[str, IO[bytes]] = {}
    counts: dict[str, int] = dict.fromkeys(TYPES, 0)
    per_file: dict[str, int] = {}
    pick = random.Random(f"cdss-cohort:{seed}:files")
    try:
        for files in names.values():
            for name in files:
                path = folder / name
                handles[name] = (
                    gzip.GzipFile(path, "wb", mtime=0, compresslevel=5)  # type: ignore[assignment]
                    if gzip_files else path.open("wb"))
                per_file[name] = 0
        for block in _blocks(content, patients, seed, when):
            for rtype, line in block:
                files = names[rtype]
                name = files[pick.randrange(len(files))] if len(files) > 1 else files[0]
                handles[name].write(line + b"\n")
                per_file[name] += 1
                counts[rtype] += 1
    finally:
        for handle in handles.values():
            handle.close()
    manifest = {
        "transactionTime": when.isoformat().replace("+00:00", "Z"),
        "request": f"cdss generate --patients {patients} --seed {seed} "
                   f"--ruleset {content.spec}",
        "requiresAccessToken": False,
        "output": [{"type": rtype, "url": name, "count": per_file[name]}
                   for rtype in TYPES for name in names[rtype]],
        "error": [],
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    written = tuple(folder / name for rtype in TYPES for name in names[rtype])
    return GeneratedCohort(out=folder, manifest=manifest_path, files=written, counts=counts)
