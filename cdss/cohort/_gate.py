"""A version diff as a release gate: what a site expects to change.

An *expectations file* (YAML) says how far the results of a cohort may move
between two ruleset versions; :func:`check` holds a :class:`DiffReport` to it
and lists every :class:`Violation`. ``cdss diff --expect FILE`` exits 1 when
there is one, so that a site can run the diff in its own CI before it
releases a version. The schema is :class:`Expectations` (its JSON Schema:
:func:`expectations_schema`)::

    version: 1                # optional; the only version so far
    max_changed: 40           # patients whose results change, at most
    max_errors: 0             # patients failing under either version, at most
    other_rules: forbid       # rules not listed below may not change (default: allow)
    rules:
      PC-GAIT-02:
        max_gained: 25        # patients gaining an item of the rule, at most
        max_lost: 0           # patients losing one, at most
        max_changed: 0        # patients with one changed (severity, urgency, text)
        allow:                # the only changes the rule may make (default: any)
          - gained flag calf-overload-from-gait
          - gained plan       # any plan item gained

An ``allow`` entry is ``"<change> <item>"`` or ``"<change> <item> <code>"``
with ``change`` one of ``gained``, ``lost``, ``changed`` and ``item`` one of
``flag``, ``referral``, ``plan``, ``suppressed``, ``data_request`` (as
:func:`cdss._changes.rule_changes` names them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    field_validator,
)

from cdss.errors import ExpectationsError

if TYPE_CHECKING:
    from cdss.cohort._screen import DiffReport

__all__ = ["CHANGES", "ITEMS", "Expectations", "RuleExpectation", "Violation", "check",
           "expectations_schema", "load_expectations"]

#: How a rule's item can change between the versions.
CHANGES = ("gained", "lost", "changed")
#: The kinds of item a rule makes.
ITEMS = ("flag", "referral", "plan", "suppressed", "data_request")


def _check_allow(entries: list[str]) -> list[str]:
    for entry in entries:
        words = entry.split()
        if not 2 <= len(words) <= 3:
            raise ValueError(f"{entry!r} is not '<change> <item>' or '<change> <item> <code>'")
        if words[0] not in CHANGES:
            raise ValueError(f"{entry!r}: the change must be one of {', '.join(CHANGES)}")
        if words[1] not in ITEMS:
            raise ValueError(f"{entry!r}: the item must be one of {', '.join(ITEMS)}")
    return entries


class RuleExpectation(BaseModel):
    """What one rule may change: counts are patients (a patient gaining two
    flags of the rule counts once); a limit left out is no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_gained: NonNegativeInt | None = Field(
        None, description="patients gaining an item of the rule, at most")
    max_lost: NonNegativeInt | None = Field(
        None, description="patients losing an item of the rule, at most")
    max_changed: NonNegativeInt | None = Field(
        None, description="patients with an item of the rule changed in severity, urgency, "
                          "text or emphasis, at most")
    allow: list[str] | None = Field(
        None, description="the only changes the rule may make: '<change> <item>' or "
                          "'<change> <item> <code>' (default: any)")

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_allow(value)

    def allows(self, change: str, item: str, code: str) -> bool:
        """Whether ``allow`` lets the rule make this change (True without ``allow``)."""
        if self.allow is None:
            return True
        return any(entry.split() in ([change, item], [change, item, code])
                   for entry in self.allow)


class Expectations(BaseModel):
    """An expectations file: limits on the whole diff and per rule id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = Field(1, description="schema version of the file")
    max_changed: NonNegativeInt | None = Field(
        None, description="patients whose results change, at most")
    max_errors: NonNegativeInt | None = Field(
        None, description="patients failing under either version, at most")
    other_rules: Literal["allow", "forbid"] = Field(
        "allow", description="whether rules not listed under 'rules' may change")
    rules: dict[str, RuleExpectation] = Field(
        default_factory=dict, description="per rule id: what the rule may change")


def expectations_schema() -> dict[str, Any]:
    """The JSON Schema of an expectations file."""
    return Expectations.model_json_schema()


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(file)"


def load_expectations(path: str | Path) -> Expectations:
    """Read an expectations file; :class:`~cdss.errors.ExpectationsError`
    naming the field at fault when it is not one."""
    import yaml

    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExpectationsError(f"expectations file {where}: cannot be read ({exc.strerror})",
                                path=where) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ExpectationsError(f"expectations file {where}: not YAML ({exc})",
                                path=where) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ExpectationsError(f"expectations file {where}: must be a mapping, "
                                f"not {type(raw).__name__}", path=where)
    try:
        return Expectations.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _field(first["loc"])
        lines = [f"field {_field(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ExpectationsError(f"expectations file {where}: " + "; ".join(lines),
                                path=where, field=name) from exc


@dataclass(frozen=True)
class Violation:
    """One way a diff goes beyond its expectations: the rule (None for a limit
    on the whole diff), the expectation broken and what happened."""

    rule: str | None
    expectation: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}" if self.rule else self.message


def _over(expectation: str, limit: int | None, actual: int, what: str,
          rule: str | None = None) -> list[Violation]:
    if limit is None or actual <= limit:
        return []
    return [Violation(rule, expectation, f"{actual} patients {what}, at most {limit} "
                                         f"expected ({expectation})")]


_WHAT = ("gaining an item of the rule", "losing an item of the rule",
         "with an item of the rule changed")


def check(report: DiffReport, expectations: Expectations) -> list[Violation]:
    """Every violation of ``expectations`` by ``report``, whole-diff limits
    first, then by rule id; empty when the diff is as expected."""
    out = _over("max_changed", expectations.max_changed, report.changed,
                "whose results change")
    out += _over("max_errors", expectations.max_errors, report.errors,
                 "failing under either version")
    tallies = report.tallies
    items: dict[str, list[tuple[str, str, str, int]]] = {}
    for key, patients in tallies.get("rule_items", {}).items():
        rule, change, item, code = key.split(" ", 3)
        items.setdefault(rule, []).append((change, item, code, patients))
    changed_rules = sorted({rule for how in CHANGES for rule in tallies.get(f"rules_{how}", {})})
    for rule in changed_rules:
        expected = expectations.rules.get(rule)
        if expected is None:
            if expectations.other_rules == "forbid":
                moved = ", ".join(f"{change} {item} {code} ({n})"
                                  for change, item, code, n in items.get(rule, ()))
                out.append(Violation(rule, "other_rules",
                                     f"not listed, but its results change: {moved} "
                                     "(other_rules: forbid)"))
            continue
        for how, what in zip(CHANGES, _WHAT, strict=True):
            out += _over(f"rules.{rule}.max_{how}", getattr(expected, f"max_{how}"),
                         tallies.get(f"rules_{how}", {}).get(rule, 0), what, rule)
        for change, item, code, n in items.get(rule, ()):
            if not expected.allows(change, item, code):
                out.append(Violation(rule, f"rules.{rule}.allow",
                                     f"{change} {item} {code} in {n} patients, "
                                     f"not in its allow list (rules.{rule}.allow)"))
    return out
