"""What both intakes share: the record shapes accepted, the Record they give,
and how a resource is left out.

Strict intake (:mod:`cdss.intake._strict`) and lean intake
(:mod:`cdss.intake._lean`) both start from :func:`record_entries` and both end
in a :class:`Record`; keeping these here lets each intake import the shapes
without importing the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from cdss.errors import InputError, InvalidArgument

__all__ = [
    "MODES",
    "ON_INVALID",
    "REFERENCE_PATH",
    "USED_TYPES",
    "LeftOut",
    "Record",
    "record_entries",
    "reference_path",
    "str_id",
    "zone",
]

#: The resource types whose content becomes facts.
USED_TYPES = frozenset({"AllergyIntolerance", "Condition", "MedicationRequest",
                        "MedicationStatement", "Observation", "Patient"})
#: Intake modes. ``strict`` validates with fhir.resources; ``lean`` validates
#: only the fields the facts read, with the schemas of :mod:`cdss.lean`.
MODES = ("strict", "lean")
#: What to do with a resource that cannot be read: leave it out with the
#: reason, or refuse the whole record (InputError).
ON_INVALID = ("leave-out", "refuse")
#: The environment variable that, set to ``1``, makes intake and the facts take
#: their reference path: the lean record validated in one ``validate_json``
#: pass from its bytes, and every used resource kept in the Record and read by
#: the facts, the unmapped ones included. The default path gives the same
#: Assessments byte for byte, faster; the reference path is what tests and
#: benchmarks compare it with.
REFERENCE_PATH = "CDSS_REFERENCE_PATH"


def reference_path() -> bool:
    """True when :data:`REFERENCE_PATH` asks for the reference path (read on
    every call, so that a test or a benchmark can switch it)."""
    return os.environ.get(REFERENCE_PATH, "") == "1"


_BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document"})

@dataclass(frozen=True)
class LeftOut:
    """A resource left out of a record because it cannot be read: which
    (``Observation/o1``), the field when known, and why."""

    resource: str
    field: str | None
    reason: str

    @classmethod
    def from_error(cls, exc: InputError, fallback: str) -> LeftOut:
        ref = f"{exc.resource_type or 'resource'}/{exc.resource_id or '?'}" \
            if exc.resource_type or exc.resource_id else fallback
        return cls(resource=ref, field=exc.field, reason=exc.reason)


@dataclass(frozen=True)
class Record:
    """One patient's resources after intake.

    ``resources`` holds the used, validated resources other than the Patient,
    in input order, as plain JSON dicts. ``skipped`` counts resources of types
    the facts do not use, by type. ``left_out`` lists the resources that could
    not be read (``on_invalid="leave-out"``); ``notes`` are (code, resource,
    message) of what was read with an assumption (a time without a zone).
    """

    patient: Mapping[str, Any] | None
    patient_ref: str | None
    resources: tuple[Mapping[str, Any], ...]
    skipped: Mapping[str, int] = field(default_factory=dict)
    left_out: tuple[LeftOut, ...] = ()
    notes: tuple[tuple[str, str, str], ...] = ()


def zone(name: str | tzinfo) -> tzinfo:
    """A time zone from an IANA name (``"UTC"``, ``"Europe/Berlin"``) or a tzinfo."""
    if isinstance(name, tzinfo):
        return name
    if not isinstance(name, str):
        raise InvalidArgument(f"timezone must be an IANA name or a tzinfo, not {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"timezone {name!r} is not a known IANA time zone") from None


def _json(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc}") from None


def record_entries(record: Any) -> Iterable[tuple[int, Any, str | None]]:
    """Yield (position, resource, fullUrl) from any accepted record shape."""
    if isinstance(record, (str, bytes, bytearray, memoryview)):
        record = _json(bytes(record) if not isinstance(record, str) else record)
    if isinstance(record, Mapping):
        if record.get("resourceType") == "Bundle":
            btype = record.get("type")
            if not isinstance(btype, str) or btype not in _BUNDLE_TYPES:
                raise InputError(
                    f"Bundle type {btype!r} is not one of {sorted(_BUNDLE_TYPES)}",
                    resource_type="Bundle",
                    resource_id=str_id(record),
                    field="type",
                )
            entries = record.get("entry") or []
            if not isinstance(entries, list):
                raise InputError(
                    "entry must be a list",
                    resource_type="Bundle",
                    resource_id=str_id(record),
                    field="entry",
                )
            for i, entry in enumerate(entries):
                if type(entry) is dict:  # as JSON parses: the same looks, cheaper
                    resource = entry.get("resource")
                    full_url = entry.get("fullUrl")
                    if type(resource) is dict:
                        yield i, resource, full_url if type(full_url) is str or isinstance(
                            full_url, str) else None
                        continue
                if not isinstance(entry, Mapping) or not isinstance(
                    entry.get("resource"), Mapping
                ):
                    raise InputError(
                        "entry has no resource object",
                        resource_type="Bundle",
                        resource_id=str_id(record),
                        field=f"entry[{i}].resource",
                    )
                full_url = entry.get("fullUrl")
                yield i, entry["resource"], full_url if isinstance(full_url, str) else None
            return
        yield 0, record, None
        return
    if isinstance(record, Sequence):
        for i, item in enumerate(record):
            if isinstance(item, (str, bytes)):
                item = _json(item)
            yield i, item, None
        return
    raise InvalidArgument(
        "record must be a FHIR Bundle, a resource, a list of resources, or JSON text/bytes; "
        f"got {type(record).__name__}"
    )


def str_id(resource: Mapping[str, Any]) -> str | None:
    """A resource's ``id`` as text (``None`` when it has none)."""
    rid = resource.get("id")
    return rid if isinstance(rid, str) else (None if rid is None else str(rid))
