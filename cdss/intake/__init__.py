"""Intake: FHIR R4 JSON in, one patient's validated resources out.

:func:`read_record` accepts a Bundle, a resource, a list of resources or JSON
text/bytes of those and returns a :class:`Record`. Two modes read the same
shapes and give the same facts on valid input: ``strict`` validates every
used resource with fhir.resources (R4B); ``lean`` validates only the fields
the facts read, straight from JSON bytes (for cohort screens).
"""

from __future__ import annotations

from cdss import _exports
from cdss.intake._lean import RESOURCE_TYPES, is_resource_type
from cdss.intake._shapes import (
    MODES,
    ON_INVALID,
    REFERENCE_PATH,
    USED_TYPES,
    LeftOut,
    Record,
    reference_path,
    zone,
)
from cdss.intake._strict import read_record

__all__ = [
    "MODES",
    "ON_INVALID",
    "REFERENCE_PATH",
    "RESOURCE_TYPES",
    "USED_TYPES",
    "LeftOut",
    "Record",
    "is_resource_type",
    "read_record",
    "reference_path",
    "zone",
]

_exports.claim(globals())
