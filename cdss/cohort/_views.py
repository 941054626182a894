"""SQL on FHIR v2 ViewDefinitions over a screen's FHIR output.

The package ships one ViewDefinition (JSON) per table analysts join, in
``cdss/cohort/views/``: ``flags`` (patient x flag), ``flag_evidence``
(patient x flag x evidence item), ``referrals`` (patient x referral) and
``plan_items`` (patient x plan item). Each flattens the resources
``cdss screen --format fhir`` writes (see :mod:`cdss.cohort._fhir_bulk`); the
``patient`` column of every view is the patient reference of
``assessments.parquet``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import orjson

__all__ = ["VIEWS", "view_definition"]

#: The names of the shipped ViewDefinitions.
VIEWS = ("flags", "flag_evidence", "referrals", "plan_items")


def view_definition(name: str) -> dict[str, Any]:
    """The shipped ViewDefinition ``name`` (one of :data:`VIEWS`) as JSON data."""
    from cdss.errors import InvalidArgument

    if name not in VIEWS:
        raise InvalidArgument(f"view must be one of {VIEWS}, got {name!r}")
    data = resources.files("cdss.cohort").joinpath("views").joinpath(f"{name}.json").read_bytes()
    view: dict[str, Any] = orjson.loads(data)
    return view
