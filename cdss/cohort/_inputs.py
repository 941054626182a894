"""Cohort input: find the files, stream their resources, spill them by patient.

A cohort arrives as FHIR Bulk Data NDJSON (several files per resource type,
lines in any order, optionally gzip-compressed), as a bulk-export folder with
its manifest, or as a folder of Bundles. Screening needs each patient's
resources together, and the cohort may not fit in memory, so the first pass
streams every resource once and appends it to one of ``N`` partition files
chosen by a stable hash of its patient reference (blake2b: the same partition
in every process and on every machine, unlike Python's ``hash()``). A
partition then holds whole patients, and memory is bounded by a partition,
not by the cohort.

A spilled line is ``key, type, file index, line, alias, JSON`` separated by tabs:
``key`` is the patient reference (``Patient/<id>``), ``alias`` another
spelling of it the resource used (an absolute URL, a Bundle's ``urn:uuid``
fullUrl) so that intake can still match the resource to its Patient. Resource
types the facts do not use are spilled as a stub holding only their type and
id (intake only counts them).

Nothing is dropped silently: a line that cannot be attributed to a patient (a
truncated line, a resource without a subject, an unknown resource type
without one) becomes a resource error row naming its file and line; a file
that is not NDJSON becomes a file error row; resources that belong to no
patient (Organization, Practitioner, Medication...) are counted.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import orjson

from cdss.errors import CohortError
from cdss.intake import RESOURCE_TYPES

__all__ = [
    "InputFile",
    "SpillStats",
    "discover",
    "partition_of",
    "spill",
]

#: The reference field that names the patient, per resource type the facts use.
SUBJECT_FIELD = {
    "Observation": "subject",
    "Condition": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "AllergyIntolerance": "patient",
}
_USED = frozenset({"Patient", *SUBJECT_FIELD})
_OTHER_SUBJECT_FIELDS = ("subject", "patient", "beneficiary")
_PATIENT_REF = re.compile(r"^(?:.*/)?Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")
_OTHER_REF = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/[^/]+(?:/_history/[^/]*)?$")
#: Lines longer than this are refused (and skipped) rather than read into memory.
MAX_LINE = 64 * 1024 * 1024
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
_JSON_SUFFIXES = (".json", ".json.gz")


@dataclass(frozen=True)
class InputFile:
    """One input file: ``ndjson`` (one resource per line) or ``json`` (a
    Bundle, a resource or a list of them)."""

    path: Path
    kind: str
    label: str

    def fingerprint(self) -> dict[str, Any]:
        """Path, size and modification time: what ``--resume`` compares."""
        stat = self.path.stat()
        return {"path": str(self.path), "kind": self.kind, "bytes": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}


# --------------------------------------------------------------------------- #
# Discovery
# --------------------------------------------------------------------------- #
def _is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith(_NDJSON_SUFFIXES)


def _is_json(path: Path) -> bool:
    return path.name.lower().endswith(_JSON_SUFFIXES)


def _load_manifest(path: Path) -> Mapping[str, Any] | None:
    """The manifest in ``path``, or None when the file is not a manifest."""
    try:
        if path.stat().st_size > 50 * 1024 * 1024:
            return None
        data = orjson.loads(_read_all(path))
    except (OSError, orjson.JSONDecodeError, EOFError, zlib.error, gzip.BadGzipFile):
        return None
    if isinstance(data, Mapping) and "resourceType" not in data and isinstance(
            data.get("output"), list):
        return data
    return None


def _manifest_files(path: Path, manifest: Mapping[str, Any]) -> list[InputFile]:
    folder = path.parent
    files = []
    for i, item in enumerate(manifest["output"]):
        url = item.get("url") if isinstance(item, Mapping) else None
        if not isinstance(url, str) or not url:
            raise CohortError(f"{path}: output[{i}] has no url")
        parsed = urlparse(url)
        if parsed.scheme == "file":
            target = Path(unquote(parsed.path))
        elif parsed.scheme in ("http", "https"):
            target = folder / Path(unquote(parsed.path)).name
        else:
            target = folder / unquote(url)
        if not target.is_file():
            raise CohortError(f"{path}: output[{i}] names {url!r}, but {target} does not exist")
        files.append(InputFile(path=target.resolve(), kind="ndjson", label=_label(target)))
    return files


def _label(path: Path) -> str:
    return str(path)


def discover(inputs: Sequence[str | Path]) -> list[InputFile]:
    """The input files of ``inputs`` (files, bulk-export folders, manifests,
    folders of Bundles), in a stable order, each file once.

    Raises :class:`CohortError` for a missing path, a folder with nothing to
    read, or a manifest naming a missing file.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise CohortError("no input given: name NDJSON files, a bulk-export folder or a "
                          "folder of Bundles")
    found: list[InputFile] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise CohortError(f"{path}: no such file or folder")
        if path.is_dir():
            found += _folder_files(path)
        elif _is_json(path) and (manifest := _load_manifest(path)) is not None:
            found += _manifest_files(path, manifest)
        elif _is_json(path):
            found.append(InputFile(path=path.resolve(), kind="json", label=_label(path)))
        else:
            found.append(InputFile(path=path.resolve(), kind="ndjson", label=_label(path)))
    seen: set[Path] = set()
    unique = []
    for input_file in found:
        if input_file.path not in seen:
            seen.add(input_file.path)
            unique.append(input_file)
    return unique


def _folder_files(folder: Path) -> list[InputFile]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    ndjson = [p for p in files if _is_ndjson(p)]
    jsons = [p for p in files if _is_json(p)]
    if ndjson:
        manifests = [(p, m) for p in jsons if p.stat().st_size < 50 * 1024 * 1024
                     and (m := _load_manifest(p)) is not None]
        if manifests:
            if len(manifests) > 1:
                names = ", ".join(p.name for p, _ in manifests)
                raise CohortError(f"{folder}: more than one export manifest ({names}); name "
                                  "the one to screen")
            return _manifest_files(*manifests[0])
        return [InputFile(path=p.resolve(), kind="ndjson", label=_label(p)) for p in ndjson]
    if jsons:
        return [InputFile(path=p.resolve(), kind="json", label=_label(p)) for p in jsons]
    raise CohortError(f"{folder}: no NDJSON (*.ndjson, *.ndjson.gz) or Bundle (*.json) files "
                      "to screen")


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #
def _open(path: Path) -> IO[bytes]:
    """The file, decompressed when it is gzip (recognised by its magic bytes)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":  # GzipFile opens (and closes) the file itself
        return gzip.GzipFile(filename=str(path), mode="rb")  # type: ignore[return-value]
    return path.open("rb")


def _raw_position(handle: IO[bytes]) -> int:
    """How far into the file on disk a reader is (compressed bytes for gzip)."""
    raw = getattr(handle, "fileobj", None) or handle
    try:
        return int(raw.tell())
    except (OSError, ValueError):
        return 0


def _read_all(path: Path) -> bytes:
    with _open(path) as handle:
        return handle.read()


def _lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, line)``; ``None`` for a line longer than MAX_LINE (skipped)."""
    number = 0
    while True:
        line = handle.readline(MAX_LINE)
        if not line:
            return
        number += 1
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = handle.readline(MAX_LINE)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


# --------------------------------------------------------------------------- #
# Attribution and spilling
# --------------------------------------------------------------------------- #
def partition_of(key: str, partitions: int) -> int:
    """The partition of a patient key: a stable hash (blake2b), the same in
    every process, run and machine."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def patient_key(reference: str, urns: Mapping[str, str] | None = None) -> str | None:
    """``Patient/<id>`` for a reference to a patient (relative, absolute or a
    Bundle's ``urn:uuid`` fullUrl); an unresolved ``urn:`` reference stays as
    it is; None for a reference to anything else."""
    if urns and reference in urns:
        return urns[reference]
    if reference.startswith("urn:"):
        return reference
    match = _PATIENT_REF.match(reference)
    return f"Patient/{match.group(1)}" if match else None


def _patient_id_key(patient: Mapping[str, Any]) -> str | None:
    """The key a Patient's resources refer to it by, or None when it has none.

    A Patient whose ``id`` is a number (``"id": 123``, which FHIR does not
    allow: an id is text) still has a key, ``Patient/123``, the one its
    resources name: it is spilled with them, so that intake refuses the
    patient's record as :func:`cdss.evaluate` does (a patient error row tied
    to the patient, no Assessment), rather than assessing the other resources
    as if the patient's age and sex were unknown.
    """
    pid = patient.get("id")
    if isinstance(pid, (int, float)) and not isinstance(pid, bool):
        pid = str(pid)
    if not isinstance(pid, str) or not _PATIENT_REF.match(f"Patient/{pid}"):
        return None
    return f"Patient/{pid}"


@dataclass
class SpillStats:
    """What the spill pass read: counts by outcome, errors by kind, bytes."""

    lines: int = 0
    blank: int = 0
    items: int = 0
    attributed: int = 0
    not_patient_specific: int = 0
    resource_errors: int = 0
    file_errors: int = 0
    bytes_read: int = 0
    types: Counter[str] = field(default_factory=Counter)
    errors_by_kind: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines, "blank": self.blank, "resources": self.items,
            "attributed": self.attributed,
            "not_patient_specific": self.not_patient_specific,
            "resource_errors": self.resource_errors, "file_errors": self.file_errors,
            "bytes_read": self.bytes_read, "types": dict(sorted(self.types.items())),
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
        }


class _Spiller:
    """Writes attributed resources to partition files and error rows to a file."""

    def __init__(self, folder: Path, partitions: int, errors: IO[bytes],
                 on_bytes: Any = None) -> None:
        self.folder = folder
        self.partitions = partitions
        self.handles: dict[int, IO[bytes]] = {}
        self.errors = errors
        self.stats = SpillStats()
        self.on_bytes = on_bytes
        self.handle: IO[bytes] | None = None
        self.reported = 0
        self.unreported = 0
        # the last key's partition and bytes: a file often holds one patient's lines in a row
        self.last: tuple[str, int, bytes] = ("", -1, b"")

    def advance(self, n: int) -> None:
        """Count ``n`` bytes read; every 4 MiB, tell the progress bar how far
        into the file on disk the reader is."""
        self.stats.bytes_read += n
        self.unreported += n
        if self.on_bytes is not None and self.unreported >= 1 << 22 and self.handle:
            position = _raw_position(self.handle)
            self.on_bytes(position - self.reported)
            self.reported = position
            self.unreported = 0

    def file_done(self, size: int) -> None:
        """Tell the progress bar the rest of a file was read."""
        if self.on_bytes is not None:
            self.on_bytes(size - self.reported)
        self.handle = None
        self.reported = self.unreported = 0

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def write(self, key: str, rtype: str, file_index: int, number: int, alias: str,
              payload: bytes) -> None:
        last_key, part, encoded = self.last
        if key != last_key or part < 0:
            part, encoded = partition_of(key, self.partitions), key.encode()
            self.last = (key, part, encoded)
        handle = self.handles.get(part)
        if handle is None:
            handle = self.handles[part] = (self.folder / f"p{part:05d}.tsv").open(
                "ab", buffering=1 << 16)
        handle.write(b"\t".join((encoded, rtype.encode(), str(file_index).encode(),
                                 str(number).encode(), alias.encode(), payload)) + b"\n")
        self.stats.attributed += 1
        self.stats.types[rtype] += 1

    def error(self, kind: str, reason: str, label: str, *, line: int | None = None,
              entry: int | None = None, resource: Mapping[str, Any] | None = None,
              file_level: bool = False) -> None:
        row: dict[str, Any] = {"kind": "file" if file_level else "resource", "error": kind,
                               "reason": reason, "file": label}
        if line is not None:
            row["line"] = line
        if entry is not None:
            row["entry"] = entry
        if resource is not None:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            row["resource_type"] = rtype if isinstance(rtype, str) else None
            row["resource_id"] = rid if isinstance(rid, str) else None
        self.errors.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n")
        if file_level:
            self.stats.file_errors += 1
        else:
            self.stats.resource_errors += 1
        self.stats.errors_by_kind[kind] += 1

    # -- one resource ----------------------------------------------------------
    def resource(self, obj: Any, raw: bytes | None, file_index: int, label: str, *,
                 line: int | None = None, entry: int | None = None,
                 full_url: str | None = None, urns: Mapping[str, str] | None = None) -> None:
        number = line if line is not None else (entry or 0)
        where: dict[str, Any] = {"line": line, "entry": entry}
        self.stats.items += 1
        if type(obj) is not dict and not isinstance(obj, Mapping):  # dict: orjson's, fast
            self.error("not-an-object", f"a JSON {type(obj).__name__}, not a resource object",
                       label, **where)
            return
        rtype = obj.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            self.error("no-resource-type", "no resourceType", label, resource=obj, **where)
            return
        if rtype == "Bundle":  # a container, not a resource of a patient
            self.stats.items -= 1
            self.bundle(obj, file_index, label, line=line)
            return
        if rtype == "Patient":
            key = _patient_id_key(obj)
            if key is None:
                self.error("no-patient-id", "a Patient without a valid id cannot be matched "
                           "to its resources", label, resource=obj, **where)
                return
            alias = full_url if full_url and full_url != key else ""
            self.write(key, rtype, file_index, number, alias, raw or orjson.dumps(obj))
            return
        used = rtype in _USED
        fields = (SUBJECT_FIELD[rtype],) if used else _OTHER_SUBJECT_FIELDS
        reference = None
        for name in fields:
            value = obj.get(name)
            if (type(value) is dict or isinstance(value, Mapping)) and isinstance(
                    value.get("reference"), str):
                reference = value["reference"]
                break
        known = rtype in RESOURCE_TYPES
        if reference is None:
            if used:
                self.error("no-patient-reference", f"{rtype} has no {fields[0]}.reference, so "
                           "it belongs to no patient", label, resource=obj, **where)
            elif not known:
                self.error("unknown-resource-type", f"{rtype!r} is not a FHIR R4 resource "
                           "type and names no patient", label, resource=obj, **where)
            else:
                self.stats.not_patient_specific += 1
            return
        found = patient_key(reference, urns)
        if found is None or "\t" in found or "\n" in found:
            if used:
                self.error("not-a-patient-reference", f"{rtype} refers to {reference!r}, not "
                           "to a patient", label, resource=obj, **where)
            else:
                self.stats.not_patient_specific += 1
            return
        alias = reference if reference != found else ""
        if used or not known:  # unknown types go to the patient, whose row becomes an error
            payload = raw if raw is not None else orjson.dumps(obj)
        else:
            rid = obj.get("id")
            payload = orjson.dumps({"resourceType": rtype, **({"id": rid} if isinstance(
                rid, str) else {})})
        self.write(found, rtype, file_index, number, alias, payload)

    def bundle(self, bundle: Mapping[str, Any], file_index: int, label: str, *,
               line: int | None = None) -> None:
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            self.error("bad-bundle", "Bundle.entry is not a list", label, line=line,
                       resource=bundle)
            return
        urns: dict[str, str] = {}
        for item in entries:
            if not isinstance(item, Mapping):
                continue
            res, url = item.get("resource"), item.get("fullUrl")
            if (isinstance(res, Mapping) and res.get("resourceType") == "Patient"
                    and isinstance(url, str) and (key := _patient_id_key(res)) is not None):
                urns[url] = key
        for i, item in enumerate(entries):
            if not isinstance(item, Mapping) or "resource" not in item:
                self.error("bad-bundle", "Bundle entry has no resource", label, line=line,
                           entry=i)
                continue
            url = item.get("fullUrl")
            self.resource(item["resource"], None, file_index, label,
                          line=line, entry=i if line is None else None,
                          full_url=url if isinstance(url, str) else None, urns=urns)

    # -- one file ----------------------------------------------------------------
    def ndjson_file(self, path: Path, file_index: int, label: str) -> None:
        failures: list[tuple[int, str]] = []
        parsed_any = False
        try:
            with _open(path) as handle:
                self.handle = handle
                for number, line in _lines(handle):
                    self.stats.lines += 1
                    if line is None:
                        self.stats.items += 1
                        self.error("line-too-long", f"line longer than {MAX_LINE} bytes",
                                   label, line=number)
                        continue
                    self.advance(len(line))
                    if not line.strip():
                        self.stats.blank += 1
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        if not parsed_any:
                            failures.append((number, str(exc)))
                            if len(failures) >= 2:
                                self._not_ndjson(path, label, failures)
                                return
                            continue
                        self._malformed(label, number, str(exc))
                        continue
                    if not parsed_any:
                        parsed_any = True
                        for early, message in failures:
                            self._malformed(label, early, message)
                        failures.clear()  # reported: not again at the end of the file
                    self.resource(obj, line.rstrip(b"\r\n"), file_index, label, line=number)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.error("unreadable-file", f"reading stopped: {exc}", label, file_level=True)
            return
        for early, message in failures:  # a file of one line that is not JSON
            self._malformed(label, early, message)

    def _malformed(self, label: str, number: int, message: str) -> None:
        self.stats.items += 1
        self.error("malformed-json", f"not valid JSON ({message}); a truncated or damaged "
                   "line", label, line=number)

    def _not_ndjson(self, path: Path, label: str, failures: list[tuple[int, str]]) -> None:
        self.error("not-ndjson", f"not NDJSON: lines {failures[0][0]} and {failures[1][0]} are "
                   f"not JSON ({failures[0][1]}); the file was skipped", label,
                   file_level=True)

    def json_file(self, path: Path, file_index: int, label: str) -> None:
        try:
            data = _read_all(path)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.error("unreadable-file", f"cannot read: {exc}", label, file_level=True)
            return
        self.advance(len(data))
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self.error("not-json", f"not a JSON document ({exc}); the file was skipped",
                       label, file_level=True)
            return
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                self.resource(item, None, file_index, label, entry=i)
            return
        if isinstance(obj, Mapping) and isinstance(obj.get("resourceType"), str):
            self.resource(obj, None, file_index, label, entry=None)
            return
        self.error("not-fhir", "not a FHIR Bundle, resource or list of resources; the file "
                   "was skipped", label, file_level=True)


def spill(files: Sequence[InputFile], folder: Path, partitions: int, errors_path: Path,
          *, on_bytes: Any = None) -> SpillStats:
    """Stream every resource of ``files`` into ``partitions`` files in
    ``folder`` (``p00000.tsv``...), by patient; write unattributable resources
    and unreadable files to ``errors_path`` (NDJSON). ``on_bytes(n)`` is
    called with the number of bytes (on disk) read since the last call, for
    a progress bar. Returns the counts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with errors_path.open("wb") as errors:
        spiller = _Spiller(folder, partitions, errors, on_bytes)
        try:
            for index, input_file in enumerate(files):
                if input_file.kind == "json":
                    spiller.json_file(input_file.path, index, input_file.label)
                else:
                    spiller.ndjson_file(input_file.path, index, input_file.label)
                spiller.file_done(input_file.path.stat().st_size)
        finally:
            spiller.close()
        errors.flush()
        os.fsync(errors.fileno())
    return spiller.stats


def input_bytes(files: Sequence[InputFile], *, on_disk: bool = False) -> int:
    """Estimated uncompressed size of the inputs (gzip counted 6x), or their
    size on disk."""
    total = 0
    for input_file in files:
        size = input_file.path.stat().st_size
        if not on_disk:
            with input_file.path.open("rb") as handle:
                if handle.read(2) == b"\x1f\x8b":
                    size *= 6
        total += size
    return total
