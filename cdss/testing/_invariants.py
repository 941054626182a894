"""Invariants every ruleset must keep, checked on generated records.

In words first (each is a :data:`PROPERTIES` entry):

* only CDSSErrors: evaluating any generated record gives an Assessment or
  raises a :class:`~cdss.errors.CDSSError`, never another exception;
* determinism: the same record gives byte-identical ``Assessment.to_json()``,
  and evaluating leaves the record unchanged;
* the rete engine and the reference evaluator give identical JSON;
* the order of the resources does not change the JSON;
* a lab written in another unit it converts from, sent twice, or surrounded
  by resources no rule reads does not change the conclusions (flags,
  referrals, plan, suppressions, data requests, rules fired);
* red flags win, as the ruleset file declares it (``policies:``): with a
  flag of a policy's severity, no plan item of its category is left;
* monotonicity, as the ruleset file declares it (``invariants:``): moving an
  analyte's latest value further in the declared direction never removes the
  declared flag;
* reachability: every rule fires on some generated record.

:func:`check_ruleset` explores with hypothesis (``given`` with a fixed seed,
no example database, no deadline), then shrinks every invariant that failed
to the smallest record that still fails it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from cdss.assessment import Assessment
from cdss.errors import CDSSError, InvalidArgument
from cdss.evaluation import evaluate, extract_facts
from cdss.facts import Facts, parse_time
from cdss.rulesets import CompiledRule, Invariant, Policy, Ruleset, _content
from cdss.terminology import UCUM
from cdss.testing._report import Failure, PropertyResult, Report
from cdss.testing.strategies import (
    _BOOLEANS,
    DEFAULT_AS_OF,
    PATIENT_ID,
    RecordList,
    Resource,
    _aimed_record,
    _as_of,
    _ints,
    _irrelevant,
    _Kit,
    _kit,
    _pick,
    _ruleset,
    from_ruleset,
)
from cdss.units import convert

__all__ = ["PROPERTIES", "check_ruleset", "clinical_summary"]

#: The invariants :func:`check_ruleset` checks, by name, in words.
PROPERTIES: dict[str, str] = {
    "only-cdss-errors": "Every record gives an Assessment or raises a CDSSError, never another "
                        "exception.",
    "determinism": "The same record gives byte-identical Assessment JSON, and evaluation leaves "
                   "the record unchanged.",
    "engines-agree": "The rete engine and the reference evaluator give identical JSON.",
    "order-invariance": "Shuffling the resources does not change the JSON.",
    "unit-invariance": "A lab written in another unit it converts from gives the same "
                       "conclusions.",
    "duplicate-invariance": "Resources sent twice give the same conclusions.",
    "irrelevant-resource-invariance": "Adding resources no rule reads (Encounter, Claim, "
                                      "unmapped codes...) gives the same conclusions.",
    "time-zone-invariance": "The same instants written in another UTC offset give the same "
                            "conclusions.",
    "red-flag-dominance": "With a flag of the severity a declared policy names, no plan item of "
                          "the category it names is left (every declared policy).",
    "monotonicity": "Moving an analyte's latest value further in the direction the ruleset "
                    "declares never removes the flag it declares (one check per declaration).",
    "reachability": "Every rule fires on some generated record.",
}
#: Examples an invariant is checked on while shrinking its failure (the
#: exploration up to the failure included); shrinking converges well before.
_SHRINK_BUDGET = 200
_USABLE = ("final", "amended", "corrected")


def clinical_summary(assessment: Assessment) -> dict[str, Any]:
    """What an Assessment concludes, without the evidence (values, resource
    ids) and data-quality notes that differ between equivalent records:
    flags (code, severity, rule), referrals, the plan (code, text, emphasis,
    tailoring, rules), suppressions, data requests and the rules fired."""
    return {
        "flags": [[f.code, f.severity, f.rule_id] for f in assessment.flags],
        "referrals": [[r.code, r.urgency, r.rule_id] for r in assessment.referrals],
        "plan": [[p.code, p.text, p.emphasis, p.tailoring, p.rule_ids] for p in assessment.plan],
        "suppressed": [[s.code, s.reason, s.rule_id] for s in assessment.suppressed],
        "data_requests": [[d.analyte, d.rule_id] for d in assessment.data_requests],
        "fired": [[t.stratum, t.rule_id] for t in assessment.trace],
    }


# --------------------------------------------------------------------------- #
# Examples: a record and its variants
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Example:
    """A generated record and what the invariants compare it with."""

    record: RecordList
    shuffled: RecordList
    other_units: RecordList | None
    duplicated: RecordList
    irrelevant: RecordList
    other_offsets: RecordList


def _unit_name(quantity: dict[str, Any]) -> str | None:
    unit = quantity.get("code") if quantity.get("system") == UCUM else quantity.get("unit")
    if not isinstance(unit, str):
        return None
    for name, spellings in _content.SPELLINGS.items():
        if unit in spellings:
            return name
    return unit


def _lab_concept(kit: _Kit, resource: Resource) -> str | None:
    if resource.get("resourceType") != "Observation":
        return None
    labs = [c for c in kit.terminology.concepts_of(resource.get("code"))
            if c in kit.valuesets.analytes]
    return labs[0] if len(labs) == 1 else None


@st.composite
def _in_other_units(draw: st.DrawFn, kit: _Kit, record: RecordList) -> RecordList | None:
    """``record`` with some lab values written in another unit they convert
    from (under a code of the same concept that fits the unit), or None when
    it has no such lab."""
    movable: list[tuple[int, str, str]] = []
    for i, res in enumerate(record):
        concept = _lab_concept(kit, res)
        quantity = res.get("valueQuantity")
        if concept is None or not isinstance(quantity, dict) or quantity.get("comparator") \
                or not isinstance(quantity.get("value"), (int, float)):
            continue
        unit = _unit_name(quantity)
        if unit in kit.units[concept] and len(kit.units[concept]) > 1:
            movable.append((i, concept, unit))
    if not movable:
        return None
    out = copy.deepcopy(record)
    for i, concept, unit in draw(st.lists(st.sampled_from(movable), min_size=1,
                                          unique_by=lambda m: m[0])):
        factors = kit.units[concept]
        other = _pick(draw, [u for u in factors if u != unit])
        canonical = out[i]["valueQuantity"]["value"] * factors[unit]
        out[i]["valueQuantity"] = {"value": _content.written(canonical, factors[other]),
                                   "unit": other, "system": UCUM, "code": other}
        fitting = kit.lab_codings(concept, other)
        codings = out[i]["code"].get("coding", [])
        if codings and (codings[0].get("system"), codings[0].get("code")) not in \
                {(s, c) for s, c, _ in fitting}:
            system, code, display = fitting[0]
            out[i]["code"] = {"coding": [{"system": system, "code": code,
                                          **({"display": display} if display else {})}]}
    return out


_TIMES = ("effectiveDateTime", "effectiveInstant", "issued", "onsetDateTime", "recordedDate",
          "authoredOn")


@st.composite
def _in_other_offsets(draw: st.DrawFn, record: RecordList) -> RecordList:
    """``record`` with every date-time that has a time of day written as the
    same instant in another UTC offset (dates without a time stay as they are)."""
    minutes = draw(st.sampled_from([-600, -300, 0, 90, 330, 840]))
    zone = timezone(timedelta(minutes=minutes))
    out = copy.deepcopy(record)
    for res in out:
        for name in _TIMES:
            value = res.get(name)
            if isinstance(value, str) and "T" in value:
                res[name] = parse_time(value).astimezone(zone).isoformat()
    return out


@st.composite
def _with_duplicates(draw: st.DrawFn, record: RecordList) -> RecordList:
    """``record`` with some resources sent again: the same resource (same id),
    or, for conditions, medications, allergies and resources no rule reads,
    also re-sent under a new id. (An Observation under a new id could become
    the latest of two results taken at the same instant, a different record.)"""
    out = list(record)
    chosen = draw(st.lists(_ints(0, len(record) - 1), min_size=1, max_size=3,
                           unique=True))
    for n, i in enumerate(chosen):
        copied = copy.deepcopy(record[i])
        if copied["resourceType"] not in ("Patient", "Observation") and draw(_BOOLEANS):
            copied["id"] = f"{copied['id']}-resent-{n}"
        out.insert(draw(_ints(0, len(out))), copied)
    return out


@st.composite
def _with_irrelevant(draw: st.DrawFn, kit: _Kit, record: RecordList) -> RecordList:
    """``record`` with resources no rule reads inserted anywhere."""
    out = list(record)
    for n, res in enumerate(draw(st.lists(_irrelevant(kit), min_size=1, max_size=3))):
        extra = {"resourceType": res["resourceType"], "id": f"extra-{n + 1}", **res}
        out.insert(draw(_ints(0, len(out))), extra)
    return out


def _partners(ruleset: Ruleset, index: int) -> tuple[CompiledRule, ...]:
    """The rules to aim at together with rule number ``index``: for a rule
    that leads to a flag a declared policy names, the rules that plan items of
    the category it excludes, and the other way round (so that every policy
    is put to the test); else every other rule."""
    items = {item.code: item.category for item in ruleset.file.plan_items}
    policies = ruleset.file.policies
    categories = {p.no_plan_category for p in policies if p.no_plan_category} | {
        item.category for item in ruleset.file.plan_items for p in policies
        if p.plan_leads_with and item.category not in p.plan_leads_with}

    def critical(rule: CompiledRule) -> bool:
        return any(a.flag and _applies(p, a.flag.code, a.flag.severity)
                   for a in rule.rule.then for p in policies)

    def exercise(rule: CompiledRule) -> bool:
        return any(a.plan and items.get(a.plan) in categories for a in rule.rule.then)

    red_facts = {a.derive for r in ruleset.rules if critical(r) for a in r.rule.then if a.derive}
    rule = ruleset.rules[index]
    uses = {p.fact for p in (*rule.all, *rule.any, *rule.none)}
    if critical(rule) or uses & red_facts:
        paired = tuple(r for r in ruleset.rules if exercise(r))
    elif exercise(rule):
        paired = tuple(r for r in ruleset.rules if critical(r))
    else:
        paired = ()
    return paired or ruleset.rules[:index] + ruleset.rules[index + 1:]


@st.composite
def _examples(draw: st.DrawFn, kit: _Kit, rule: int) -> _Example:
    """A record aimed at rule number ``rule`` (and maybe at a partner), with
    its variants."""
    rules = kit.ruleset.rules
    record = draw(_aimed_record(kit, (rules[rule],), True, _partners(kit.ruleset, rule)))
    return _Example(
        record=record,
        shuffled=draw(st.permutations(record)),
        other_units=draw(_in_other_units(kit, record)),
        duplicated=draw(_with_duplicates(record)),
        irrelevant=draw(_with_irrelevant(kit, record)),
        other_offsets=draw(_in_other_offsets(record)),
    )


# --------------------------------------------------------------------------- #
# Evaluating an example, once per record and engine
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Outcome:
    assessment: Assessment | None = None
    error: CDSSError | None = None
    unexpected: BaseException | None = None

    def full(self) -> bytes:
        if self.assessment is not None:
            return self.assessment.to_json(engine=False)
        return f"raised {type(self.error).__name__}".encode()

    def summary(self) -> bytes:
        if self.assessment is not None:
            return orjson.dumps(clinical_summary(self.assessment))
        return f"raised {type(self.error).__name__}".encode()


@dataclass(frozen=True)
class _Verdict:
    """An invariant that did not hold: why, and the record compared with."""

    message: str
    variant: RecordList | None = None


#: What checking an invariant on one example gives: None when it does not
#: apply, True when it held, a verdict when it failed.
_Result = _Verdict | bool | None
_Check = Callable[["_Context"], _Result]


@dataclass
class _Context:
    """One example being checked: each record evaluated at most once per
    engine, whatever the number of invariants that compare it."""

    ruleset: Ruleset
    kit: _Kit
    example: _Example
    snapshot: bytes = b""
    outcomes: dict[tuple[str, str], _Outcome] = field(default_factory=dict)
    facts: Facts | None = None

    def __post_init__(self) -> None:
        self.snapshot = orjson.dumps(self.example.record)

    def run(self, name: str, record: RecordList, engine: str = "rete") -> _Outcome:
        key = (name, engine)
        if key not in self.outcomes:
            try:
                result = evaluate(record, ruleset=self.ruleset, as_of=self.kit.as_of,
                                  engine=engine)
                self.outcomes[key] = _Outcome(assessment=result)
            except CDSSError as exc:
                self.outcomes[key] = _Outcome(error=exc)
            except Exception as exc:  # what the invariant looks for
                self.outcomes[key] = _Outcome(unexpected=exc)
        return self.outcomes[key]

    def base(self) -> _Outcome:
        return self.run("record", self.example.record)

    def base_facts(self) -> Facts | None:
        if self.facts is None:
            try:
                self.facts = extract_facts(self.example.record, ruleset=self.ruleset,
                                           as_of=self.kit.as_of)
            except CDSSError:
                return None
        return self.facts



def _lines(data: bytes, *, summary: bool) -> list[str]:
    """JSON as lines to diff: indented, or for a summary one line per item
    (``flags: ["hypokalemia", "moderate", "PC-K-01"]``)."""
    try:
        loaded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [data.decode(errors="replace")]
    if summary and isinstance(loaded, dict):
        return [f"{key}: {orjson.dumps(item).decode()}" for key in sorted(loaded)
                for item in loaded[key]]
    return orjson.dumps(loaded, option=orjson.OPT_INDENT_2
                        | orjson.OPT_SORT_KEYS).decode().splitlines()


def _diff(a: bytes, b: bytes, first: str, second: str, *, summary: bool = False,
          limit: int = 40) -> str:
    lines = list(difflib.unified_diff(_lines(a, summary=summary), _lines(b, summary=summary),
                                      first, second, lineterm="", n=1 if not summary else 0))
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return "\n".join(lines)


def _compare(ctx: _Context, name: str, record: RecordList | None, what: str,
             *, full: bool) -> _Result:
    """Compare the record's outcome with ``record``'s; None when not
    applicable, True when equal, a verdict otherwise."""
    if record is None:
        return None
    a, b = ctx.base(), ctx.run(name, record)
    if a.unexpected or b.unexpected:
        return None
    left, right = (a.full(), b.full()) if full else (a.summary(), b.summary())
    if left == right:
        return True
    return _Verdict(f"{what} changed the {'Assessment JSON' if full else 'conclusions'}:\n"
                    + _diff(left, right, "record", name, summary=not full), record)


def _only_cdss_errors(ctx: _Context) -> _Result:
    ex = ctx.example
    runs = [("record", ex.record, "rete"), ("record", ex.record, "reference"),
            ("shuffled", ex.shuffled, "rete"), ("duplicated", ex.duplicated, "rete"),
            ("irrelevant", ex.irrelevant, "rete")]
    if ex.other_units is not None:
        runs.append(("other-units", ex.other_units, "rete"))
    for name, record, engine in runs:
        outcome = ctx.run(name, record, engine)
        if outcome.unexpected is not None:
            exc = outcome.unexpected
            where = ""
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
            return _Verdict(f"evaluate(engine={engine!r}) raised {type(exc).__name__}: {exc}"
                            f"{where} (on the {name} record)",
                            None if name == "record" else record)
    return True


def _determinism(ctx: _Context) -> _Result:
    first = ctx.base()
    if first.unexpected:
        return None
    if orjson.dumps(ctx.example.record) != ctx.snapshot:
        return _Verdict("evaluate changed the record it was given")
    second = ctx.run("record-again", copy.deepcopy(ctx.example.record))
    if second.unexpected:
        return None
    if first.full() != second.full():
        return _Verdict("the same record gave different JSON:\n"
                        + _diff(first.full(), second.full(), "first run", "second run"))
    return True


def _engines_agree(ctx: _Context) -> _Result:
    rete, reference = ctx.base(), ctx.run("record", ctx.example.record, "reference")
    if rete.unexpected or reference.unexpected:
        return None
    if rete.full() == reference.full():
        return True
    return _Verdict("engine 'rete' and engine 'reference' disagree:\n"
                    + _diff(rete.full(), reference.full(), "rete", "reference"))


def _applies(policy: Policy, code: str, severity: str) -> bool:
    """Whether a flag of ``code`` and ``severity`` is one ``policy`` speaks of."""
    return severity == policy.flag_severity and (not policy.flags or code in policy.flags)


def _red_flags(ctx: _Context) -> _Result:
    assessment = ctx.base().assessment
    if assessment is None:
        return None
    applied = False
    for policy in ctx.ruleset.file.policies:
        raised = [f.code for f in assessment.flags if _applies(policy, f.code, f.severity)]
        if not raised:
            continue
        applied = True
        if policy.no_plan_category is not None:
            left = [p.code for p in assessment.plan if p.category == policy.no_plan_category]
            if left:
                return _Verdict(f"{policy.flag_severity} flag(s) {raised} raised, yet the plan "
                                f"keeps {policy.no_plan_category} item(s) {left}")
        elif assessment.plan and assessment.plan[0].category not in policy.plan_leads_with:
            ahead = []
            for item in assessment.plan:
                if item.category in policy.plan_leads_with:
                    break
                ahead.append(f"{item.code} ({item.category})")
            return _Verdict(f"{policy.flag_severity} flag(s) {raised} raised, yet the plan "
                            f"leads with {ahead}, ahead of any item of "
                            f"{policy.plan_leads_with}")
    return True if applied else None


def _policy_said(policy: Policy) -> str:
    flags = f" ({', '.join(policy.flags)})" if policy.flags else ""
    if policy.no_plan_category is not None:
        return (f"With a {policy.flag_severity} flag{flags}, no plan item of category "
                f"{policy.no_plan_category!r} is left.")
    return (f"With a {policy.flag_severity} flag{flags}, the plan leads with an item of "
            f"{' or '.join(repr(c) for c in policy.plan_leads_with)}.")


def _policies_said(policies: Sequence[Policy]) -> str:
    if not policies:
        return "No policy declared (policies:): nothing to check."
    return " ".join(_policy_said(p) for p in policies)


def _thresholds(ruleset: Ruleset, analyte: str) -> list[float]:
    out: set[float] = set()
    for rule in ruleset.rules:
        for pattern in (*rule.all, *rule.any, *rule.none):
            if pattern.fact != analyte:
                continue
            for test in pattern.tests:
                if test.field == "value" and isinstance(test.value, (int, float)) \
                        and not isinstance(test.value, bool):
                    out.add(float(test.value))
    return sorted(out)


def _moves(ctx: _Context, invariant: Invariant) -> list[tuple[RecordList, float, float]]:
    """The record with the analyte's latest value moved further in the
    declared direction: to and just past every threshold the rules compare it
    with, a small step, and part of the way to its plausible limit, nearest
    first. Each is (record, old value, new value), in the canonical unit."""
    facts = ctx.base_facts()
    fact = facts.get(invariant.analyte) if facts is not None else None
    if fact is None or fact.values.get("status") != "determinate" or fact.values.get("computed"):
        return []
    value = fact.values.get("value")
    if not isinstance(value, float) or not fact.sources:
        return []
    rid = fact.sources[0].partition("/")[2]
    lower = invariant.direction == "lower"
    low, high = ctx.kit.plausible(invariant.analyte)
    bound = low if lower else high
    sign = -1.0 if lower else 1.0

    def beyond(x: float) -> bool:
        return x < value if lower else x > value

    targets = [value + sign * _content.steps(value)[0]]
    for t in _thresholds(ctx.ruleset, invariant.analyte):
        targets += [t, t + sign * _content.steps(t)[0]]
    targets += [value + f * (bound - value) for f in (0.5, 0.999)]
    targets = sorted({_content.significant(x, 10) for x in targets
                      if beyond(x) and low <= x <= high}, key=lambda x: abs(x - value))
    spec = ctx.ruleset.valuesets.analytes[invariant.analyte]
    moves = []
    for target in targets:
        record = copy.deepcopy(ctx.example.record)
        changed = False
        for res in record:
            if res.get("resourceType") != "Observation" or res.get("id") != rid or \
                    res.get("status") not in _USABLE:
                continue
            quantity = res.get("valueQuantity") or {}
            unit = _unit_name(quantity)
            factor = convert(1.0, unit, spec).value if unit else None
            written = _content.written(target, factor) if factor else None
            if written is None or factor is None or \
                    not beyond(_content.significant(written * factor, 10)):
                changed = False
                break
            quantity["value"] = written
            changed = True
        if changed:
            moves.append((record, value, target))
    return moves


def _monotonicity(index: int) -> _Check:
    def check(ctx: _Context) -> _Result:
        invariant = ctx.ruleset.file.invariants[index]
        base = ctx.base().assessment
        if base is None or base.flag(invariant.keeps_flag) is None:
            return None
        moves = _moves(ctx, invariant)
        if not moves:
            return None
        unit = ctx.ruleset.valuesets.analytes[invariant.analyte].canonical_unit
        for n, (record, old, new) in enumerate(moves):
            outcome = ctx.run(f"moved-{index}-{n}", record)
            what = f"{invariant.analyte} moved {invariant.direction} from {old} to {new} {unit}"
            if outcome.assessment is None:
                error = outcome.error or outcome.unexpected
                return _Verdict(f"{what} raised {type(error).__name__}: {error}", record)
            if outcome.assessment.flag(invariant.keeps_flag) is None:
                return _Verdict(f"{what} removed flag {invariant.keeps_flag!r}:\n"
                                + _diff(ctx.base().summary(), outcome.summary(), "record",
                                        "moved", summary=True), record)
        return True

    return check


def _invariant_name(invariant: Invariant) -> str:
    return f"monotonicity[{invariant.analyte} {invariant.direction} keeps " \
           f"{invariant.keeps_flag}]"


# --------------------------------------------------------------------------- #
# Running hypothesis
# --------------------------------------------------------------------------- #
class _Falsified(Exception):
    """Raised inside a hypothesis run when the invariant being shrunk fails."""


def _run(strategy: st.SearchStrategy[Any], test: Callable[[Any], None], *,
         max_examples: int, seed: int, shrink: bool) -> None:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as fixed_seed

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    runner = settings(database=None, deadline=None, derandomize=False,
                      max_examples=max_examples, phases=phases, print_blob=False,
                      report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                      verbosity=Verbosity.quiet)(fixed_seed(seed)(given(strategy)(test)))
    runner()


def _selected(ruleset: Ruleset, properties: Sequence[str] | None
              ) -> list[tuple[str, str, _Check]]:
    checks: list[tuple[str, str, _Check]] = [
        ("only-cdss-errors", PROPERTIES["only-cdss-errors"], _only_cdss_errors),
        ("determinism", PROPERTIES["determinism"], _determinism),
        ("engines-agree", PROPERTIES["engines-agree"], _engines_agree),
        ("order-invariance", PROPERTIES["order-invariance"],
         lambda c: _compare(c, "shuffled", c.example.shuffled, "shuffling the resources",
                            full=True)),
        ("unit-invariance", PROPERTIES["unit-invariance"],
         lambda c: _compare(c, "other-units", c.example.other_units,
                            "writing labs in other units", full=False)),
        ("duplicate-invariance", PROPERTIES["duplicate-invariance"],
         lambda c: _compare(c, "duplicated", c.example.duplicated,
                            "sending resources twice", full=False)),
        ("irrelevant-resource-invariance", PROPERTIES["irrelevant-resource-invariance"],
         lambda c: _compare(c, "irrelevant", c.example.irrelevant,
                            "adding resources no rule reads", full=False)),
        ("time-zone-invariance", PROPERTIES["time-zone-invariance"],
         lambda c: _compare(c, "other-offsets", c.example.other_offsets,
                            "writing the times in another UTC offset", full=False)),
        ("red-flag-dominance", _policies_said(ruleset.file.policies), _red_flags),
    ]
    for i, invariant in enumerate(ruleset.file.invariants):
        checks.append((_invariant_name(invariant),
                       f"Moving {invariant.analyte} {invariant.direction} never removes flag "
                       f"{invariant.keeps_flag!r}.", _monotonicity(i)))
    if properties is None:
        return checks
    if isinstance(properties, str) or not all(isinstance(p, str) for p in properties):
        raise InvalidArgument(f"properties must be a list of names, got {properties!r}")
    for name in properties:
        if name not in PROPERTIES:
            close = difflib.get_close_matches(name, list(PROPERTIES), n=1)
            raise InvalidArgument(f"no invariant {name!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else "")
                                  + f"; choices: {list(PROPERTIES)}")
    return [c for c in checks if c[0] in properties
            or (c[0].startswith("monotonicity[") and "monotonicity" in properties)]


def check_ruleset(
    ruleset: Ruleset | str | Path,
    *,
    max_examples: int = 100,
    seed: int | None = None,
    as_of: datetime | date | str = DEFAULT_AS_OF,
    properties: Sequence[str] | None = None,
) -> Report:
    """Check the invariants of :data:`PROPERTIES` on about ``max_examples``
    records generated for ``ruleset`` (a loaded Ruleset, ``"id[@version]"``,
    or the path of a ruleset file), all dated relative to ``as_of``.

    Exploration runs hypothesis once per rule, on records aimed at that rule
    (and sometimes at a partner), sharing ``max_examples`` between the rules
    (at least one each). ``seed`` seeds the runs: None means 0, the same
    records on every run; change it to explore others. Every invariant is
    checked on every example, and the rules each example fires are counted
    (the report's ``coverage``). Each invariant that failed is then shrunk to
    its smallest failing record (within 200 checks of that invariant). A rule
    no example fired is searched for with records aimed at it alone; if none
    fires it, it is reported dead. ``properties`` restricts the check to some
    invariants by name (``"monotonicity"`` means every declared one,
    ``"reachability"`` the dead-rule search).
    """
    from cdss.rulesets import load_ruleset_file

    if isinstance(ruleset, Path) or (isinstance(ruleset, str) and
                                     ruleset.endswith((".yaml", ".yml"))):
        rs = load_ruleset_file(ruleset)
    else:
        rs = _ruleset(ruleset)
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InvalidArgument(f"max_examples must be a positive integer, got {max_examples!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidArgument(f"seed must be an integer or None, got {seed!r}")
    chosen_seed = 0 if seed is None else seed
    when = _as_of(as_of)
    kit = _kit(rs, when, PATIENT_ID)
    checks = _selected(rs, properties)
    reach = properties is None or "reachability" in properties
    started = time.perf_counter()

    checked: Counter[str] = Counter()
    first_failure: dict[str, tuple[_Example, _Verdict]] = {}
    coverage: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    examples = 0

    def explore(example: _Example) -> None:
        nonlocal examples
        examples += 1
        ctx = _Context(rs, kit, example)
        base = ctx.base()
        if base.assessment is not None:
            coverage.update({t.rule_id for t in base.assessment.trace})
        elif base.error is not None:
            errors[type(base.error).__name__] += 1
        for name, _, check in checks:
            verdict = check(ctx)
            if verdict is None:
                continue
            checked[name] += 1
            if isinstance(verdict, _Verdict) and name not in first_failure:
                first_failure[name] = (example, verdict)

    # One hypothesis run per rule, each aimed at its rule: hypothesis does not
    # draw a rule uniformly from a list, and a sweep gives every rule its share.
    share, extra = divmod(max_examples, len(rs.rules))
    budgets = [max(1, share + (i < extra)) for i in range(len(rs.rules))]
    found_in: dict[str, int] = {}
    for i, budget in enumerate(budgets):
        before = set(first_failure)
        _run(_examples(kit, i), explore, max_examples=budget, seed=_seed(chosen_seed, i),
             shrink=False)
        found_in.update({name: i for name in set(first_failure) - before})

    failures: list[Failure] = []
    for name, _, check in checks:
        if name in first_failure:
            i = found_in[name]
            failures.append(_shrink(rs, kit, _examples(kit, i), name, check,
                                    first_failure[name], max_examples=budgets[i],
                                    seed=_seed(chosen_seed, i)))

    dead: list[str] = []
    searched: list[str] = []
    if reach:
        for rule in rs.rules:
            if coverage[rule.id]:
                continue
            if _fires_somewhere(rs, when, rule.id, max_examples=max(max_examples, 50),
                                seed=chosen_seed):
                searched.append(rule.id)
            else:
                dead.append(rule.id)

    results = [PropertyResult(name=name, description=description, checked=checked[name],
                              passed=name not in first_failure)
               for name, description, _ in checks]
    if reach:
        results.append(PropertyResult(name="reachability", description=PROPERTIES["reachability"],
                                      checked=len(rs.rules), passed=not dead))
    return Report(
        ruleset=rs.spec, sha256=rs.sha256, path=str(rs.path), as_of=when.isoformat(),
        seed=chosen_seed, max_examples=max_examples, examples=examples,
        elapsed_seconds=round(time.perf_counter() - started, 3),
        properties=results, failures=failures,
        coverage={r.id: coverage[r.id] for r in rs.rules},
        dead_rules=dead, reached_by_search=searched, errors=dict(sorted(errors.items())),
    )


def _seed(seed: int, rule: int) -> int:
    """The seed of the run aimed at rule number ``rule``."""
    return seed * 100_003 + rule


def _shrink(rs: Ruleset, kit: _Kit, strategy: st.SearchStrategy[_Example], name: str,
            check: _Check,
            found: tuple[_Example, _Verdict], *, max_examples: int, seed: int) -> Failure:
    """Re-run the exploration with the same seed, raising on the first
    example that fails ``check`` so that hypothesis shrinks it; the last
    failing example it runs is the shrunk one."""
    from hypothesis.errors import HypothesisException

    last: list[tuple[_Example, _Verdict]] = []
    seen: dict[bytes, _Verdict | bool | None] = {}

    def probe(example: _Example) -> None:
        key = orjson.dumps([example.record, example.shuffled, example.other_units,
                            example.duplicated, example.irrelevant])
        if key not in seen:
            # past the budget, an example not yet checked counts as passing: the
            # shrinker stops improving, and every example it re-runs gets the
            # verdict it had (deterministic, unlike a time limit)
            seen[key] = check(_Context(rs, kit, example)) if len(seen) < _SHRINK_BUDGET \
                else None
        verdict = seen[key]
        if isinstance(verdict, _Verdict):
            last[:] = [(example, verdict)]
            raise _Falsified(name)

    with contextlib.suppress(_Falsified, HypothesisException):
        _run(strategy, probe, max_examples=max_examples, seed=seed, shrink=True)
    example, verdict = last[0] if last else found
    return Failure(property=name, message=verdict.message, as_of=kit.as_of.isoformat(),
                   record=example.record, variant=verdict.variant, shrunk=bool(last))


class _Fired(Exception):
    """Raised inside a hypothesis run when the rule searched for fires."""


def _fires_somewhere(rs: Ruleset, as_of: datetime, rule_id: str, *, max_examples: int,
                     seed: int) -> bool:
    def probe(record: RecordList) -> None:
        try:
            result = evaluate(record, ruleset=rs, as_of=as_of)
        except CDSSError:
            return
        if any(t.rule_id == rule_id for t in result.trace):
            raise _Fired(rule_id)

    try:
        _run(from_ruleset(rs, as_of=as_of, rules=[rule_id]), probe, max_examples=max_examples,
             seed=seed, shrink=False)
    except _Fired:
        return True
    return False

