"""Property-based testing of rulesets (needs the ``testing`` extra: hypothesis).

Rulesets change over years, and sites write their own. This package finds
the patients on whom a ruleset misbehaves:

* strategies of FHIR R4 records built from a ruleset's own value sets and
  rules (:func:`records`, :func:`from_ruleset`, :func:`observations`,
  :func:`findings`, :func:`conditions`, :func:`medications`,
  :func:`allergies`, :func:`patients`), for one's own ``@given`` tests;
* :func:`check_ruleset`, which checks in one call the invariants every
  ruleset must keep (:data:`PROPERTIES`) and reports which rules fired how
  often, with every failure shrunk to a small FHIR record ready for a case
  file. ``cdss test-ruleset`` runs it from the command line.

``import cdss`` never imports this package; ``import cdss.testing`` imports
hypothesis.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cdss.testing needs hypothesis: install the extra with pip install 'cdss-fhir[testing]'"
    ) from exc

from cdss import _exports
from cdss.testing._invariants import PROPERTIES, check_ruleset, clinical_summary
from cdss.testing._report import Failure, PropertyResult, Report
from cdss.testing.strategies import (
    DEFAULT_AS_OF,
    PATIENT_ID,
    allergies,
    conditions,
    findings,
    from_ruleset,
    medications,
    observations,
    patients,
    records,
    unit_factors,
)

__all__ = [
    "DEFAULT_AS_OF",
    "PATIENT_ID",
    "PROPERTIES",
    "Failure",
    "PropertyResult",
    "Report",
    "allergies",
    "check_ruleset",
    "clinical_summary",
    "conditions",
    "findings",
    "from_ruleset",
    "medications",
    "observations",
    "patients",
    "records",
    "unit_factors",
]

_exports.claim(globals())
