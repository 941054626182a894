"""Cohort screens (extra ``cohort``: dask, pyarrow): many patients, bounded memory.

:func:`screen` runs a ruleset over FHIR bulk exports (NDJSON, Bundles) in
local worker processes or on a Dask cluster and writes one result per
patient, error rows, a worklist of the patients to act on, a summary and a
report; :func:`diff` compares two ruleset versions on the same patients (and
:func:`check` holds a diff to an expectations file, a release gate);
:func:`generate_cohort` writes a deterministic synthetic export from a
ruleset's own files. The package's modules are the only importers of dask and
pyarrow.
"""

from __future__ import annotations

from cdss import _exports
from cdss.cohort._gate import (
    Expectations,
    RuleExpectation,
    Violation,
    check,
    expectations_schema,
    load_expectations,
)
from cdss.cohort._generate import GeneratedCohort, generate_cohort
from cdss.cohort._inputs import partition_of
from cdss.cohort._screen import EXECUTORS, FORMATS, DiffReport, ScreenSummary, diff, screen
from cdss.cohort._views import VIEWS, view_definition
from cdss.errors import CohortError, ExpectationsError

__all__ = [
    "EXECUTORS",
    "FORMATS",
    "VIEWS",
    "CohortError",
    "DiffReport",
    "Expectations",
    "ExpectationsError",
    "GeneratedCohort",
    "RuleExpectation",
    "ScreenSummary",
    "Violation",
    "check",
    "diff",
    "expectations_schema",
    "generate_cohort",
    "load_expectations",
    "partition_of",
    "screen",
    "view_definition",
]

_exports.claim(globals())
