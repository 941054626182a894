"""The schema of ruleset and value-set files, as pydantic models.

These models are the single definition of what a rule file may say; the JSON
Schema that editors and CI use is exported from them
(:func:`ruleset_json_schema`). Every model forbids unknown keys, so a misspelt
key is an error at load time, not a silently ignored rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Action",
    "Analyte",
    "Citation",
    "Code",
    "Concept",
    "ConceptMapFile",
    "Condition",
    "EmphasizeAction",
    "FlagAction",
    "Invariant",
    "PlanItemDef",
    "ReferralAction",
    "RequestAction",
    "Rule",
    "RulesetFile",
    "Source",
    "SuppressAction",
    "TailorAction",
    "Threshold",
    "ValueSetFile",
    "When",
    "ruleset_json_schema",
]

Severity = Literal["low", "moderate", "high", "critical"]
Kind = Literal["lab", "finding", "condition", "medication", "allergy", "body_site", "qualifier"]
Scalar = str | float | int | bool
SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"
NAME = r"^[a-z][a-z0-9_]*$"
CODE = r"^[a-z][a-z0-9-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdRef(_Strict):
    """A reference to a named threshold of the ruleset: ``{threshold: name}``."""

    threshold: Annotated[str, Field(pattern=NAME)]


Operand = Scalar | ThresholdRef


class Comparison(_Strict):
    """Comparisons on one field of a fact; several keys must all hold."""

    eq: Operand | None = None
    ne: Operand | None = None
    lt: Operand | None = None
    le: Operand | None = None
    gt: Operand | None = None
    ge: Operand | None = None
    in_: Annotated[list[Scalar] | None, Field(alias="in")] = None
    #: ``exists: false`` holds when the fact does not record the field (a
    #: finding whose site was not recorded); ``exists: true`` when it does.
    exists: bool | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Comparison:
        if not self.model_dump(exclude_none=True):
            raise ValueError(
                "a comparison needs at least one of eq, ne, lt, le, gt, ge, in, exists")
        return self


class Condition(_Strict):
    """One fact pattern: the fact's name and tests on its fields.

    A bare value in ``where`` means equality. For findings, a condition without
    a ``status`` test matches only findings recorded as present.
    """

    fact: Annotated[str, Field(pattern=NAME)]
    where: dict[str, Scalar | Comparison] = Field(default_factory=dict)


class When(_Strict):
    """``all`` must each match a fact, at least one of ``any`` must (when
    given), and none of ``none`` may. ``none`` means "not known to be true"."""

    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)
    none: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> When:
        if not (self.all or self.any or self.none):
            raise ValueError("when needs at least one of all, any, none")
        return self


class FlagAction(_Strict):
    code: Annotated[str, Field(pattern=CODE)]
    display: str
    severity: Severity


class ReferralAction(_Strict):
    code: Annotated[str, Field(pattern=CODE)]
    display: str
    urgency: Literal["routine", "urgent"]


class SuppressAction(_Strict):
    """Remove a plan item (``plan``) or every item of a ``category``, saying why."""

    plan: Annotated[str | None, Field(pattern=CODE)] = None
    category: Annotated[str | None, Field(pattern=NAME)] = None
    reason: str

    @model_validator(mode="after")
    def _one_target(self) -> SuppressAction:
        if (self.plan is None) == (self.category is None):
            raise ValueError("suppress needs exactly one of plan, category")
        return self


class EmphasizeAction(_Strict):
    """Mark a plan item as emphasised for this patient, saying why."""

    plan: Annotated[str, Field(pattern=CODE)]
    reason: str


class TailorAction(_Strict):
    """Replace a plan item's text with one of its ``variants`` for this patient,
    saying why (e.g. the nut-free food list for a nut allergy)."""

    plan: Annotated[str, Field(pattern=CODE)]
    variant: Annotated[str, Field(pattern=NAME)]
    reason: str


class RequestAction(_Strict):
    """Ask for data: a lab analyte to order, with the reason."""

    analyte: Annotated[str, Field(pattern=NAME)]
    reason: str


class Action(_Strict):
    """Exactly one of: derive a fact, raise a flag, make a referral, add a plan
    item, emphasise or tailor a plan item, suppress plan items, request data."""

    derive: Annotated[str | None, Field(pattern=NAME)] = None
    flag: FlagAction | None = None
    referral: ReferralAction | None = None
    plan: Annotated[str | None, Field(pattern=CODE)] = None
    emphasize: EmphasizeAction | None = None
    tailor: TailorAction | None = None
    suppress: SuppressAction | None = None
    request: RequestAction | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        if len(self.model_dump(exclude_none=True)) != 1:
            raise ValueError(
                "an action has exactly one of derive, flag, referral, plan, emphasize, "
                "tailor, suppress, request"
            )
        return self


class Citation(_Strict):
    """Where a rule comes from: ``source`` is a key of the ruleset's
    ``sources`` (its source text, or a guideline) and ``section`` the heading
    or section cited."""

    source: Annotated[str, Field(pattern=NAME)]
    section: str


class Source(_Strict):
    """A document rules cite: the ruleset's source text or a guideline."""

    title: str
    publisher: str | None = None
    url: str | None = None


class Rule(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$")]
    title: str
    when: When
    then: Annotated[list[Action], Field(min_length=1)]
    rationale: str
    citation: Citation
    claims: list[str] = Field(default_factory=list)


class Threshold(_Strict):
    value: float
    unit: str
    description: str | None = None


class PlanItemDef(_Strict):
    code: Annotated[str, Field(pattern=CODE)]
    category: Annotated[str, Field(pattern=NAME)]
    text: str
    variants: dict[Annotated[str, Field(pattern=NAME)], str] = Field(default_factory=dict)


class Invariant(_Strict):
    """A declared monotonicity: moving ``analyte`` in ``direction`` never
    removes flag ``keeps_flag`` (checked by cdss.testing)."""

    analyte: Annotated[str, Field(pattern=NAME)]
    direction: Literal["lower", "higher"]
    keeps_flag: Annotated[str, Field(pattern=CODE)]


class RulesetFile(_Strict):
    """One version of a ruleset: ``rulesets/<id>/<version>.yaml``."""

    id: Annotated[str, Field(pattern=CODE)]
    version: Annotated[str, Field(pattern=SEMVER)]
    status: Literal["draft", "active", "retired"]
    fhir_release: Literal["4.0.1"]
    title: str
    description: str
    canonical_url: str | None = None
    sources: Annotated[dict[Annotated[str, Field(pattern=NAME)], Source], Field(min_length=1)]
    claims: dict[Annotated[str, Field(pattern=r"^C\d+$")], str] = Field(default_factory=dict)
    valuesets: Annotated[list[str], Field(min_length=1)]
    finding_lookback_days: Annotated[int, Field(gt=0)] = 365
    thresholds: dict[Annotated[str, Field(pattern=NAME)], Threshold] = Field(default_factory=dict)
    plan_items: list[PlanItemDef] = Field(default_factory=list)
    rules: Annotated[list[Rule], Field(min_length=1)]
    invariants: list[Invariant] = Field(default_factory=list)


Laterality = Literal["left", "right", "bilateral"]


class Code(_Strict):
    system: str
    code: str
    display: str | None = None
    verified: bool
    prefix: bool = False
    note: str | None = None
    #: The side the code itself states (``M54.31`` Sciatica, right side).
    laterality: Laterality | None = None
    #: The body site (a ``body_site`` concept) the code itself implies
    #: (``M62.831`` Muscle spasm of calf: ``calf``), read when no bodySite is given.
    site: Annotated[str | None, Field(pattern=NAME)] = None
    #: The code itself means the finding happens at night (``G47.62`` Sleep
    #: related leg cramps), read when no component records it.
    nocturnal: bool | None = None


class ConceptExtension(_Strict):
    """More codes for a concept defined in an earlier value-set file."""

    codes: Annotated[list[Code], Field(min_length=1)]
    note: str | None = None


class Bilateral(_Strict):
    """A finding that is present when records of the ``from`` concepts state both
    sides (a right- and a left-sided code or body site) or a bilateral one."""

    from_: Annotated[list[Annotated[str, Field(pattern=NAME)]],
                     Field(alias="from", min_length=1)]
    note: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Concept(_Strict):
    kind: Kind
    display: str
    codes: list[Code] = Field(default_factory=list)
    ingredients: list[str] = Field(default_factory=list)
    note: str | None = None


class Analyte(_Strict):
    canonical_unit: str
    lookback_days: Annotated[int, Field(gt=0)]
    molar_mass_g_per_mol: Annotated[float | None, Field(gt=0)] = None
    valence: Annotated[int | None, Field(gt=0)] = None
    plausible: tuple[float, float] | None = None
    ratio_of: tuple[str, str] | None = None
    order_loinc: str | None = None
    source: str | None = None
    note: str | None = None


class ValueSetFile(_Strict):
    systems: dict[str, str] = Field(default_factory=dict)
    concepts: dict[Annotated[str, Field(pattern=NAME)], Concept] = Field(default_factory=dict)
    analytes: dict[Annotated[str, Field(pattern=NAME)], Analyte] = Field(default_factory=dict)
    #: Codes added to concepts of earlier files (a later ruleset version's
    #: additions, leaving the shared file and the versions that use it alone).
    extends: dict[Annotated[str, Field(pattern=NAME)], ConceptExtension] = Field(
        default_factory=dict)
    #: Findings made present by laterality (see :class:`Bilateral`).
    bilateral: dict[Annotated[str, Field(pattern=NAME)], Bilateral] = Field(
        default_factory=dict)
    #: Body-site qualifier codes that state a side (SNOMED CT right / left / both).
    qualifiers: list[Code] = Field(default_factory=list)


class ConceptMapEntry(_Strict):
    system: str
    code: str
    concept: Annotated[str, Field(pattern=NAME)]
    display: str | None = None


class ConceptMapFile(_Strict):
    """A site's own codes mapped onto a ruleset's concepts, without code changes."""

    ruleset: Annotated[str, Field(pattern=CODE)]
    maps: list[ConceptMapEntry]


def ruleset_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ruleset file, exported from :class:`RulesetFile`."""
    return RulesetFile.model_json_schema(by_alias=True)
