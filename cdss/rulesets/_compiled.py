"""The compiled form of a ruleset that both engines run, and its strata.

A rule's conditions become :class:`Pattern`\\ s of :class:`Test`\\ s, with
thresholds resolved to their values; rules are put into strata by dependency:
a rule that tests a derived fact runs in a later stratum than every rule
deriving it, so negation of a derived fact is sound. A cyclic dependency is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdss.errors import RulesetError
from cdss.rulesets._schema import (
    Comparison,
    PatternDef,
    Rule,
    RulesetFile,
    ThresholdRef,
    ValueSetFile,
)

__all__ = [
    "FIELDS",
    "FIELD_TYPES",
    "OPS",
    "ORDER",
    "CompiledRule",
    "Pattern",
    "Test",
    "compile_rules",
    "fact_kinds",
    "operations",
    "strata",
]

#: Fields a rule may test, per kind of fact.
FIELDS: dict[str, frozenset[str]] = {
    "patient": frozenset({"age", "sex"}),
    "lab": frozenset({"value", "unit", "status", "age_days", "computed"}),
    "finding": frozenset({"status", "site", "nocturnal", "age_days"}),
    "condition": frozenset(),
    "medication": frozenset(),
    "allergy": frozenset(),
    "order": frozenset({"concept", "status", "selected", "reference", "resource_type"}),
    "derived": frozenset(),
}
#: The type of each field, so that both engines compare alike.
FIELD_TYPES: dict[str, str] = {
    "age": "number", "value": "number", "age_days": "number",
    "sex": "text", "unit": "text", "status": "text", "site": "text",
    "computed": "bool", "nocturnal": "bool",
    "concept": "text", "reference": "text", "resource_type": "text", "selected": "bool",
}
#: The fact of every draft order (one per concept an order maps to): built in,
#: like ``patient``, so no value set may take its name.
ORDER = "order"
#: The comparison operators, in the order a comparison's tests are listed.
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "exists")
_FACT_KINDS = frozenset({"lab", "finding", "condition", "medication", "allergy"})


@dataclass(frozen=True)
class Test:
    """``field op value`` on one fact; a missing field never passes."""

    field: str
    op: str
    value: Any

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the fact's ``values`` pass the test."""
        if self.op == "exists":
            return (self.field in values) is bool(self.value)
        if self.field not in values:
            return False
        actual = values[self.field]
        if self.op == "eq":
            return _equal(actual, self.value)
        if self.op == "ne":
            return not _equal(actual, self.value)
        if self.op == "in":
            return any(_equal(actual, v) for v in self.value)
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            return False
        if self.op == "lt":
            return actual < self.value
        if self.op == "le":
            return actual <= self.value
        if self.op == "gt":
            return actual > self.value
        return actual >= self.value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


@dataclass(frozen=True)
class Pattern:
    """A fact name and the tests its fields must pass."""

    fact: str
    tests: tuple[Test, ...]

    def matches(self, fact: Mapping[str, Any]) -> bool:
        """Whether ``fact`` is of this name and passes every test."""
        return fact.get("t") == self.fact and all(t.holds(fact) for t in self.tests)


@dataclass(frozen=True)
class CompiledRule:
    """A rule as both engines run it: its stratum, its place in the file
    (``index``, which breaks ties) and its patterns, thresholds resolved."""

    rule: Rule
    index: int
    stratum: int
    all: tuple[Pattern, ...]
    any: tuple[Pattern, ...]
    none: tuple[Pattern, ...]

    @property
    def id(self) -> str:
        """The rule's id."""
        return self.rule.id


def fact_kinds(rfile: RulesetFile, valuesets: ValueSetFile, path: Path) -> dict[str, str]:
    """``{fact name: kind}``: ``patient``, the concepts of a fact kind, and the
    facts the rules derive (``derived``), which may not take a concept's name."""
    kinds = {"patient": "patient"}
    for name, concept in valuesets.concepts.items():
        if concept.kind in _FACT_KINDS:
            kinds[name] = concept.kind
    if ORDER in kinds:
        raise RulesetError(f"concept {ORDER!r} has the name of the draft-order fact",
                           path=str(path), field="concepts")
    kinds[ORDER] = ORDER
    for rule in rfile.rules:
        for i, action in enumerate(rule.then):
            if action.derive:
                if kinds.get(action.derive, "derived") != "derived":
                    raise RulesetError(
                        f"derived fact {action.derive!r} has the name of a {kinds[action.derive]}"
                        " concept", path=str(path), rule_id=rule.id, field=f"then.{i}.derive")
                kinds[action.derive] = "derived"
    return kinds


def operations(test: Any) -> list[tuple[str, Any]]:
    """``[(op, operand)]`` of one field's test: a bare value means ``eq``."""
    if isinstance(test, Comparison):
        return [(op, getattr(test, "in_" if op == "in" else op)) for op in OPS
                if getattr(test, "in_" if op == "in" else op) is not None]
    return [("eq", test)]


def _pattern(cond: PatternDef, kind: str, rfile: RulesetFile) -> Pattern:
    tests = []
    for fname, test in sorted(cond.where.items()):
        for op, operand in operations(test):
            if isinstance(operand, ThresholdRef):
                operand = rfile.thresholds[operand.threshold].value
            if op == "in":
                operand = tuple(operand)
            tests.append(Test(fname, op, operand))
    if kind == "finding" and "status" not in cond.where:
        tests.insert(0, Test("status", "eq", "present"))
    return Pattern(cond.fact, tuple(tests))


def compile_rules(rfile: RulesetFile, valuesets: ValueSetFile,
                  path: Path) -> list[CompiledRule]:
    """The rules in file order, each with its patterns and stratum; a derived
    fact no rule derives and a dependency cycle are refused."""
    kinds = fact_kinds(rfile, valuesets, path)
    producers: dict[str, list[int]] = {}
    for i, rule in enumerate(rfile.rules):
        for action in rule.then:
            if action.derive:
                producers.setdefault(action.derive, []).append(i)
    uses: list[set[str]] = []
    for rule in rfile.rules:
        names = {c.fact for part in (rule.when.all, rule.when.any, rule.when.none) for c in part}
        uses.append({n for n in names if kinds[n] == "derived"})
    for name in sorted({n for u in uses for n in u}):
        if name not in producers:
            raise RulesetError(f"derived fact {name!r} is used but no rule derives it",
                               path=str(path), field="rules")
    strata: dict[int, int] = {}
    visiting: list[int] = []

    def depth(i: int) -> int:
        if i in strata:
            return strata[i]
        if i in visiting:
            cycle = [rfile.rules[j].id for j in visiting[visiting.index(i):]] + [
                rfile.rules[i].id]
            negated = any(c.fact in uses[j] for j in visiting
                          for c in rfile.rules[j].when.none)
            kind = "cyclic negation" if negated else "cyclic dependency"
            raise RulesetError(f"{kind} between rules {' -> '.join(cycle)}; rules must be "
                               "stratifiable", path=str(path), rule_id=rfile.rules[i].id,
                               field="when")
        visiting.append(i)
        level = 0
        for name in uses[i]:
            for j in producers[name]:
                level = max(level, depth(j) + 1)
        visiting.pop()
        strata[i] = level
        return level

    compiled = []
    for i, rule in enumerate(rfile.rules):
        compiled.append(CompiledRule(
            rule=rule, index=i, stratum=depth(i),
            all=tuple(_pattern(c, kinds[c.fact], rfile) for c in rule.when.all),
            any=tuple(_pattern(c, kinds[c.fact], rfile) for c in rule.when.any),
            none=tuple(_pattern(c, kinds[c.fact], rfile) for c in rule.when.none),
        ))
    return compiled


def strata(compiled: list[CompiledRule]) -> tuple[tuple[CompiledRule, ...], ...]:
    """The compiled rules by stratum, each stratum in file order."""
    count = max((r.stratum for r in compiled), default=-1) + 1
    return tuple(tuple(r for r in compiled if r.stratum == s) for s in range(count))
