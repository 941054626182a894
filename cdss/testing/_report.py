"""The result of :func:`cdss.testing.check_ruleset`: which invariants held,
which failed on which (shrunk) record, and which rules fired how often."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, computed_field

__all__ = ["Failure", "PropertyResult", "Report"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PropertyResult(_Out):
    """One invariant: its name, what it says, on how many generated examples
    it applied (``checked``: a red-flag rule applies only where a critical
    flag was raised), and whether it held on all of them."""

    name: str
    description: str
    checked: int
    passed: bool


class Failure(_Out):
    """An invariant that failed, on the smallest record hypothesis could
    shrink the failure to (``shrunk`` False if shrinking did not reproduce
    it and the first failing record is shown instead).

    ``record`` is the FHIR record to paste into a case file, evaluated at
    ``as_of``; ``variant`` the record it was compared with, when the
    invariant compares two (shuffled, other units, duplicates, irrelevant
    resources, a lab value moved); ``message`` says what differed.
    """

    property: str
    message: str
    as_of: str
    record: list[dict[str, Any]]
    variant: list[dict[str, Any]] | None = None
    shrunk: bool = True

    def record_json(self) -> str:
        """The record as indented JSON (valid YAML too: paste it under
        ``record:`` in a case file)."""
        return orjson.dumps(self.record, option=orjson.OPT_INDENT_2).decode()

    def variant_json(self) -> str | None:
        """The variant record as indented JSON, when there is one."""
        if self.variant is None:
            return None
        return orjson.dumps(self.variant, option=orjson.OPT_INDENT_2).decode()


class Report(_Out):
    """What :func:`cdss.testing.check_ruleset` found about one ruleset.

    ``coverage`` maps every rule id (in file order) to the number of generated
    examples it fired on; a rule that fired on none and that a search aimed
    at it could not fire either is in ``dead_rules`` (one the search did fire
    is in ``reached_by_search``). ``errors`` counts the CDSSErrors the
    generated records raised, by type (expected to be none).
    """

    ruleset: str
    sha256: str
    path: str
    as_of: str
    seed: int
    max_examples: int
    examples: int
    elapsed_seconds: float
    properties: list[PropertyResult]
    failures: list[Failure]
    coverage: dict[str, int]
    dead_rules: list[str]
    reached_by_search: list[str]
    errors: dict[str, int]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when every invariant held and no rule is dead."""
        return not self.failures and not self.dead_rules

    @property
    def examples_per_second(self) -> float:
        """Generated examples checked per second (all invariants on each)."""
        return self.examples / self.elapsed_seconds if self.elapsed_seconds else 0.0

    def failure(self, name: str) -> Failure | None:
        """The failure of invariant ``name``, if it failed."""
        return next((f for f in self.failures if f.property == name), None)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self, *, indent: bool = False) -> bytes:
        """The report as JSON: rules in file order, failures with their records."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 if indent else 0)
