"""Rulesets: the file formats, loading with load-time checks, the compiled
form both engines run, the registry of versions, and generated references.

``load_ruleset("id")`` is the highest active version, ``"id@version"`` pins
one, ``load_ruleset()`` the default ruleset the shipped ``index.yaml`` names;
``paths=[folder]`` adds a site's folders; :func:`load_ruleset_file`
reads one file. A :class:`Ruleset` that loads is one that runs: unknown
names, types and dependency cycles are refused at load time, with the file,
rule id and field. The pydantic models of the files (:class:`RulesetFile`,
:class:`ValueSetFile`, :class:`ConceptMapFile` and their parts) give the
JSON Schema (:func:`ruleset_json_schema`).
"""

from __future__ import annotations

from cdss import _exports
from cdss.rulesets._compiled import FIELD_TYPES, FIELDS, ORDER, CompiledRule, Pattern, Test
from cdss.rulesets._docgen import render_ruleset_doc
from cdss.rulesets._loading import load_ruleset_file
from cdss.rulesets._registry import (
    available_rulesets,
    builtin_folder,
    default_ruleset_id,
    load_ruleset,
)
from cdss.rulesets._ruleset import Ruleset
from cdss.rulesets._schema import (
    Action,
    Analyte,
    CitationDef,
    Code,
    Concept,
    ConceptMapEntry,
    ConceptMapFile,
    EmphasizeAction,
    FlagAction,
    Invariant,
    OverrideReasonDef,
    PatternDef,
    PlanItemDef,
    Policy,
    Population,
    ReferralAction,
    RequestAction,
    Rule,
    RulesetFile,
    Source,
    SuppressAction,
    TailorAction,
    Threshold,
    ValueSetFile,
    When,
    ruleset_json_schema,
)

__all__ = [
    "FIELDS",
    "FIELD_TYPES",
    "ORDER",
    "Action",
    "Analyte",
    "CitationDef",
    "Code",
    "CompiledRule",
    "Concept",
    "ConceptMapEntry",
    "ConceptMapFile",
    "EmphasizeAction",
    "FlagAction",
    "Invariant",
    "OverrideReasonDef",
    "Pattern",
    "PatternDef",
    "PlanItemDef",
    "Policy",
    "Population",
    "ReferralAction",
    "RequestAction",
    "Rule",
    "Ruleset",
    "RulesetFile",
    "Source",
    "SuppressAction",
    "TailorAction",
    "Test",
    "Threshold",
    "ValueSetFile",
    "When",
    "available_rulesets",
    "builtin_folder",
    "default_ruleset_id",
    "load_ruleset",
    "load_ruleset_file",
    "render_ruleset_doc",
    "ruleset_json_schema",
]

_exports.claim(globals())
