"""The schema of ruleset and value-set files, as pydantic models.

These models are the single definition of what a rule file may say; the JSON
Schema that editors and CI use is exported from them
(:func:`ruleset_json_schema`). Every model forbids unknown keys, so a misspelt
key is an error at load time, not a silently ignored rule.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Action",
    "Analyte",
    "CitationDef",
    "Code",
    "Concept",
    "ConceptMapFile",
    "EmphasizeAction",
    "FlagAction",
    "Invariant",
    "OverrideReasonDef",
    "PatternDef",
    "PlanItemDef",
    "Policy",
    "Population",
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

    threshold: Annotated[str, Field(
        pattern=NAME, description="The name of a threshold in the ruleset's `thresholds`.")]


Operand = Scalar | ThresholdRef
_OPERAND = "a number, text, true/false or `{threshold: name}`"


class Comparison(_Strict):
    """Comparisons on one field of a fact; several keys must all hold.

    A field the fact does not record never passes a comparison, except
    ``exists: false``.
    """

    eq: Operand | None = Field(None, description=f"The field equals {_OPERAND}.")
    ne: Operand | None = Field(None, description=f"The field is recorded and differs from "
                                                 f"{_OPERAND}.")
    lt: Operand | None = Field(None, description="The field (a number) is below this.")
    le: Operand | None = Field(None, description="The field (a number) is at most this.")
    gt: Operand | None = Field(None, description="The field (a number) is above this.")
    ge: Operand | None = Field(None, description="The field (a number) is at least this.")
    in_: Annotated[list[Scalar] | None, Field(
        alias="in", description="The field equals one of these values.")] = None
    exists: bool | None = Field(None, description=(
        "`false` holds when the fact does not record the field (a finding whose site was "
        "not recorded); `true` when it does."))

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _not_empty(self) -> Comparison:
        if not self.model_dump(exclude_none=True):
            raise ValueError(
                "a comparison needs at least one of eq, ne, lt, le, gt, ge, in, exists")
        return self


class PatternDef(_Strict):
    """One fact pattern as the file writes it: the fact's name and tests on its
    fields (compiled into a :class:`cdss.rulesets.Pattern`).

    A bare value in ``where`` means equality. For findings, a condition without
    a ``status`` test matches only findings recorded as present.
    """

    fact: Annotated[str, Field(pattern=NAME, description=(
        "The fact to match: a concept of the value sets, `patient`, `order` (a draft "
        "order), or a fact a rule derives."))]
    where: dict[str, Scalar | Comparison] = Field(default_factory=dict, description=(
        "Tests on the fact's fields, by field name (patient: age, sex; lab: value, unit, "
        "status, age_days, computed; finding: status, site, nocturnal, age_days; order: "
        "concept, status, selected, reference, resource_type): a bare value means "
        "equality, a mapping holds comparisons."))


class When(_Strict):
    """``all`` must each match a fact, at least one of ``any`` must (when
    given), and none of ``none`` may. ``none`` means "not known to be true"."""

    all: list[PatternDef] = Field(default_factory=list, description=(
        "Patterns that must each match a fact."))
    any: list[PatternDef] = Field(default_factory=list, description=(
        "Patterns of which at least one must match a fact (when any are given)."))
    none: list[PatternDef] = Field(default_factory=list, description=(
        "Patterns none of which may match a fact: \"not known to be true\"."))

    @model_validator(mode="after")
    def _something(self) -> When:
        if not (self.all or self.any or self.none):
            raise ValueError("when needs at least one of all, any, none")
        return self


class FlagAction(_Strict):
    """Raise a flag: one per code in the Assessment, the most severe rule winning."""

    code: Annotated[str, Field(pattern=CODE, description="The flag's code (kebab-case).")]
    display: str = Field(description="What the flag says, for a clinician.")
    severity: Severity = Field(description="low, moderate, high or critical; a critical "
                                           "flag is a red flag.")
    order_suggestion: Literal["remove"] | None = Field(None, description=(
        "For a flag on draft orders (a rule with an `order` pattern in `all`): `remove` "
        "suggests removing the draft orders the rule matched. Only where the rule's "
        "rationale justifies it (e.g. a contraindication); otherwise leave it out and the "
        "card suggests nothing about the order."))


class ReferralAction(_Strict):
    """Make a referral: one per code in the Assessment, urgent winning over routine."""

    code: Annotated[str, Field(pattern=CODE, description="The referral's code (kebab-case).")]
    display: str = Field(description="Whom to refer to and why, for a clinician.")
    urgency: Literal["routine", "urgent"] = Field(description="routine or urgent.")


class SuppressAction(_Strict):
    """Remove a plan item (``plan``) or every item of a ``category``, saying why."""

    plan: Annotated[str | None, Field(
        pattern=CODE, description="The code of the plan item to remove.")] = None
    category: Annotated[str | None, Field(
        pattern=NAME, description="The category whose every plan item is removed.")] = None
    reason: str = Field(description="Why, shown beside the removed items.")

    @model_validator(mode="after")
    def _one_target(self) -> SuppressAction:
        if (self.plan is None) == (self.category is None):
            raise ValueError("suppress needs exactly one of plan, category")
        return self


class EmphasizeAction(_Strict):
    """Mark a plan item as emphasised for this patient, saying why."""

    plan: Annotated[str, Field(pattern=CODE, description="The code of the plan item.")]
    reason: str = Field(description="Why it matters more for this patient.")


class TailorAction(_Strict):
    """Replace a plan item's text with one of its ``variants`` for this patient,
    saying why (e.g. the nut-free food list for a nut allergy)."""

    plan: Annotated[str, Field(pattern=CODE, description="The code of the plan item.")]
    variant: Annotated[str, Field(
        pattern=NAME, description="The name of one of the plan item's `variants`.")]
    reason: str = Field(description="Why this patient gets the variant.")


class RequestAction(_Strict):
    """Ask for data: a lab analyte to order, with the reason."""

    analyte: Annotated[str, Field(
        pattern=NAME, description="The analyte (of the value sets' `analytes`) to order.")]
    reason: str = Field(description="Why the result is needed.")


class Action(_Strict):
    """Exactly one of: derive a fact, raise a flag, make a referral, add a plan
    item, emphasise or tailor a plan item, suppress plan items, request data."""

    derive: Annotated[str | None, Field(pattern=NAME, description=(
        "Derive a fact of this name, which rules of later strata can test."))] = None
    flag: FlagAction | None = Field(None, description="Raise a flag.")
    referral: ReferralAction | None = Field(None, description="Make a referral.")
    plan: Annotated[str | None, Field(pattern=CODE, description=(
        "Add the plan item of this code (of `plan_items`) to the plan."))] = None
    emphasize: EmphasizeAction | None = Field(None, description="Emphasise a plan item.")
    tailor: TailorAction | None = Field(None, description="Give a plan item a variant's text.")
    suppress: SuppressAction | None = Field(None, description=(
        "Remove a plan item or a category; removal always wins over addition."))
    request: RequestAction | None = Field(None, description="Ask for a lab result.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        if len(self.model_dump(exclude_none=True)) != 1:
            raise ValueError(
                "an action has exactly one of derive, flag, referral, plan, emphasize, "
                "tailor, suppress, request"
            )
        return self


class CitationDef(_Strict):
    """Where a rule comes from: ``source`` is a key of the ruleset's
    ``sources`` (its source text, or a guideline) and ``section`` the heading
    or section cited. Outputs cite with :class:`cdss.assessment.Citation`,
    which adds the document's title and URL."""

    source: Annotated[str, Field(pattern=NAME, description="A key of the ruleset's `sources`.")]
    section: str = Field(description="The heading or section of that document cited.")


class Source(_Strict):
    """A document rules cite: the ruleset's source text or a guideline."""

    title: str = Field(description="The document's title.")
    publisher: str | None = Field(None, description="Who published it.")
    url: str | None = Field(None, description="Where to read it.")


class OverrideReasonDef(_Strict):
    """A reason a clinician may pick when overriding a card: CDS Hooks 2.0
    cards offer them as ``overrideReasons`` (Codings), and feedback names the
    one picked."""

    code: Annotated[str, Field(pattern=CODE, description="Unique in the catalogue.")]
    display: str = Field(description="What the clinician reads.")
    system: str | None = Field(None, description=(
        "The code system (default: the ruleset's own override-reason code system)."))


class Rule(_Strict):
    """One rule: when its patterns match the facts, its actions run."""

    id: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$", description=(
        "Unique in the ruleset, upper case with dashes (`PC-K-01`); outputs name it."))]
    title: str = Field(description="What the rule does, in a line.")
    when: When = Field(description="The patterns the facts must match.")
    then: Annotated[list[Action], Field(min_length=1, description=(
        "The actions, run in order when the rule fires."))]
    rationale: str = Field(description="Why, for a clinician; outputs show it.")
    citation: CitationDef = Field(description="The document and section the rule comes from.")
    claims: list[str] = Field(default_factory=list, description=(
        "The keys of the ruleset's `claims` (statements of the source text) the rule "
        "encodes."))
    override_reasons: list[Annotated[str, Field(pattern=CODE)]] = Field(
        default_factory=list, description=(
            "Codes of the ruleset's `override_reasons` its flag and referral cards offer "
            "(default: the whole catalogue)."))


class Threshold(_Strict):
    """A named value rules compare with (``{threshold: name}``), in the analyte's
    canonical unit, so a cut-off is changed in one place."""

    value: float = Field(description="The value.")
    unit: str = Field(description="Its unit (UCUM), the canonical unit of what it is "
                                  "compared with.")
    description: str | None = Field(None, description="What the threshold means.")


class PlanItemDef(_Strict):
    """A plan item of the catalogue: plans list the items rules add in catalogue
    order."""

    code: Annotated[str, Field(pattern=CODE, description="Unique in the catalogue.")]
    category: Annotated[str, Field(pattern=NAME, description=(
        "The item's category; `suppress` can remove a whole category."))]
    text: str = Field(description="What the patient is advised, as the plan shows it.")
    variants: dict[Annotated[str, Field(pattern=NAME)], str] = Field(
        default_factory=dict, description="Other texts, by name, that `tailor` can choose.")


class Invariant(_Strict):
    """A declared monotonicity: moving ``analyte`` in ``direction`` never
    removes flag ``keeps_flag`` (checked by cdss.testing)."""

    analyte: Annotated[str, Field(pattern=NAME, description="The analyte that moves.")]
    direction: Literal["lower", "higher"] = Field(description="lower or higher.")
    keeps_flag: Annotated[str, Field(pattern=CODE, description=(
        "The flag the move never removes."))]


class Policy(_Strict):
    """A declared safety policy, checked by cdss.testing on generated records:
    beside a flag of severity ``flag_severity`` (one of ``flags`` when given),
    the plan keeps no item of category ``no_plan_category`` (red flags win over
    self-care advice), or its first item is of one of the categories of
    ``plan_leads_with`` (a severe value's review comes before every self-care
    item). Exactly one of the two."""

    flag_severity: Severity = Field(description=(
        "The severity of the flags the policy applies to."))
    flags: list[Annotated[str, Field(pattern=CODE)]] = Field(default_factory=list, description=(
        "The flag codes the policy applies to (default: every flag of that severity)."))
    no_plan_category: Annotated[str | None, Field(pattern=NAME, description=(
        "The plan-item category a plan never keeps beside such a flag."))] = None
    plan_leads_with: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list, description=(
            "Beside such a flag, the plan's first item is of one of these categories, so "
            "that no item of another category comes before them."))

    @model_validator(mode="after")
    def _one_kind(self) -> Policy:
        if (self.no_plan_category is None) == (not self.plan_leads_with):
            raise ValueError("a policy needs exactly one of no_plan_category, plan_leads_with")
        return self


class Population(_Strict):
    """Whom a ruleset is for. A record outside it is still evaluated (red flags
    are never withheld) and carries an ``outside-population`` data-quality
    note; what the rules give such a record is up to the rules (e.g. no adult
    self-care advice)."""

    min_age: Annotated[str | None, Field(pattern=NAME, description=(
        "The name of the threshold (in years) below which a patient is outside the "
        "population."))] = None
    description: str = Field(description="The population, in words.")


class RulesetFile(_Strict):
    """One version of a ruleset: ``rulesets/<id>/<version>.yaml``."""

    id: Annotated[str, Field(pattern=CODE, description="The ruleset's id (its folder's name).")]
    version: Annotated[str, Field(pattern=SEMVER, description=(
        "Semantic version, equal to the file's name."))]
    status: Literal["draft", "active", "retired"] = Field(description=(
        "draft, active or retired; `load_ruleset(id)` is the highest active version."))
    fhir_release: Literal["4.0.1"] = Field(description="The FHIR release the records are in.")
    title: str = Field(description="The ruleset's title.")
    description: str = Field(description="What the ruleset is for and what it reads.")
    canonical_url: str | None = Field(None, description=(
        "The ruleset's canonical URL, which the FHIR output names."))
    developer: str | None = Field(None, description=(
        "Who developed and maintains the ruleset (named on every card and in discovery)."))
    release_date: date | None = Field(None, description=(
        "The date this version was released (named on every card and in discovery)."))
    sources: Annotated[dict[Annotated[str, Field(pattern=NAME)], Source], Field(
        min_length=1, description="The documents rules cite, by key.")]
    claims: dict[Annotated[str, Field(pattern=r"^C\d+$")], str] = Field(
        default_factory=dict, description=(
            "The statements of the source text, by key (`C1`), which rules name."))
    valuesets: Annotated[list[str], Field(min_length=1, description=(
        "The value-set files (in the ruleset's folder) whose concepts the rules use."))]
    finding_lookback_days: Annotated[int, Field(gt=0, description=(
        "How recent a finding's record must be to count, in days."))] = 365
    thresholds: dict[Annotated[str, Field(pattern=NAME)], Threshold] = Field(
        default_factory=dict, description="Named values rules compare with.")
    plan_items: list[PlanItemDef] = Field(default_factory=list, description=(
        "The catalogue of plan items, in plan order."))
    rules: Annotated[list[Rule], Field(min_length=1, description=(
        "The rules; their order breaks ties."))]
    invariants: list[Invariant] = Field(default_factory=list, description=(
        "Declared monotonicities that `cdss test-ruleset` checks."))
    override_reasons: list[OverrideReasonDef] = Field(default_factory=list, description=(
        "The reasons a clinician may give for overriding a flag or referral card (the "
        "cards' `overrideReasons`); a rule may offer a selection."))
    boundary_rounding: Literal["charted"] | None = Field(None, description=(
        "`charted`: a lab value charted in a unit other than the canonical one and equal, "
        "at the precision it was charted with, to a threshold's equivalent in that unit is "
        "read as the threshold itself, so that a conversion never moves a value across a "
        "threshold (1.7 mg/dL of magnesium is the 0.70 mmol/L threshold, not below it). "
        "Unset: values are compared as converted."))
    population: Population | None = Field(None, description=(
        "Whom the ruleset is for; a record outside it gets a data-quality note."))
    policies: list[Policy] = Field(default_factory=list, description=(
        "Declared safety policies (a flag's severity excludes a plan category) that "
        "`cdss test-ruleset` checks; they decide no answer and are not in the content hash."))


Laterality = Literal["left", "right", "bilateral"]


class Code(_Strict):
    """A code of a concept (or a body-site qualifier) and what the code itself
    states."""

    system: str = Field(description="A code system: an alias of `systems` or its URI.")
    code: str = Field(description="The code (ICD-10-CM with or without its dot).")
    display: str | None = Field(None, description="The code's display in its system.")
    verified: bool = Field(description=(
        "The code with this meaning was found in a published value set or code table."))
    prefix: bool = Field(False, description=(
        "The code also stands for every code it begins (an ICD-10-CM or ATC category)."))
    note: str | None = Field(None, description="Why the code is here, or what to know of it.")
    laterality: Laterality | None = Field(None, description=(
        "The side the code itself states (`M54.31` Sciatica, right side)."))
    site: Annotated[str | None, Field(pattern=NAME, description=(
        "The body site (a `body_site` concept) the code itself implies (`M62.831` Muscle "
        "spasm of calf: `calf`), read when no bodySite is given."))] = None
    nocturnal: bool | None = Field(None, description=(
        "The code itself means the finding happens at night (`G47.62` Sleep related leg "
        "cramps), read when no component records it."))


class ConceptExtension(_Strict):
    """More codes for a concept defined in an earlier value-set file."""

    codes: Annotated[list[Code], Field(min_length=1, description="The codes added.")]
    ingredients: list[str] = Field(default_factory=list, description=(
        "For a medication class: ingredient names added to the concept's `ingredients`."))
    note: str | None = Field(None, description="Why they are added.")


class Bilateral(_Strict):
    """A finding that is present when records of the ``from`` concepts state both
    sides (a right- and a left-sided code or body site) or a bilateral one."""

    from_: Annotated[list[Annotated[str, Field(pattern=NAME)]], Field(
        alias="from", min_length=1, description="The concepts whose sides count.")]
    note: str | None = Field(None, description="What the finding means.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Concept(_Strict):
    """A clinical concept of the value sets: the codes that mean it; a concept of
    a fact kind (lab, finding, condition, medication, allergy) is a fact rules
    can test."""

    kind: Kind = Field(description=(
        "lab, finding, condition, medication, allergy, body_site or qualifier."))
    display: str = Field(description="The concept's name, as outputs show it.")
    codes: list[Code] = Field(default_factory=list, description="The codes that mean it.")
    ingredients: list[str] = Field(default_factory=list, description=(
        "For a medication class: ingredient names that class a medication whose code is "
        "not listed, from its display or text."))
    note: str | None = Field(None, description="What to know of the concept.")


class Analyte(_Strict):
    """How a lab concept's values are read: the canonical unit, how recent a
    value must be, and what converting and checking it needs."""

    canonical_unit: str = Field(description="The UCUM unit values are converted to and "
                                            "rules compare in.")
    lookback_days: Annotated[int, Field(gt=0, description=(
        "How recent a result must be to count, in days."))]
    molar_mass_g_per_mol: Annotated[float | None, Field(gt=0, description=(
        "The molar mass, to convert between mass and substance units."))] = None
    valence: Annotated[int | None, Field(gt=0, description=(
        "The valence, to convert equivalents (mEq/L)."))] = None
    plausible: tuple[float, float] | None = Field(None, description=(
        "The lowest and highest value (canonical unit) a real measurement can have; "
        "values outside are input errors."))
    ratio_of: tuple[str, str] | None = Field(None, description=(
        "The two analytes whose ratio this is, computed when no ratio is reported."))
    order_loinc: str | None = Field(None, description="The LOINC code a data request asks "
                                                      "to order.")
    source: str | None = Field(None, description="Where the molar mass or unit comes from.")
    note: str | None = Field(None, description="What to know of the analyte.")


class ValueSetFile(_Strict):
    """A value-set file a ruleset names: code systems, concepts, analytes."""

    systems: dict[str, str] = Field(default_factory=dict, description=(
        "Short aliases of code-system URIs, used by the codes."))
    concepts: dict[Annotated[str, Field(pattern=NAME)], Concept] = Field(
        default_factory=dict, description="The concepts, by name.")
    analytes: dict[Annotated[str, Field(pattern=NAME)], Analyte] = Field(
        default_factory=dict, description="How each lab concept's values are read.")
    extends: dict[Annotated[str, Field(pattern=NAME)], ConceptExtension] = Field(
        default_factory=dict, description=(
            "Codes added to concepts of earlier files (a later ruleset version's additions, "
            "leaving the shared file and the versions that use it alone)."))
    bilateral: dict[Annotated[str, Field(pattern=NAME)], Bilateral] = Field(
        default_factory=dict, description="Findings made present by laterality.")
    qualifiers: list[Code] = Field(default_factory=list, description=(
        "Body-site qualifier codes that state a side (right, left, both)."))


class ConceptMapEntry(_Strict):
    """One site code and the concept it means."""

    system: str = Field(description="The site's code system URI.")
    code: str = Field(description="The site's code.")
    concept: Annotated[str, Field(pattern=NAME, description="The ruleset's concept it means.")]
    display: str | None = Field(None, description="The code's display at the site.")


class ConceptMapFile(_Strict):
    """A site's own codes mapped onto a ruleset's concepts, without code changes."""

    ruleset: Annotated[str, Field(pattern=CODE, description="The id of the ruleset mapped onto.")]
    maps: list[ConceptMapEntry] = Field(description="The site's codes.")


def ruleset_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ruleset file, exported from :class:`RulesetFile`."""
    return RulesetFile.model_json_schema(by_alias=True)
