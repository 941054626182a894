"""A screen's results as FHIR Bulk Data NDJSON (``cdss screen --format fhir``).

Each assessed patient's Assessment becomes the resources of
:func:`cdss.outputs.fhir.to_fhir_bundle`, written without the Bundle: one
NDJSON file per resource type in the screen's ``fhir/`` folder, and a Bulk
Data-style ``manifest.json`` listing them (``url`` relative to the manifest).

In a Bundle the resources point at each other by ``urn:uuid:`` fullUrls,
which mean nothing outside it; here every resource id gets a prefix derived
from the patient's key (:func:`patient_prefix`), so that ids are unique across
the cohort, and every ``urn:uuid:`` reference becomes the relative reference
``Type/id`` of the resource it named, which is in these files. References to
the patient's own resources (``Patient/p1``, ``Observation/o1``) are kept.

Workers write each partition's resources as ``key<TAB>type<TAB>json`` lines
in patient order (:func:`partition_lines`); :func:`write_bulk` merges them
into the files, so the output is sorted by patient and, within a patient, in
the Bundle's order: the same screen gives the same bytes, resumed or not.

The manifest has the fields a Bulk Data (STU2, STU3) export manifest requires:
``transactionTime`` is the screen's ``as_of``; ``request``, in an export the
URL of its kick-off request, is here (a screen has no HTTP request) the URN
``urn:cdss:screen:<ruleset id>@<version>:<as_of>`` (:func:`screen_request`,
``as_of`` the same instant as ``transactionTime``), naming what was asked
for; ``requiresAccessToken`` is false (local files); ``output`` lists the
files with their counts; ``error`` is empty (a patient's error is a row of
the screen's ``errors.ndjson``, not a FHIR resource). Every field comes from
the screen's arguments, never the clock, so a resumed screen writes the
same manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from cdss.outputs.fhir import fhir_instant, to_fhir_bundle

__all__ = ["FHIR_FOLDER", "MANIFEST", "RESOURCE_TYPES", "bulk_resources", "partition_lines",
           "patient_prefix", "remove_bulk", "screen_request", "write_bulk"]

#: The folder of a screen's FHIR output, inside the screen's output folder.
FHIR_FOLDER = "fhir"
#: The Bulk Data manifest's name inside :data:`FHIR_FOLDER`.
MANIFEST = "manifest.json"
#: Every resource type the output can hold, in the manifest's order.
RESOURCE_TYPES = ("GuidanceResponse", "Parameters", "OperationOutcome", "DetectedIssue",
                  "ServiceRequest", "CarePlan", "Provenance")
_URN = "urn:uuid:"


def screen_request(ruleset: str, as_of: str) -> str:
    """The manifest's ``request`` for a screen with ``ruleset`` (``id@version``)
    at ``as_of`` (ISO date-time): ``urn:cdss:screen:<id>@<version>:<instant>``,
    the instant as in ``transactionTime`` (``2026-03-01T00:00:00Z``)."""
    return f"urn:cdss:screen:{ruleset}:{fhir_instant(datetime.fromisoformat(as_of))}"


def patient_prefix(key: str) -> str:
    """The id prefix of one patient's resources: 16 hex digits of the
    sha256 of the patient's key (stable, and no identifier in the ids)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _relinked(node: Any, targets: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _relinked(v, targets) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in targets and "resourceType" not in node:
            out["reference"] = targets[ref]
        return out
    if isinstance(node, list):
        return [_relinked(v, targets) for v in node]
    return node


def bulk_resources(key: str, assessment: Any) -> list[dict[str, Any]]:
    """The resources of ``assessment`` (the patient ``key``'s) for the Bulk
    Data files: ids prefixed with :func:`patient_prefix`, ``urn:uuid:``
    references turned into ``Type/id``; in the Bundle's order."""
    bundle = to_fhir_bundle(assessment)
    prefix = patient_prefix(key)
    targets: dict[str, str] = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        targets[entry["fullUrl"]] = f"{res['resourceType']}/{prefix}-{res['id']}"
    out = []
    for entry in bundle["entry"]:
        res = _relinked(entry["resource"], targets)
        res["id"] = f"{prefix}-{res['id']}"
        out.append(res)
    return out


def partition_lines(key: str, assessment: Any) -> Iterator[bytes]:
    """One patient's lines of a partition's FHIR file: ``type<TAB>json``
    (the caller writes the key first)."""
    for res in bulk_resources(key, assessment):
        yield res["resourceType"].encode() + b"\t" + orjson.dumps(res)


def remove_bulk(out_dir: Path) -> None:
    """Remove an earlier screen's FHIR files (only those this module writes)."""
    folder = out_dir / FHIR_FOLDER
    for name in [MANIFEST, *(f"{t}.ndjson" for t in RESOURCE_TYPES)]:
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def write_bulk(out_dir: Path, lines: Iterable[tuple[str, bytes]], as_of: str,
               ruleset: str) -> dict[str, int]:
    """Write the FHIR files and the manifest of a screen with ``ruleset``
    (``id@version``) at ``as_of`` from merged ``(key, "type<TAB>json")``
    lines; return the resources written by type. Each file is written under
    a temporary name and renamed when complete, the manifest last."""
    folder = out_dir / FHIR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[str, IO[bytes]] = {}
    counts: dict[str, int] = {}
    try:
        for _, payload in lines:
            rtype, _, resource = payload.partition(b"\t")
            name = rtype.decode()
            if name not in RESOURCE_TYPES:
                raise ValueError(f"unexpected resource type {name!r} in the FHIR output")
            handle = handles.get(name)
            if handle is None:
                handle = handles[name] = (folder / f".{name}.ndjson.tmp").open(
                    "wb", buffering=1 << 20)
            handle.write(resource + b"\n")
            counts[name] = counts.get(name, 0) + 1
        for handle in handles.values():
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        for handle in handles.values():
            handle.close()
    for name in RESOURCE_TYPES:
        target = folder / f"{name}.ndjson"
        if name in handles:
            os.replace(folder / f".{name}.ndjson.tmp", target)
        else:
            target.unlink(missing_ok=True)
    manifest = {
        "transactionTime": fhir_instant(datetime.fromisoformat(as_of)),
        "request": screen_request(ruleset, as_of),
        "requiresAccessToken": False,
        "output": [{"type": name, "url": f"{name}.ndjson", "count": counts[name]}
                   for name in RESOURCE_TYPES if name in counts],
        "error": [],
    }
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, folder / MANIFEST)
    return {name: counts[name] for name in RESOURCE_TYPES if name in counts}
