"""Intake: FHIR R4 JSON in, one patient's validated resources out.

Accepts a Bundle (collection, searchset, transaction, batch, document), a
single resource, a list of resources, or JSON text/bytes of any of those. In
``strict`` mode every resource of a type the facts use is validated with
fhir.resources (R4B models, which read R4 JSON for these resource types);
resource types the facts do not use are counted and skipped, never fatal.
In ``lean`` mode (:mod:`cdss.lean`) only the fields the facts read are
validated, straight from JSON bytes; both modes give the same facts on valid
input.

Everything that can go wrong with the input becomes an :class:`InputError`
naming the resource type, id and field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
from pydantic import ValidationError

from cdss.errors import InputError, InvalidArgument

__all__ = ["MODES", "USED_TYPES", "Record", "read_record"]

#: The resource types whose content becomes facts.
USED_TYPES = frozenset(
    {
        "AllergyIntolerance",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "Observation",
        "Patient",
    }
)
#: Intake modes. ``strict`` validates with fhir.resources; ``lean`` validates
#: only the fields the facts read, with the schemas of :mod:`cdss.lean`.
MODES = ("strict", "lean")
_BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document"})
_SUBJECT_FIELD = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "AllergyIntolerance": "patient",
}


@dataclass(frozen=True)
class Record:
    """One patient's resources after intake.

    ``resources`` holds the used, validated resources other than the Patient,
    in input order, as plain JSON dicts. ``skipped`` counts resources of types
    the facts do not use, by type.
    """

    patient: Mapping[str, Any] | None
    patient_ref: str | None
    resources: tuple[Mapping[str, Any], ...]
    skipped: Mapping[str, int] = field(default_factory=dict)


@cache
def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc}") from None


def _entries(record: Any) -> Iterable[tuple[int, Any, str | None]]:
    """Yield (position, resource, fullUrl) from any accepted record shape."""
    if isinstance(record, (str, bytes, bytearray, memoryview)):
        record = _loads(bytes(record) if not isinstance(record, str) else record)
    if isinstance(record, Mapping):
        if record.get("resourceType") == "Bundle":
            btype = record.get("type")
            if not isinstance(btype, str) or btype not in _BUNDLE_TYPES:
                raise InputError(
                    f"Bundle type {btype!r} is not one of {sorted(_BUNDLE_TYPES)}",
                    resource_type="Bundle",
                    resource_id=_str_id(record),
                    field="type",
                )
            entries = record.get("entry") or []
            if not isinstance(entries, list):
                raise InputError(
                    "entry must be a list",
                    resource_type="Bundle",
                    resource_id=_str_id(record),
                    field="entry",
                )
            for i, entry in enumerate(entries):
                if not isinstance(entry, Mapping) or not isinstance(
                    entry.get("resource"), Mapping
                ):
                    raise InputError(
                        "entry has no resource object",
                        resource_type="Bundle",
                        resource_id=_str_id(record),
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
                item = _loads(item)
            yield i, item, None
        return
    raise InvalidArgument(
        "record must be a FHIR Bundle, a resource, a list of resources, or JSON text/bytes; "
        f"got {type(record).__name__}"
    )


def _str_id(resource: Mapping[str, Any]) -> str | None:
    rid = resource.get("id")
    return rid if isinstance(rid, str) else (None if rid is None else str(rid))


def _validate(resource: Mapping[str, Any], resource_type: str) -> None:
    model = _model_class(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise InputError(
            err["msg"], resource_type=resource_type, resource_id=_str_id(resource), field=loc
        ) from None
    except RecursionError:
        raise InputError(
            "the resource is nested too deeply to validate (an extension or value chain)",
            resource_type=resource_type, resource_id=_str_id(resource)
        ) from None
    except (TypeError, ValueError) as exc:  # defensive: a model that raises plainly
        raise InputError(
            str(exc), resource_type=resource_type, resource_id=_str_id(resource)
        ) from None


def _json_types(resource: Mapping[str, Any], resource_type: str) -> None:
    """Refuse what FHIR JSON forbids but the strict models coerce, in the fields
    the facts read: a decimal written as a string (``"3.2"``), a boolean as a
    string (``"true"``). Lean intake refuses these in its models."""
    places: list[tuple[str, Any]] = [("", resource)]
    components = resource.get("component")
    if isinstance(components, list):
        places += [(f"component.{i}.", c) for i, c in enumerate(components)]
    for prefix, place in places:
        if not isinstance(place, Mapping):
            continue
        quantity = place.get("valueQuantity")
        value = quantity.get("value") if isinstance(quantity, Mapping) else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"value {value!r} is not a JSON number", resource_type=resource_type,
                             resource_id=_str_id(resource), field=f"{prefix}valueQuantity.value")
        flag = place.get("valueBoolean")
        if flag is not None and not isinstance(flag, bool):
            raise InputError(f"valueBoolean {flag!r} is not a JSON boolean",
                             resource_type=resource_type, resource_id=_str_id(resource),
                             field=f"{prefix}valueBoolean")


def read_record(record: Any, *, mode: str = "strict") -> Record:
    """Read one patient's record; raise :class:`InputError` on bad input."""
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
    lean = mode == "lean"
    if lean:
        from cdss import lean as lean_intake

        source: Iterable[tuple[int, Any, str | None]] = lean_intake.entries(record)
    else:
        source = _entries(record)
    patients: list[tuple[Mapping[str, Any], str | None]] = []
    used: list[Mapping[str, Any]] = []
    skipped: Counter[str] = Counter()
    for pos, resource, full_url in source:
        if not isinstance(resource, Mapping):
            raise InputError(
                f"item {pos} is not a JSON object but {type(resource).__name__}",
                field="resourceType",
            )
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise InputError(
                "missing or non-text resourceType",
                resource_id=_str_id(resource),
                field="resourceType",
            )
        if rtype not in USED_TYPES:
            known = lean_intake.is_resource_type(rtype) if lean else (
                _model_class(rtype) is not None)
            if rtype == "Bundle" or not known:
                raise InputError(
                    f"{rtype!r} is not a FHIR R4 resource type cdss can read here",
                    resource_type=rtype,
                    resource_id=_str_id(resource),
                    field="resourceType",
                )
            skipped[rtype] += 1
            continue
        if not lean:  # lean entries arrive validated
            _validate(resource, rtype)
            _json_types(resource, rtype)
        if rtype == "Patient":
            patients.append((resource, full_url))
        else:
            used.append(resource)

    patient, patient_refs = _the_patient(patients)
    refs: set[str] = set()
    for resource in used:
        rtype = resource["resourceType"]
        fname = _SUBJECT_FIELD[rtype]
        subject = resource.get(fname)
        ref = subject.get("reference") if isinstance(subject, Mapping) else None
        if not isinstance(ref, str) or not ref:
            raise InputError(
                "no patient reference",
                resource_type=rtype,
                resource_id=_str_id(resource),
                field=f"{fname}.reference",
            )
        if patient_refs and ref not in patient_refs:
            raise InputError(
                f"refers to {ref!r}, not to the record's patient; a record holds one patient",
                resource_type=rtype,
                resource_id=_str_id(resource),
                field=f"{fname}.reference",
            )
        refs.add(ref)
    if not patient_refs and len(refs) > 1:
        raise InputError(f"the record refers to {len(refs)} patients: {sorted(refs)}; one expected")
    patient_ref: str | None
    if patient is not None:
        patient_ref = f"Patient/{_str_id(patient)}"
    else:
        patient_ref = next(iter(refs)) if refs else None
    return Record(
        patient=patient, patient_ref=patient_ref, resources=tuple(used), skipped=dict(skipped)
    )


def _the_patient(
    patients: list[tuple[Mapping[str, Any], str | None]],
) -> tuple[Mapping[str, Any] | None, frozenset[str]]:
    ids = {_str_id(p) for p, _ in patients}
    if len(ids) > 1:
        raise InputError(
            f"the record holds {len(ids)} patients ({sorted(str(i) for i in ids)}); one expected",
            resource_type="Patient",
            resource_id=sorted(str(i) for i in ids)[1],
            field="id",
        )
    if not patients:
        return None, frozenset()
    patient = patients[0][0]
    refs = {f"Patient/{_str_id(patient)}"}
    refs.update(url for _, url in patients if url)
    return patient, frozenset(refs)
