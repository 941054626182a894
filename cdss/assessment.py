"""The Assessment: what a ruleset concluded about one patient, and why.

Pydantic models, JSON-serialisable and deterministic: the same input gives
byte-identical JSON (:meth:`Assessment.to_json`). Every flag, referral, plan
item, suppression and data request names the rule that produced it, its
rationale and citation; flags and referrals carry their evidence (the facts
matched and the source resource ids); the trace lists every rule that fired,
by stratum, with what it matched.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from cdss.facts import DataQualityNote, LeftOutResource

__all__ = [
    "SEVERITY_RANK",
    "Assessment",
    "Citation",
    "DataRequest",
    "Evidence",
    "Flag",
    "PlanItem",
    "Referral",
    "RulesetIdentity",
    "Suppressed",
    "TraceEntry",
]

#: Severities from least to most severe.
SEVERITY_RANK = {"low": 0, "moderate": 1, "high": 2, "critical": 3}


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RulesetIdentity(_Out):
    """``id@version`` and the sha256 of the ruleset's canonical content."""

    id: str
    version: str
    sha256: str
    title: str
    #: The ruleset's canonical URL (``canonical_url`` of its file), for the
    #: outputs that name it. Known where the Assessment was made; not part of
    #: its JSON, whose bytes stay those of the versions already recorded.
    url: str | None = Field(default=None, exclude=True)
    #: Who developed the ruleset and when this version was released (its
    #: file's ``developer`` and ``release_date``), for the outputs' source
    #: attributes; like ``url``, not part of the JSON.
    developer: str | None = Field(default=None, exclude=True)
    release_date: str | None = Field(default=None, exclude=True)

    @property
    def spec(self) -> str:
        """``id@version``."""
        return f"{self.id}@{self.version}"


class Citation(_Out):
    """The source a conclusion cites: its key in the ruleset, title and section."""

    source: str
    title: str
    section: str
    url: str | None = None


class Evidence(_Out):
    """A fact a conclusion rests on: its values and the resources behind it.

    For a lab, ``values`` holds the converted ``value`` rounded to four
    significant digits (the rules compared the unrounded value) beside the
    value and unit as charted (``charted_value``, ``charted_unit``,
    ``charted_at``), and ``text`` says both in words.
    """

    fact: str
    kind: str
    values: dict[str, str | float | int | bool]
    sources: list[str]
    text: str | None = None


class Flag(_Out):
    """A finding the clinician should see (``code``, ``severity``), with the rule
    that raised it, its rationale, citation and the facts it rests on. One per
    code: the most severe rule wins, ties to rule order."""

    code: str
    display: str
    severity: Literal["low", "moderate", "high", "critical"]
    rule_id: str
    rationale: str
    citation: Citation
    evidence: list[Evidence]
    #: ``remove``: the rule suggests removing the draft orders it matched (the
    #: ``order`` facts of ``evidence``). In the JSON only when set.
    order_suggestion: Literal["remove"] | None = Field(
        default=None, exclude_if=lambda v: v is None)

    @property
    def orders(self) -> list[Evidence]:
        """The draft orders the flag concerns: its ``order`` evidence."""
        return [ev for ev in self.evidence if ev.kind == "order"]


class Referral(_Out):
    """A referral the ruleset recommends (``code``, ``urgency``), with the rule
    that made it, its rationale, citation and evidence. One per code: urgent
    wins over routine."""

    code: str
    display: str
    urgency: Literal["routine", "urgent"]
    rule_id: str
    rationale: str
    citation: Citation
    evidence: list[Evidence]


class PlanItem(_Out):
    """An item of the patient's plan, in catalogue ``order``: its text (a
    variant's when tailored), why, the rules that added it and their
    citations, and any emphasis and tailoring with their reasons."""

    code: str
    order: int
    category: str
    text: str
    why: str
    rule_ids: list[str]
    citations: list[Citation]
    emphasis: list[str] = []
    tailoring: list[str] = []


class Suppressed(_Out):
    """A plan item a rule removed (by code or by category), with the reason;
    suppression always wins over addition."""

    code: str
    category: str
    text: str
    reason: str
    rule_id: str
    citation: Citation


class DataRequest(_Out):
    """A lab result the ruleset needs and the record lacks (or holds only stale):
    the ``analyte``, the ``loinc`` code to order, why, and the rule asking."""

    analyte: str
    display: str
    loinc: str | None
    reason: str
    rule_id: str
    #: How recent a result must be to count (the analyte's lookback), for the
    #: outputs that ask for it. Like ``RulesetIdentity.url``, not in the JSON.
    lookback_days: int | None = Field(default=None, exclude=True)
    #: The draft orders the result is needed to judge (the ``order`` facts the
    #: requesting rules matched), when any. In the JSON only when there are.
    orders: list[Evidence] = Field(default_factory=list, exclude_if=lambda v: not v)
    #: The citation of the rule asking; like ``lookback_days``, not in the JSON.
    citation: Citation | None = Field(default=None, exclude=True)


class TraceEntry(_Out):
    """One rule that fired: its stratum, id, title and the facts it matched."""

    stratum: int
    rule_id: str
    title: str
    matched: list[str]


class Assessment(_Out):
    """The result of evaluating one patient with one ruleset version."""

    ruleset: RulesetIdentity
    as_of: datetime
    #: The engine that ran: ``rete`` (durable-rules) or ``reference``.
    engine: Literal["rete", "reference"]
    patient: str | None
    flags: list[Flag]
    referrals: list[Referral]
    plan: list[PlanItem]
    suppressed: list[Suppressed]
    data_requests: list[DataRequest]
    trace: list[TraceEntry]
    data_quality: list[DataQualityNote]
    skipped_resources: dict[str, int]
    #: True when resources that could not be read were left out (``left_out``):
    #: the conclusions rest on the rest of the record.
    incomplete: bool = False
    left_out: list[LeftOutResource] = Field(default_factory=list)

    def to_json(self, *, indent: bool = False, engine: bool = True) -> bytes:
        """Deterministic JSON: sorted keys, the same bytes for the same input.

        ``engine=False`` leaves out which engine ran, to compare the
        conclusions of two engines byte for byte.
        """
        option = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        exclude = None if engine else {"engine"}
        return orjson.dumps(self.model_dump(mode="json", exclude=exclude), option=option)

    def to_dict(self) -> dict[str, Any]:
        """The Assessment as JSON-ready Python values."""
        return self.model_dump(mode="json")

    def flag(self, code: str) -> Flag | None:
        """The flag of this code, or None."""
        return next((f for f in self.flags if f.code == code), None)

    @property
    def highest_severity(self) -> str | None:
        """The severity of the most severe flag (flags are sorted by severity), or None."""
        return self.flags[0].severity if self.flags else None
