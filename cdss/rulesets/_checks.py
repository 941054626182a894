"""Load-time checks: a ruleset that loads is a ruleset that runs.

Every name a rule uses must be defined (fact, field, threshold, plan item and
its variant, plan category, analyte, citation source, claim), with a
suggestion for a misspelt one; operands must fit their field's type; rule ids
and plan item codes are unique; analytes are lab concepts. Errors name the
file, the rule id and the field.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from cdss.errors import RulesetError
from cdss.rulesets._compiled import FIELD_TYPES, FIELDS, ORDER, fact_kinds, operations
from cdss.rulesets._reading import suggest
from cdss.rulesets._schema import RulesetFile, ThresholdRef, ValueSetFile

__all__ = ["check_ruleset_file"]

#: What a kind of name is called when it is not defined.
_UNKNOWN = {
    "source": "citation source {!r} is not in sources",
    "claim": "claim {!r} is not in the ruleset's claims",
    "fact": "unknown fact {!r}",
    "threshold": "unknown threshold {!r}",
    "plan item": "unknown plan item {!r}",
    "category": "unknown plan category {!r}",
    "analyte": "unknown analyte {!r}",
    "override reason": "override reason {!r} is not in the ruleset's override_reasons",
    "order concept": "unknown medication or lab concept {!r} for a draft order",
}
#: The names an action uses: where in the action, and what kind of name.
_ACTION_NAMES = (
    ("plan", "plan item"),
    ("emphasize.plan", "plan item"),
    ("tailor.plan", "plan item"),
    ("suppress.plan", "plan item"),
    ("suppress.category", "category"),
    ("request.analyte", "analyte"),
)


class _Names:
    """The names a ruleset defines, by kind, and the one check that a used name is one."""

    def __init__(self, path: Path, defined: dict[str, Collection[str]]) -> None:
        self.path = str(path)
        self.defined = defined

    def require(self, kind: str, name: str, *, field: str, rule_id: str | None = None) -> None:
        known = self.defined[kind]
        if name not in known:
            raise RulesetError(_UNKNOWN[kind].format(name), path=self.path, rule_id=rule_id,
                               field=field, suggestion=suggest(name, known))


def _walk(node: Any, parts: list[str]) -> Any:
    """The value along ``parts`` from ``node``, or None where a part is unset."""
    for part in parts:
        if node is None:
            return None
        node = getattr(node, part)
    return node


def check_ruleset_file(rfile: RulesetFile, valuesets: ValueSetFile, path: Path) -> None:
    """Refuse a ruleset whose rules use what it does not define (see the module)."""
    p = str(path)
    kinds = fact_kinds(rfile, valuesets, path)
    plan_codes = {item.code for item in rfile.plan_items}
    if len(plan_codes) != len(rfile.plan_items):
        raise RulesetError("plan item codes must be unique", path=p, field="plan_items")
    names = _Names(path, {
        "source": rfile.sources, "claim": rfile.claims, "fact": kinds,
        "threshold": rfile.thresholds, "plan item": plan_codes,
        "category": {item.category for item in rfile.plan_items},
        "analyte": valuesets.analytes,
        "override reason": {r.code for r in rfile.override_reasons},
        "order concept": {name for name, c in valuesets.concepts.items()
                          if c.kind in ("medication", "lab")},
    })
    if len(names.defined["override reason"]) != len(rfile.override_reasons):
        raise RulesetError("override reason codes must be unique", path=p,
                           field="override_reasons")
    for name, analyte in valuesets.analytes.items():
        if kinds.get(name) != "lab":
            raise RulesetError(f"analyte {name!r} has no lab concept", path=p, field="analytes")
        for part in analyte.ratio_of or ():
            if part not in valuesets.analytes:
                raise RulesetError(f"ratio part {part!r} is not an analyte", path=p,
                                   field=f"analytes.{name}.ratio_of")
    seen: set[str] = set()
    for rule in rfile.rules:
        names.require("source", rule.citation.source, field="citation.source", rule_id=rule.id)
        for claim in rule.claims:
            names.require("claim", claim, field="claims", rule_id=rule.id)
        for reason in rule.override_reasons:
            names.require("override reason", reason, field="override_reasons", rule_id=rule.id)
        if rule.id in seen:
            raise RulesetError("rule id used twice", path=p, rule_id=rule.id, field="id")
        seen.add(rule.id)
        for part in ("all", "any", "none"):
            for i, cond in enumerate(getattr(rule.when, part)):
                where = f"when.{part}.{i}"
                names.require("fact", cond.fact, field=f"{where}.fact", rule_id=rule.id)
                kind = kinds[cond.fact]
                allowed = FIELDS[kind]
                for fname, test in cond.where.items():
                    if fname not in allowed:
                        raise RulesetError(
                            f"a {kind} fact has no field {fname!r}"
                            + (f" (fields: {sorted(allowed)})" if allowed else ""),
                            path=p, rule_id=rule.id, field=f"{where}.where.{fname}",
                            suggestion=suggest(fname, allowed))
                    if kind == ORDER:
                        _check_order_test(names, part, fname, test, rule.id,
                                          f"{where}.where.{fname}")
                    for op, operand in operations(test):
                        _check_operand(fname, op, operand, p, rule.id, f"{where}.where.{fname}")
                        if isinstance(operand, ThresholdRef):
                            names.require("threshold", operand.threshold, rule_id=rule.id,
                                          field=f"{where}.where.{fname}.{op}")
        for i, action in enumerate(rule.then):
            if action.flag and action.flag.order_suggestion and \
                    not any(c.fact == ORDER for c in rule.when.all):
                raise RulesetError(
                    "order_suggestion needs an `order` pattern in `all`: the draft orders "
                    "it applies to", path=p, rule_id=rule.id,
                    field=f"then.{i}.flag.order_suggestion")
            for dotted, kind in _ACTION_NAMES:
                used = _walk(action, dotted.split("."))
                if used is not None:
                    names.require(kind, used, field=f"then.{i}.{dotted}", rule_id=rule.id)
            if action.tailor:
                item = next(d for d in rfile.plan_items if d.code == action.tailor.plan)
                if action.tailor.variant not in item.variants:
                    raise RulesetError(
                        f"plan item {item.code!r} has no variant {action.tailor.variant!r}",
                        path=p, rule_id=rule.id, field=f"then.{i}.tailor.variant",
                        suggestion=suggest(action.tailor.variant, item.variants))
    for i, inv in enumerate(rfile.invariants):
        names.require("analyte", inv.analyte, field=f"invariants.{i}.analyte")
    flag_codes = {a.flag.code for r in rfile.rules for a in r.then if a.flag}
    for i, policy in enumerate(rfile.policies):
        if policy.no_plan_category is not None:
            names.require("category", policy.no_plan_category,
                          field=f"policies.{i}.no_plan_category")
        for j, category in enumerate(policy.plan_leads_with):
            names.require("category", category, field=f"policies.{i}.plan_leads_with.{j}")
        for j, code in enumerate(policy.flags):
            if code not in flag_codes:
                raise RulesetError(f"no rule raises flag {code!r}", path=p,
                                   field=f"policies.{i}.flags.{j}",
                                   suggestion=suggest(code, flag_codes))
    if rfile.population is not None and rfile.population.min_age is not None:
        names.require("threshold", rfile.population.min_age, field="population.min_age")


def _check_order_test(names: _Names, part: str, fname: str, test: Any, rule_id: str,
                      where: str) -> None:
    """A draft order's ``concept`` names a medication or lab concept; ``selected``
    is only required (``true``), never negated, so that a rule that fires on
    the orders selected also fires when every order is signed (order-sign
    cards are at least as strict as order-select's)."""
    ops = operations(test)
    if fname == "concept":
        for op, operand in ops:
            for value in (operand if op == "in" else [operand]):
                if op in ("eq", "ne", "in") and isinstance(value, str):
                    names.require("order concept", value, field=f"{where}.{op}",
                                  rule_id=rule_id)
    if fname == "selected" and (part == "none" or ops != [("eq", True)]):
        raise RulesetError(
            "selected may only be required (`selected: true`) in `all` or `any`: a rule on "
            "orders not selected, or negating a selected order, would fire on order-select "
            "and not on order-sign", path=names.path, rule_id=rule_id, field=where)


def _check_operand(fname: str, op: str, operand: Any, path: str, rule_id: str,
                   where: str) -> None:
    if op == "exists":  # a bool by the schema, whatever the field holds
        return
    ftype = FIELD_TYPES[fname]
    values = operand if op == "in" else [operand]
    for value in values:
        if isinstance(value, ThresholdRef):
            ok = ftype == "number"
        elif isinstance(value, bool):
            ok = ftype == "bool"
        elif isinstance(value, (int, float)):
            ok = ftype == "number"
        else:
            ok = ftype == "text"
        if op in ("lt", "le", "gt", "ge") and ftype != "number":
            ok = False
        if not ok:
            raise RulesetError(f"{op} {value!r} does not fit field {fname!r}, which holds a "
                               f"{ftype}", path=path, rule_id=rule_id, field=f"{where}.{op}")
