"""How two Assessments of one patient differ: what a clinician sees gained,
lost or changed. The cohort's version diff and the service's shadow mode both
use it, so that the two report a change alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["compare", "rule_changes"]


def _added_removed(before: Iterable[str], after: Iterable[str]) -> dict[str, Any]:
    a, b = set(before), set(after)
    out: dict[str, Any] = {}
    if b - a:
        out["added"] = sorted(b - a)
    if a - b:
        out["removed"] = sorted(a - b)
    return out


def compare(before: Any, after: Any) -> dict[str, Any]:
    """How ``after`` differs from ``before`` (two Assessments of one patient):
    flags added, removed or changed in severity; referrals added, removed or
    changed in urgency; plan items added, removed, or changed in text or
    emphasis; suppressions and data requests added or removed. Empty when
    nothing a clinician sees changed."""
    change: dict[str, Any] = {}
    flags = _added_removed((f.code for f in before.flags), (f.code for f in after.flags))
    old = {f.code: f.severity for f in before.flags}
    severity = [{"code": f.code, "from": old[f.code], "to": f.severity}
                for f in after.flags if f.code in old and old[f.code] != f.severity]
    if severity:
        flags["severity"] = sorted(severity, key=lambda s: s["code"])
    if flags:
        change["flags"] = flags
    referrals = _added_removed((r.code for r in before.referrals),
                               (r.code for r in after.referrals))
    urgency = {r.code: r.urgency for r in before.referrals}
    changed_urgency = [{"code": r.code, "from": urgency[r.code], "to": r.urgency}
                       for r in after.referrals
                       if r.code in urgency and urgency[r.code] != r.urgency]
    if changed_urgency:
        referrals["urgency"] = sorted(changed_urgency, key=lambda s: s["code"])
    if referrals:
        change["referrals"] = referrals
    plan = _added_removed((p.code for p in before.plan), (p.code for p in after.plan))
    texts = {p.code: (p.text, tuple(p.emphasis), tuple(p.tailoring)) for p in before.plan}
    modified = sorted(p.code for p in after.plan
                      if p.code in texts and texts[p.code] != (p.text, tuple(p.emphasis),
                                                               tuple(p.tailoring)))
    if modified:
        plan["modified"] = modified
    if plan:
        change["plan"] = plan
    for name, attr in (("suppressed", "code"), ("data_requests", "analyte")):
        moved = _added_removed((getattr(x, attr) for x in getattr(before, name)),
                               (getattr(x, attr) for x in getattr(after, name)))
        if moved:
            change[name] = moved
    if before.highest_severity != after.highest_severity:
        change["highest_severity"] = {"from": before.highest_severity,
                                      "to": after.highest_severity}
    return change




#: The items of an Assessment :func:`rule_changes` looks at, and the code naming each.
#: The fields whose change :func:`compare` reports of an item both sides have.
_ITEMS = (("flag", "flags", "code", ("severity",)),
          ("referral", "referrals", "code", ("urgency",)),
          ("plan", "plan", "code", ("text", "emphasis", "tailoring")),
          ("suppressed", "suppressed", "code", ()),
          ("data_request", "data_requests", "analyte", ()))


def _rules_of(item: Any) -> list[str]:
    rule_ids = getattr(item, "rule_ids", None)
    return list(rule_ids) if rule_ids is not None else [item.rule_id]


def rule_changes(before: Any, after: Any) -> list[dict[str, str]]:
    """:func:`compare`'s changes item by item, each tied to the rule(s) that
    made the item: ``{"rule", "item", "code", "change"}`` with ``item`` one of
    ``flag``, ``referral``, ``plan``, ``suppressed``, ``data_request`` and
    ``change`` ``gained`` (only ``after`` has it: its rules), ``lost`` (only
    ``before`` has it: its rules) or ``changed`` (both, differing in severity,
    urgency, text or emphasis: the rules of both). Sorted; empty when nothing
    a clinician sees changed."""
    out: set[tuple[str, str, str, str]] = set()
    for item, attr, key, fields in _ITEMS:
        old = {getattr(x, key): x for x in getattr(before, attr)}
        new = {getattr(x, key): x for x in getattr(after, attr)}
        for code in new.keys() - old.keys():
            out.update((rule, item, code, "gained") for rule in _rules_of(new[code]))
        for code in old.keys() - new.keys():
            out.update((rule, item, code, "lost") for rule in _rules_of(old[code]))
        for code in new.keys() & old.keys():
            a, b = old[code], new[code]
            if any(getattr(a, f) != getattr(b, f) for f in fields):
                out.update((rule, item, code, "changed")
                           for rule in {*_rules_of(a), *_rules_of(b)})
    return [{"rule": r, "item": i, "code": c, "change": ch} for r, i, c, ch in sorted(out)]

