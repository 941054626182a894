"""Intake: FHIR R4 JSON in, one patient's validated resources out.

Accepts a Bundle (collection, searchset, transaction, batch, document), a
single resource, a list of resources, or JSON text/bytes of any of those. In
``strict`` mode every resource of a type the facts use is validated with
fhir.resources (R4B models, which read R4 JSON for these resource types);
resource types the facts do not use are counted and skipped, never fatal.
In ``lean`` mode (:mod:`cdss.intake._lean`) only the fields the facts read are
validated, straight from JSON bytes; both modes give the same facts on valid
input.

Everything that can go wrong with the input becomes an :class:`InputError`
naming the resource type, id and field. With ``on_invalid="leave-out"`` a
resource that cannot be read (other than the Patient) is left out of the
record with the reason (:class:`LeftOut`) instead, so that one bad resource
never costs a patient the whole assessment; a second or an unreadable Patient
still refuses the record. A dateTime with a time but no time zone (common in
real feeds, invalid FHIR) is read in the configured time zone, with a note.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, tzinfo
from functools import cache
from typing import Any

import orjson
from pydantic import ValidationError

from cdss.errors import InputError, InvalidArgument
from cdss.intake import _guard
from cdss.intake import _lean as lean_intake
from cdss.intake._shapes import (
    MODES,
    ON_INVALID,
    USED_TYPES,
    LeftOut,
    Record,
    record_entries,
    reference_path,
    str_id,
    zone,
)

__all__ = ["read_record"]

# A FHIR dateTime with a time but no zone (invalid FHIR, common in feeds).
_NAIVE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
# The same, as a JSON string anywhere in a resource's serialised form.
_NAIVE_TIME_TEXT = re.compile(rb'"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?"')
_TIME_KEYS = frozenset({"issued", "recordedDate", "authoredOn", "start", "end", "dateAsserted",
                        "lastOccurrence", "lastUpdated", "recorded", "date"})
_SUBJECT_FIELD = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "AllergyIntolerance": "patient",
}


def _localized(resource: Mapping[str, Any], tz: tzinfo,
               notes: list[tuple[str, str, str]]) -> Mapping[str, Any]:
    """``resource`` with every dateTime that has a time but no zone read in
    ``tz`` (a copy, only when something changed), each noted."""
    ref = f"{resource.get('resourceType')}/{resource.get('id', '?')}"

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Mapping):
            changed = {}
            for key, value in node.items():
                here = f"{path}.{key}" if path else str(key)
                if (isinstance(value, str) and _NAIVE_TIME.match(value)
                        and (key in _TIME_KEYS or key.endswith(("DateTime", "Instant")))):
                    try:
                        local = datetime.fromisoformat(value).replace(tzinfo=tz)
                    except ValueError:
                        continue  # not a calendar time: validation names it
                    changed[key] = local.isoformat()
                    notes.append(("no-time-zone", ref,
                                  f"{here} {value!r} has no time zone; read as {tz} "
                                  f"({changed[key]})"))
                elif isinstance(value, (Mapping, list)):
                    new = walk(value, here)
                    if new is not value:
                        changed[key] = new
            return {**node, **changed} if changed else node
        if isinstance(node, list):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
            return items if any(a is not b for a, b in zip(items, node, strict=True)) else node
        return node

    try:  # a look at the whole resource in C first: most hold no such time
        if not _NAIVE_TIME_TEXT.search(orjson.dumps(resource)):
            return resource
    except (TypeError, ValueError):
        pass  # what orjson will not write (a huge integer): walk it
    try:
        result = walk(resource, "")
    except RecursionError:
        return resource  # validation refuses it, naming the resource
    return result if isinstance(result, Mapping) else resource


@cache
def _model_class(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


def _validate(resource: Mapping[str, Any], resource_type: str) -> None:
    model = _model_class(resource_type)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise InputError(
            err["msg"], resource_type=resource_type, resource_id=str_id(resource), field=loc
        ) from None
    except RecursionError:
        raise InputError(
            "the resource is nested too deeply to validate (an extension or value chain)",
            resource_type=resource_type, resource_id=str_id(resource)
        ) from None
    except (TypeError, ValueError) as exc:  # defensive: a model that raises plainly
        raise InputError(
            str(exc), resource_type=resource_type, resource_id=str_id(resource)
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
                             resource_id=str_id(resource), field=f"{prefix}valueQuantity.value")
        flag = place.get("valueBoolean")
        if flag is not None and not isinstance(flag, bool):
            raise InputError(f"valueBoolean {flag!r} is not a JSON boolean",
                             resource_type=resource_type, resource_id=str_id(resource),
                             field=f"{prefix}valueBoolean")


def read_record(record: Any, *, mode: str = "strict", on_invalid: str = "refuse",
                timezone: str | tzinfo = "UTC",
                relevant: Callable[[Mapping[str, Any]], bool] | None = None,
                unmapped: Callable[[Mapping[str, Any]], None] | None = None,
                reduced: Sequence[Mapping[str, Any]] = ()) -> Record:
    """Read one patient's record.

    ``on_invalid="refuse"`` raises :class:`InputError` on the first resource
    that cannot be read; ``"leave-out"`` leaves such a resource out and lists
    it in :attr:`Record.left_out` (the Patient is never left out: a record whose
    Patient cannot be read is refused). ``timezone`` is the zone of dateTimes
    written with a time and no zone.

    ``relevant`` (a cheap look at a resource's codes: can it contribute to a
    fact?) spares the validation of resources that cannot: they are kept as
    they are, so that the facts note their codes as unmapped, and only their
    patient reference is checked. The Patient is always validated.
    ``unmapped`` takes those resources instead of the Record (a tally of
    their codes: the facts need nothing else of them), once their patient
    reference has been checked, in input order.

    Lean intake validates each resource the facts can use from the record
    parsed once (orjson, by the bounds check): measured faster than one
    ``validate_json`` pass over the bytes, which also validated the resources
    no rule reads. The reference path (:func:`~cdss.intake._shapes.reference_path`)
    keeps that one pass, and ignores ``unmapped``.

    ``reduced`` are more of the record's resources, outside it, known to
    contribute nothing (a cohort screen's spill reduced them, having checked
    their types and intake's bounds): their patient reference is checked and
    they go to ``unmapped`` as those of the record that contribute nothing do.
    """
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
    if on_invalid not in ON_INVALID:
        raise InvalidArgument(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
    tz = zone(timezone)
    lean = mode == "lean"
    # Bounds first (nesting, code lengths, numbers, Unicode): what breaks them
    # outside every resource refuses the record here; inside one, it is that
    # resource's error below.
    parsed, hostile = _guard.parse_and_check(record)
    reference = reference_path()
    if reference:
        unmapped = None
    # (position, resource, fullUrl, validated already)
    source: Iterable[tuple[int, Any, str | None, bool]]
    if lean and reference and not hostile:
        source = lean_intake.entries(record)
    else:
        if lean:
            lean_intake.check_bundle_type(parsed)
        source = _unvalidated(parsed)
    known_type = lean_intake.is_resource_type if lean else _is_model_type
    patients: list[tuple[Mapping[str, Any], str | None]] = []
    # (resource, can it become a fact?) in input order
    used: list[tuple[Mapping[str, Any], bool]] = []
    skipped: Counter[str] = Counter()
    left_out: list[LeftOut] = []
    notes: list[tuple[str, str, str]] = []

    def leave_out(exc: InputError, fallback: str, *, patient: bool = False) -> None:
        if patient or on_invalid == "refuse":
            raise exc
        left_out.append(LeftOut.from_error(exc, fallback))

    for pos, resource, full_url, validated in source:
        if hostile and pos in hostile:
            error = hostile[pos]
            leave_out(error, f"item {pos}", patient=error.resource_type == "Patient")
            continue
        rtype = resource.get("resourceType") if type(resource) is dict else None
        if type(rtype) is not str or not rtype:
            try:
                rtype = _resource_type(pos, resource)
            except InputError as exc:
                leave_out(exc, f"item {pos}")
                continue
        if rtype not in USED_TYPES:
            if rtype in skipped:  # a type already known
                skipped[rtype] += 1
                continue
            if rtype == "Bundle" or not known_type(rtype):
                leave_out(InputError(
                    f"{rtype!r} is not a FHIR R4 resource type cdss can read here",
                    resource_type=rtype, resource_id=str_id(resource), field="resourceType",
                ), f"item {pos}")
                continue
            skipped[rtype] += 1
            continue
        if relevant is not None and rtype != "Patient" and not validated \
                and not relevant(resource):
            used.append((resource, False))  # codes only: noted as unmapped, never a fact
            continue
        try:
            if not validated:
                resource = _localized(resource, tz, notes)
                if lean:
                    resource = lean_intake.validate_resource(resource)
                else:
                    _validate(resource, rtype)
                    _json_types(resource, rtype)
        except InputError as exc:
            leave_out(exc, f"{rtype}/{str_id(resource) or '?'}", patient=rtype == "Patient")
            continue
        if rtype == "Patient":
            patients.append((resource, full_url))
        else:
            used.append((resource, True))

    used.extend((resource, False) for resource in reduced)
    patient, patient_refs = _the_patient(patients)
    refs: set[str] = set()
    kept: list[Mapping[str, Any]] = []
    for resource, mapped in used:
        rtype = resource["resourceType"]
        fname = _SUBJECT_FIELD[rtype]
        subject = resource.get(fname)
        ref = subject.get("reference") if type(subject) is dict or isinstance(
            subject, Mapping) else None
        if not isinstance(ref, str) or not ref:
            leave_out(InputError("no patient reference", **_where(resource, rtype, fname)),
                      f"{rtype}/?")
            continue
        if patient_refs and ref not in patient_refs:
            # another patient's data: the record is wrong as a whole (never left out)
            raise InputError(
                f"refers to {ref!r}, not to the record's patient; a record holds one patient",
                **_where(resource, rtype, fname))
        refs.add(ref)
        if mapped or unmapped is None:
            kept.append(resource)
        else:
            unmapped(resource)
    if not patient_refs and len(refs) > 1:
        raise InputError(f"the record refers to {len(refs)} patients: {sorted(refs)}; one expected")
    patient_ref: str | None
    if patient is not None:
        patient_ref = f"Patient/{str_id(patient)}"
    else:
        patient_ref = next(iter(refs)) if refs else None
    return Record(
        patient=patient, patient_ref=patient_ref, resources=tuple(kept), skipped=dict(skipped),
        left_out=tuple(left_out), notes=tuple(notes),
    )


def _is_model_type(resource_type: str) -> bool:
    return _model_class(resource_type) is not None


def _unvalidated(record: Any) -> Iterable[tuple[int, Any, str | None, bool]]:
    for pos, resource, full_url in record_entries(record):
        yield pos, resource, full_url, False


def _where(resource: Mapping[str, Any], rtype: str, fname: str) -> dict[str, Any]:
    return {"resource_type": rtype, "resource_id": str_id(resource),
            "field": f"{fname}.reference"}


def _resource_type(pos: int, resource: Any) -> str:
    if not isinstance(resource, Mapping):
        raise InputError(
            f"item {pos} is not a JSON object but {type(resource).__name__}",
            field="resourceType",
        )
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InputError(
            "missing or non-text resourceType",
            resource_id=str_id(resource),
            field="resourceType",
        )
    return rtype


def _the_patient(
    patients: list[tuple[Mapping[str, Any], str | None]],
) -> tuple[Mapping[str, Any] | None, frozenset[str]]:
    ids = {str_id(p) for p, _ in patients}
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
    refs = {f"Patient/{str_id(patient)}"}
    refs.update(url for _, url in patients if url)
    return patient, frozenset(refs)
