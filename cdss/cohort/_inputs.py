"""Cohort input: find the files, stream their resources, spill them by patient.

A cohort arrives as FHIR Bulk Data NDJSON (several files per resource type,
lines in any order, optionally gzip-compressed), as a bulk-export folder with
its manifest, as a folder of Bundles, or as a folder of such folders.
Manifests follow the FHIR Bulk Data Access IG from STU2 (2.0.0) to the STU4
ballot (4.0.0-ballot): ``output``, ``error`` (``outcome`` in the STU4
ballot), ``deleted``, ``outputOrganizedBy`` (STU3, 3.0.0: each patient's
block opens with a header ``Parameters`` resource, skipped here) and partial
manifests chained by a ``link`` with ``relation`` ``next`` (STU3). Screening needs each patient's
resources together, and the cohort may not fit in memory, so the first pass
streams every resource once and appends it to one of ``N`` partition files
chosen by a stable hash of its patient reference (blake2b: the same partition
in every process and on every machine, unlike Python's ``hash()``). A
partition then holds whole patients, and memory is bounded by a partition,
not by the cohort.

A spilled line is ``key, type, file index, line, alias, JSON`` separated by tabs
(the type marked ``~`` for a reduced resource):
``key`` is the patient reference (``Patient/<id>``), ``alias`` another
spelling of it the resource used (an absolute URL, a Bundle's ``urn:uuid``
fullUrl) so that intake can still match the resource to its Patient. Resource
types the facts do not use are spilled as a stub holding only their type and
id (intake only counts them).

A resource of a type the facts use whose codes map to no concept of the
ruleset (most of a real record's Observations) cannot become a fact: it is
spilled *reduced* (:class:`Reducer`) to what intake and the ``unmapped-code``
notes read of it (type, id, patient reference, codes, and a
MedicationRequest's status), so that workers neither read nor parse the rest.
Intake reads a reduced resource exactly as it reads the whole one, so every
result is the same bytes.

The spill runs as *chunks* (:func:`plan_chunks`, :func:`spill_chunk`): a
large plain NDJSON file is split into byte ranges at line boundaries, every
other file is one chunk, and chunks run in parallel, each writing one file
(``c<chunk>.tsv``) of its lines partition after partition, and its own error
rows with line numbers counted from the chunk's start. :func:`assemble` then
numbers the lines (each chunk's first line follows the lines of the chunks
before it in the same file), voids the chunks after one that stopped its
file, and lists each partition's files in input order (:class:`SpillLayout`):
a partition reads exactly the lines, in the same order, that one pass over
the inputs would have given it.

Nothing is dropped silently: a line that cannot be attributed to a patient (a
truncated line, a resource without a subject, an unknown resource type
without one) becomes a resource error row naming its file and line; a file
that is not NDJSON becomes a file error row; resources that belong to no
patient (Organization, Practitioner, Medication...) are counted, and so are
block headers and the manifest's deleted files; each line of the export's own
error files becomes an ``export`` error row.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import orjson

from cdss.errors import CohortError
from cdss.intake import RESOURCE_TYPES

__all__ = [
    "REDUCED",
    "ChunkResult",
    "InputFile",
    "Reducer",
    "SpillChunk",
    "SpillLayout",
    "SpillStats",
    "assemble",
    "discover",
    "partition_of",
    "plan_chunks",
    "spill",
    "spill_chunk",
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
#: Spilled lines a chunk holds in memory before it writes them (a gzip file or
#: a Bundle file is one chunk, whatever its size).
FLUSH_BYTES = 16 * 1024 * 1024
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
_JSON_SUFFIXES = (".json", ".json.gz")


@dataclass(frozen=True)
class InputFile:
    """One input file: ``ndjson`` (one resource per line) or ``json`` (a
    Bundle, a resource or a list of them).

    ``role`` is what a bulk-export manifest says the file holds: ``data``
    (an ``output`` entry, or a file found without a manifest), ``errors``
    (an ``error`` entry, or ``outcome`` in later versions: OperationOutcome
    resources, the export's own errors, never patient data) or ``deleted``
    (a ``deleted`` entry: counted, not read).
    """

    path: Path
    kind: str
    label: str
    role: str = "data"

    def fingerprint(self) -> dict[str, Any]:
        """Path, size and modification time: what ``--resume`` compares."""
        stat = self.path.stat()
        found: dict[str, Any] = {"path": str(self.path), "kind": self.kind,
                                 "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if self.role != "data":
            found["role"] = self.role
        return found


# --------------------------------------------------------------------------- #
# Discovery
# --------------------------------------------------------------------------- #
#: Manifest arrays by the role of the files they list. ``error`` is the name in
#: Bulk Data Access STU1-STU3 (1.0.0-3.0.0); the STU4 ballot (4.0.0-ballot) names
#: the same array ``outcome``. Both are read when both are present.
_MANIFEST_ARRAYS = (("output", "data"), ("error", "errors"), ("outcome", "errors"),
                    ("deleted", "deleted"))
#: Manifests larger than this are not read as manifests.
_MANIFEST_MAX = 50 * 1024 * 1024
#: The screen's own working folder: never an export.
_SCREEN_WORK = ".cdss-screen"


def _is_ndjson(path: Path) -> bool:
    return path.name.lower().endswith(_NDJSON_SUFFIXES)


def _is_json(path: Path) -> bool:
    return path.name.lower().endswith(_JSON_SUFFIXES)


def _load_manifest(path: Path) -> Mapping[str, Any] | None:
    """The manifest in ``path``, or None when the file is not a manifest.

    A manifest is a JSON object with an ``output`` array and no FHIR
    ``resourceType`` (the STU4 ballot's examples give it the logical model's
    URL, ``.../StructureDefinition/BulkDataManifest``, which is not one).
    """
    try:
        if path.stat().st_size > _MANIFEST_MAX:
            return None
        raw = _read_all(path)
        if b'"output"' not in raw:  # most JSON files of a folder are Bundles: not parsed twice
            return None
        data = orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError, EOFError, zlib.error, gzip.BadGzipFile):
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("output"), list):
        return None
    rtype = data.get("resourceType")
    if rtype is None or (isinstance(rtype, str) and rtype.endswith("BulkDataManifest")):
        return data
    return None


def _local_target(manifest: Path, url: str, where: str) -> Path:
    """The file on this machine a manifest's ``url`` names.

    A plain path is relative to the manifest's folder; a ``file:`` URL is
    taken as it is; an ``http(s):`` URL is local when its path, or the end of
    its path (at least the last segment), names a file in the manifest's
    folder (a downloaded export), and otherwise refused: the screen reads no
    network.
    """
    folder = manifest.parent
    parsed = urlparse(url)
    if parsed.scheme == "file":
        target = Path(unquote(parsed.path))
    elif parsed.scheme in ("http", "https"):
        parts = [p for p in unquote(parsed.path).split("/") if p not in ("", ".", "..")]
        copies = [folder.joinpath(*parts[i:]) for i in range(len(parts))]
        found = next((copy for copy in copies if copy.is_file()), None)
        if found is None:
            name = parts[-1] if parts else "?"
            raise CohortError(f"{manifest}: {where} names the remote file {url!r}, and no "
                              f"downloaded copy ({name}) lies in the manifest's folder; "
                              "download the export's files first")
        target = found
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise CohortError(f"{manifest}: {where} names {url!r}, not a local file "
                          f"({parsed.scheme}: URLs are not read)")
    else:
        target = folder / unquote(url)
    if not target.is_file():
        raise CohortError(f"{manifest}: {where} names {url!r}, but {target} does not exist")
    return target


def _next_manifest(path: Path, manifest: Mapping[str, Any]) -> Path | None:
    """The manifest a partial manifest's ``link`` with ``relation`` ``next``
    names (Bulk Data Access STU3, 3.0.0, ``allowPartialManifests``), or None."""
    links = manifest.get("link")
    if links is None:
        return None
    if not isinstance(links, list):
        raise CohortError(f"{path}: link is not a list")
    nexts = [(i, item) for i, item in enumerate(links)
             if isinstance(item, Mapping) and item.get("relation") == "next"]
    if not nexts:
        return None
    if len(nexts) > 1:
        raise CohortError(f"{path}: link has more than one relation 'next'")
    i, item = nexts[0]
    url = item.get("url")
    if not isinstance(url, str) or not url:
        raise CohortError(f"{path}: link[{i}] (relation 'next') has no url")
    return _local_target(path, url, f"link[{i}] (relation 'next')")


def _manifest_files(path: Path, manifest: Mapping[str, Any]) -> list[InputFile]:
    """The files of a manifest and of the partial manifests its ``next``
    links lead to, in manifest order."""
    files: list[InputFile] = []
    seen: set[Path] = set()
    current: Path | None = path
    loaded: Mapping[str, Any] | None = manifest
    while current is not None and loaded is not None:
        seen.add(current.resolve())
        files += _one_manifest(current, loaded)
        following = _next_manifest(current, loaded)
        if following is None:
            break
        if following.resolve() in seen:
            raise CohortError(f"{current}: link 'next' leads back to {following}, a manifest "
                              "already read")
        loaded = _load_manifest(following)
        if loaded is None:
            raise CohortError(f"{current}: link 'next' names {following}, which is not a "
                              "bulk-export manifest (a JSON object with an output array)")
        current = following
    return files


def _one_manifest(path: Path, manifest: Mapping[str, Any]) -> list[InputFile]:
    files = []
    for key, role in _MANIFEST_ARRAYS:
        items = manifest.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise CohortError(f"{path}: {key} is not a list")
        for i, item in enumerate(items):
            url = item.get("url") if isinstance(item, Mapping) else None
            if not isinstance(url, str) or not url:
                raise CohortError(f"{path}: {key}[{i}] has no url")
            try:
                target = _local_target(path, url, f"{key}[{i}]")
            except CohortError:
                if role == "deleted":  # never read: a missing copy is no loss
                    continue
                raise
            files.append(InputFile(path=target.resolve(), kind="ndjson", label=_label(target),
                                   role=role))
    return files


def _label(path: Path) -> str:
    return str(path)


def discover(inputs: Sequence[str | Path]) -> list[InputFile]:
    """The input files of ``inputs`` (files, bulk-export folders, manifests,
    folders of Bundles, folders of such folders), in a stable order, each
    file once.

    A folder is read recursively: every folder in it that holds a manifest
    or NDJSON/JSON files is an export of its own; a folder with a manifest is
    read as the manifest says (its subfolders are not searched further).

    Raises :class:`CohortError` for a missing path, a folder with nothing to
    read, or a manifest naming a missing or remote file.
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
            files = _tree_files(path, set())
            if not files:
                raise CohortError(f"{path}: no NDJSON (*.ndjson, *.ndjson.gz), Bundle "
                                  "(*.json) or manifest files to screen, in it or in its "
                                  "subfolders")
            found += files
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


def _tree_files(folder: Path, visited: set[Path]) -> list[InputFile]:
    """The files of ``folder`` (see :func:`_folder_files`), then those of its
    subfolders in name order; a folder reached twice (a link) is read once."""
    real = folder.resolve()
    if real in visited:
        return []
    visited.add(real)
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files, has_manifest = _folder_files(folder, [p for p in entries if p.is_file()])
    if has_manifest:
        return files
    for sub in entries:
        if sub.is_dir() and not (sub / _SCREEN_WORK).is_dir():
            files += _tree_files(sub, visited)
    return files


def _folder_files(folder: Path, files: list[Path]) -> tuple[list[InputFile], bool]:
    """The input files of one folder, and whether a manifest named them.

    With a manifest (or a chain of partial manifests), the files it lists;
    without one, every NDJSON file, then every JSON file (Bundles,
    resources), by name.
    """
    ndjson = [p for p in files if _is_ndjson(p)]
    jsons = [p for p in files if _is_json(p)]
    manifests = [(p, m) for p in jsons if (m := _load_manifest(p)) is not None]
    if manifests:
        # a manifest another one's ``next`` link names is a part, not a start
        parts = set()
        for p, m in manifests:
            try:
                following = _next_manifest(p, m)
            except CohortError:
                continue  # reported when the chain is read
            if following is not None:
                parts.add(following.resolve())
        starts = [(p, m) for p, m in manifests if p.resolve() not in parts]
        if len(starts) != 1:
            names = ", ".join(p.name for p, _ in (starts or manifests))
            raise CohortError(f"{folder}: more than one export manifest ({names}); name "
                              "the one to screen")
        return _manifest_files(*starts[0]), True
    return ([InputFile(path=p.resolve(), kind="ndjson", label=_label(p)) for p in ndjson]
            + [InputFile(path=p.resolve(), kind="json", label=_label(p)) for p in jsons]), False


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #
def _is_gzip(path: Path) -> bool:
    """Whether the file is gzip-compressed (by its magic bytes)."""
    with path.open("rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def _open(path: Path) -> IO[bytes]:
    """The file, decompressed when it is gzip."""
    if _is_gzip(path):  # GzipFile opens (and closes) the file itself
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


def _lines(handle: IO[bytes], budget: int | None = None
           ) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, line, bytes consumed)``; ``None`` for a line longer
    than MAX_LINE (skipped). With ``budget``, only the lines that start
    within the next ``budget`` bytes (a chunk: the last may run past it)."""
    number = 0
    consumed = 0
    while budget is None or consumed < budget:
        line = handle.readline(MAX_LINE)
        if not line:
            return
        number += 1
        size = len(line)
        if size == MAX_LINE and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = handle.readline(MAX_LINE)
                size += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            consumed += size
            yield number, None, size
            continue
        consumed += size
        yield number, line, size


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
    #: OperationOutcome lines of the export's ``error``/``outcome`` files
    export_errors: int = 0
    #: header ``Parameters`` resources of files organized by patient (skipped)
    block_headers: int = 0
    #: files a manifest lists as ``deleted`` (not read)
    deleted_files: int = 0
    types: Counter[str] = field(default_factory=Counter)
    errors_by_kind: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines, "blank": self.blank, "resources": self.items,
            "attributed": self.attributed,
            "not_patient_specific": self.not_patient_specific,
            "resource_errors": self.resource_errors, "file_errors": self.file_errors,
            "bytes_read": self.bytes_read, "export_errors": self.export_errors,
            "block_headers": self.block_headers, "deleted_files": self.deleted_files,
            "types": dict(sorted(self.types.items())),
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
        }


class _Spiller:
    """Writes attributed resources to partition files and error rows to a file."""

    def __init__(self, partitions: int, errors: IO[bytes], out: Path, on_bytes: Any = None,
                 *, reduce: Reducer | None = None, flush_bytes: int = FLUSH_BYTES) -> None:
        self.partitions = partitions
        self.reduce = reduce
        #: the spilled lines by partition, written to ``out`` as a segment (each
        #: partition's lines in a row) whenever they reach ``flush_bytes``
        self.buffers: dict[int, list[bytes]] = {}
        self.buffered = 0
        self.flush_bytes = flush_bytes
        self.out = out
        self.out_handle: IO[bytes] | None = None
        self.written = 0
        #: per partition, the ``(offset, length)`` of its lines in each segment
        self.ranges: dict[int, list[tuple[int, int]]] = {}
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

    def flush(self) -> None:
        """Write the buffered lines to the chunk's file as one segment:
        partition after partition, each one's range remembered."""
        if not self.buffers:
            return
        if self.out_handle is None:
            self.out_handle = self.out.open("wb")
        for part in sorted(self.buffers):
            data = b"".join(self.buffers[part])
            self.out_handle.write(data)
            self.ranges.setdefault(part, []).append((self.written, len(data)))
            self.written += len(data)
        self.buffers.clear()
        self.buffered = 0

    def save(self) -> dict[int, list[tuple[int, int]]]:
        """Write what is buffered and flush the chunk's file to disk; return
        each partition's ranges in it."""
        self.flush()
        if self.out_handle is not None:
            self.out_handle.flush()
            os.fsync(self.out_handle.fileno())
            self.out_handle.close()
            self.out_handle = None
        return self.ranges

    def write(self, key: str, rtype: str, file_index: int, number: int, alias: str,
              payload: bytes, *, mark: str = "") -> None:
        last_key, part, encoded = self.last
        if key != last_key or part < 0:
            part, encoded = partition_of(key, self.partitions), key.encode()
            self.last = (key, part, encoded)
        buffer = self.buffers.get(part)
        if buffer is None:
            buffer = self.buffers[part] = []
        line = b"\t".join((encoded, (mark + rtype).encode(), str(file_index).encode(),
                           str(number).encode(), alias.encode(), payload)) + b"\n"
        buffer.append(line)
        self.buffered += len(line)
        if self.buffered >= self.flush_bytes:
            self.flush()
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
        if rtype == "Parameters" and _is_block_header(obj):
            self.stats.items -= 1  # a block's header, not a resource of the export
            self.stats.block_headers += 1
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
        if used and self.reduce is not None:
            reduced = self.reduce(obj, raw)
            if reduced is not None:  # a worker tallies it, never reads it as a record's
                self.write(found, rtype, file_index, number, alias, reduced, mark=REDUCED)
                return
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
    def ndjson_file(self, path: Path, file_index: int, label: str, *, start: int = 0,
                    end: int | None = None, first: bool = True) -> ChunkEnd:
        """Spill the lines of ``path`` that start in ``[start, end)`` (the
        whole file by default), numbered from 1 at ``start``. ``first``: the
        range opens the file, where two lines that are not JSON before any
        that is make it a file that is not NDJSON."""
        failures: list[tuple[int, str]] = []
        parsed_any = not first
        number = 0
        try:
            with _open(path) as handle:
                self.handle = handle
                if start:
                    handle.seek(start)
                    self.reported = start
                for number, line, size in _lines(handle, None if end is None else end - start):
                    self.stats.lines += 1
                    if line is None:
                        self.stats.items += 1
                        self.error("line-too-long", f"line longer than {MAX_LINE} bytes",
                                   label, line=number)
                        continue
                    self.advance(size)
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
                                return ChunkEnd(number, "not-ndjson", parsed=False)
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
            return ChunkEnd(number, "unreadable", parsed=parsed_any)
        for early, message in failures:  # a file of one line that is not JSON
            self._malformed(label, early, message)
        return ChunkEnd(number, None, parsed=parsed_any)

    def outcome_file(self, path: Path, label: str) -> None:
        """An export's own error file: each line an OperationOutcome, written
        as an ``export`` error row naming the file and line."""
        try:
            with _open(path) as handle:
                self.handle = handle
                for number, line, size in _lines(handle):
                    if line is None:
                        self.export_error(label, number, "line-too-long",
                                          f"line longer than {MAX_LINE} bytes")
                        continue
                    self.advance(size)
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        self.export_error(label, number, "malformed-json",
                                          f"not valid JSON ({exc})")
                        continue
                    self.export_error(label, number, "export-outcome", None, obj)
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.error("unreadable-file", f"reading stopped: {exc}", label, file_level=True)

    def export_error(self, label: str, line: int, kind: str, reason: str | None,
                     outcome: Any = None) -> None:
        row: dict[str, Any] = {"kind": "export", "error": kind, "file": label, "line": line}
        if outcome is not None:
            row.update(_outcome_fields(outcome))
        else:
            row["reason"] = reason
        self.errors.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n")
        self.stats.export_errors += 1
        self.stats.errors_by_kind[row["error"]] += 1

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


def _is_block_header(obj: Mapping[str, Any]) -> bool:
    """Whether a ``Parameters`` resource is a resource block's header (Bulk
    Data Access STU3, 3.0.0, ``organizeOutputBy``): a parameter named
    ``header`` holding a ``valueReference``."""
    params = obj.get("parameter")
    return isinstance(params, list) and any(
        isinstance(p, Mapping) and p.get("name") == "header"
        and isinstance(p.get("valueReference"), Mapping) for p in params)


def _outcome_fields(obj: Any) -> dict[str, Any]:
    """An export error row's fields from one OperationOutcome: its issues'
    severity, code and text (``diagnostics``, else ``details.text``)."""
    if not isinstance(obj, Mapping) or obj.get("resourceType") != "OperationOutcome":
        rtype = obj.get("resourceType") if isinstance(obj, Mapping) else None
        return {"error": "not-an-outcome",
                "reason": f"an error file line that is not an OperationOutcome "
                          f"({rtype if isinstance(rtype, str) else type(obj).__name__})"}
    texts, severity, code = [], None, None
    issues = obj.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, Mapping):
            continue
        severity = severity or issue.get("severity")
        code = code or issue.get("code")
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(
            details, Mapping) else None)
        if isinstance(text, str) and text:
            texts.append(text)
    rid = obj.get("id")
    return {"reason": "; ".join(texts) or "an OperationOutcome without text",
            "severity": severity if isinstance(severity, str) else None,
            "code": code if isinstance(code, str) else None,
            "resource_id": rid if isinstance(rid, str) else None}


# --------------------------------------------------------------------------- #
# Reduction of the resources no rule can read
# --------------------------------------------------------------------------- #
#: What intake and the ``unmapped-code`` notes read of a resource that can
#: become no fact (see :class:`cdss.facts.UnmappedCodes`): its type and id, its
#: patient reference, its codes (a medication's text and displays, which name
#: ingredients), and a MedicationRequest's status (a draft is an order).
_REDUCED_FIELDS = {
    "Observation": frozenset({"resourceType", "id", "subject", "code"}),
    "Condition": frozenset({"resourceType", "id", "subject", "code"}),
    "MedicationRequest": frozenset({"resourceType", "id", "subject", "status",
                                    "medicationCodeableConcept"}),
    "MedicationStatement": frozenset({"resourceType", "id", "subject",
                                      "medicationCodeableConcept"}),
    "AllergyIntolerance": frozenset({"resourceType", "id", "patient", "code", "reaction"}),
}
#: Marks the type of a spilled line whose resource is reduced (``~Observation``).
REDUCED = "~"
#: The level a spilled resource sits at in the Bundle a worker builds
#: (Bundle, entry list, entry, resource), for intake's bounds.
_RESOURCE_DEPTH = 4


class Reducer:
    """Decides which resources are spilled reduced: one of a type the facts
    use whose codes no ruleset's terminology maps (:func:`cdss.facts.contributes`,
    remembered per distinct code: a cohort has few) and in which intake's
    bounds find nothing wrong anywhere (a resource they refuse is spilled
    whole, so that intake leaves it out with the same reason). Returns the
    resource's JSON reduced to :data:`_REDUCED_FIELDS`, or None to spill it
    as it is. A worker hands the reduced resources to intake as known to
    contribute nothing (``read_record(..., reduced=...)``): their patient
    reference is checked and their codes tallied for the ``unmapped-code``
    notes, as for the whole resource.

    The bounds are proved from the line's bytes where they can be (as intake
    proves a record given as text); otherwise the parsed resource is walked
    as intake would walk it.
    """

    _MEMO = 65536

    def __init__(self, terminologies: Sequence[Any]) -> None:
        from cdss.facts import contributes
        from cdss.intake._guard import MAX_DEPTH, _clean_json, _text_is_clean

        self.terminologies = tuple(terminologies)
        self._contributes = contributes
        self._clean = _clean_json
        self._text_clean = _text_is_clean
        # levels below the Bundle's own: the resource and what it nests
        self._levels = MAX_DEPTH - _RESOURCE_DEPTH
        self._memo: dict[bytes, bool] = {}
        self.reduced = 0

    def __call__(self, resource: Mapping[str, Any], raw: bytes | None = None) -> bytes | None:
        rtype = resource.get("resourceType")
        keep = _REDUCED_FIELDS.get(rtype)  # type: ignore[arg-type]
        if keep is None or type(resource) is not dict:
            return None
        try:
            if rtype == "AllergyIntolerance":
                codes = orjson.dumps([resource.get("code"), resource.get("reaction")])
            else:
                codes = orjson.dumps(resource.get(
                    "code" if rtype in ("Observation", "Condition")
                    else "medicationCodeableConcept"))
            used = self._memo.get(codes)
            if used is None:
                used = any(self._contributes(resource, t) for t in self.terminologies)
                if len(self._memo) >= self._MEMO:
                    self._memo.clear()
                self._memo[codes] = used
            if used or not (self._plainly_clean(raw) or self._clean(resource,
                                                                    _RESOURCE_DEPTH)):
                return None
        except Exception:  # odd input: spilled whole, for intake to meet and report
            return None
        self.reduced += 1
        return orjson.dumps({k: v for k, v in resource.items() if k in keep})

    def _plainly_clean(self, raw: bytes | None) -> bool:
        """Whether a resource's JSON bytes alone prove it within intake's
        bounds at the level it will sit at in a worker's Bundle (see
        :func:`cdss.intake._guard._text_is_clean`)."""
        return raw is not None and self._text_clean(raw, self._levels)


# --------------------------------------------------------------------------- #
# Chunks
# --------------------------------------------------------------------------- #
#: The bounds of a chunk's size (plain NDJSON files are split).
MIN_CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ChunkEnd:
    """How a chunk's pass over its file ended: the lines it consumed, why it
    stopped the file (``not-ndjson``, ``unreadable``) if it did, and whether
    it parsed any line."""

    lines: int
    stop: str | None
    parsed: bool


@dataclass(frozen=True)
class SpillChunk:
    """One piece of the spill: a whole file, or the lines of a plain NDJSON
    file that start in ``[start, end)`` (``end`` None: to the end)."""

    index: int
    file_index: int
    path: str
    label: str
    kind: str
    role: str
    start: int = 0
    end: int | None = None
    size: int = 0

    @property
    def first(self) -> bool:
        """The chunk opens its file."""
        return self.start == 0


@dataclass
class ChunkResult:
    """What one chunk spilled: counts, its lines and how it ended."""

    index: int
    stats: SpillStats
    end: ChunkEnd
    reduced: int = 0
    seconds: float = 0.0
    #: the process that spilled it
    pid: int = 0
    #: where each partition's lines are in the chunk's file: ``(offset, length)``
    #: of each segment holding some
    ranges: Mapping[int, Sequence[tuple[int, int]]] = field(default_factory=dict)


def plan_chunks(files: Sequence[InputFile], chunk_bytes: int) -> list[SpillChunk]:
    """The chunks of ``files``, in input order: every plain NDJSON data file
    larger than ``chunk_bytes`` split into ranges of about that size, each
    ending after a line break; every other file (Bundles, gzip, the export's
    error files) one chunk. Files a manifest lists as deleted have none."""
    chunks: list[SpillChunk] = []
    for index, input_file in enumerate(files):
        if input_file.role == "deleted":
            continue
        path = input_file.path
        size = path.stat().st_size
        cuts = [0]
        if input_file.kind == "ndjson" and input_file.role == "data" and size > chunk_bytes \
                and not _is_gzip(path):
            with path.open("rb") as handle:
                while cuts[-1] + chunk_bytes < size:
                    cut = _line_start_after(handle, cuts[-1] + chunk_bytes)
                    if cut >= size:
                        break
                    cuts.append(cut)
        ends: list[int | None] = [*cuts[1:], None]
        for start, stop in zip(cuts, ends, strict=True):
            chunks.append(SpillChunk(
                index=len(chunks), file_index=index, path=str(path), label=input_file.label,
                kind=input_file.kind, role=input_file.role, start=start, end=stop,
                size=(stop if stop is not None else size) - start))
    return chunks


def _line_start_after(handle: IO[bytes], offset: int) -> int:
    """The offset of the first line that starts at or after ``offset``."""
    if offset <= 0:
        return 0
    handle.seek(offset - 1)
    while True:
        block = handle.read(1 << 16)
        if not block:
            return handle.tell()
        found = block.find(b"\n")
        if found >= 0:
            return handle.tell() - len(block) + found + 1


def spill_chunk(chunk: SpillChunk, folder: Path, partitions: int, *,
                reduce: Reducer | None = None, whole: bool = False,
                on_bytes: Any = None, flush_bytes: int = FLUSH_BYTES) -> ChunkResult:
    """Spill one chunk into ``folder``: its lines in ``c<chunk>.tsv``, in
    segments of about ``flush_bytes`` (each partition's lines in a row, where
    they are in the result), so that memory stays bounded whatever the
    chunk's size; its error rows in ``c<chunk>.errors.ndjson`` (line numbers
    counted from the chunk's first line). ``whole``: read the chunk's file
    from its start to its end, whatever the chunk's range (a file whose first
    chunk could not decide whether it is NDJSON)."""
    import time

    started = time.perf_counter()
    reduced_before = reduce.reduced if reduce is not None else 0
    folder.mkdir(parents=True, exist_ok=True)
    name = f"c{chunk.index:05d}"
    path = Path(chunk.path)
    with (folder / f"{name}.errors.ndjson").open("wb") as errors:
        spiller = _Spiller(partitions, errors, folder / f"{name}.tsv", on_bytes,
                           reduce=reduce, flush_bytes=flush_bytes)
        end = ChunkEnd(0, None, parsed=True)
        if chunk.role == "errors":
            spiller.outcome_file(path, chunk.label)
        elif chunk.kind == "json":
            spiller.json_file(path, chunk.file_index, chunk.label)
        elif whole:
            end = spiller.ndjson_file(path, chunk.file_index, chunk.label)
        else:
            end = spiller.ndjson_file(path, chunk.file_index, chunk.label,
                                      start=chunk.start, end=chunk.end, first=chunk.first)
        spiller.file_done(path.stat().st_size if chunk.end is None or whole else chunk.end)
        errors.flush()
        os.fsync(errors.fileno())
    ranges = spiller.save()
    return ChunkResult(index=chunk.index, stats=spiller.stats, end=end,
                       reduced=(reduce.reduced - reduced_before) if reduce is not None else 0,
                       seconds=time.perf_counter() - started, pid=os.getpid(), ranges=ranges)


#: Where some of a partition's lines are in one chunk's file: ``(file,
#: offset, length, line base)``; a length of -1 is the whole file.
SpillRange = tuple[str, int, int, int]
Ranges = Mapping[int, Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class SpillLayout:
    """Where the spill put everything: per chunk, in input order, its index,
    the number of its file's lines before it (added to the line numbers it
    wrote) and where each partition's lines are in its file."""

    chunks: tuple[tuple[int, int, Ranges], ...]

    def partition_files(self, folder: Path, partition: int) -> tuple[SpillRange, ...]:
        """Where a partition's spilled lines are, in input order."""
        return tuple((str(folder / f"c{index:05d}.tsv"), offset, length, base)
                     for index, base, ranges in self.chunks
                     for offset, length in ranges.get(partition, ()))

    def to_json(self) -> bytes:
        return orjson.dumps({"chunks": [
            [index, base, {str(p): [list(r) for r in rs] for p, rs in sorted(ranges.items())}]
            for index, base, ranges in self.chunks]})

    @classmethod
    def from_json(cls, data: bytes) -> SpillLayout:
        raw = orjson.loads(data)
        return cls(chunks=tuple(
            (int(index), int(base),
             {int(p): [(int(r[0]), int(r[1])) for r in rs] for p, rs in ranges.items()})
            for index, base, ranges in raw["chunks"]))


def assemble(chunks: Sequence[SpillChunk], results: Mapping[int, ChunkResult], folder: Path,
             errors_path: Path, redo: Callable[[SpillChunk], ChunkResult], *,
             deleted_files: int = 0) -> tuple[SpillStats, SpillLayout]:
    """Put the chunks' results together as one pass over the inputs would
    have made them: each chunk's line numbers follow the lines of the chunks
    before it in its file; the chunks of a file after one that stopped it (not
    NDJSON, unreadable) are void; a split file whose first chunk parsed no line
    (it cannot tell a file that is not NDJSON) is spilled again whole by
    ``redo`` (:func:`spill_chunk` with ``whole=True``) as its first chunk.
    Writes every error row to ``errors_path`` in input order; returns the
    counts and the layout."""
    by_file: dict[int, list[SpillChunk]] = {}
    for chunk in chunks:
        by_file.setdefault(chunk.file_index, []).append(chunk)
    kept: list[tuple[int, int, Ranges]] = []
    done = dict(results)
    for file_chunks in by_file.values():
        head = file_chunks[0]
        if len(file_chunks) > 1 and not done[head.index].end.parsed \
                and done[head.index].end.stop is None:
            for chunk in file_chunks:
                _void(folder, chunk.index)
            done[head.index] = redo(head)
            file_chunks = [head]
        base = 0
        for chunk in file_chunks:
            result = done[chunk.index]
            kept.append((chunk.index, base, result.ranges))
            base += result.end.lines
            if result.end.stop is not None:
                for later in file_chunks[file_chunks.index(chunk) + 1:]:
                    _void(folder, later.index)
                break
    stats = SpillStats(deleted_files=deleted_files)
    with errors_path.open("wb") as errors:
        for index, base, _ in kept:
            _add_stats(stats, done[index].stats)
            part = folder / f"c{index:05d}.errors.ndjson"
            with part.open("rb") as rows:
                if base == 0:
                    shutil.copyfileobj(rows, errors)
                    continue
                for row in rows:
                    item = orjson.loads(row)
                    if isinstance(item.get("line"), int):
                        item["line"] += base
                    errors.write(orjson.dumps(item, option=orjson.OPT_SORT_KEYS) + b"\n")
        errors.flush()
        os.fsync(errors.fileno())
    return stats, SpillLayout(chunks=tuple(kept))


def _void(folder: Path, index: int) -> None:
    """Remove what a chunk wrote."""
    for path in folder.glob(f"c{index:05d}.*"):
        path.unlink()


def _add_stats(total: SpillStats, part: SpillStats) -> None:
    """Add one chunk's counts (every field: numbers and counters) to ``total``."""
    for item in fields(SpillStats):
        mine, theirs = getattr(total, item.name), getattr(part, item.name)
        if isinstance(mine, Counter):
            mine.update(theirs)
        else:
            setattr(total, item.name, mine + theirs)


def spill(files: Sequence[InputFile], folder: Path, partitions: int, errors_path: Path,
          *, on_bytes: Any = None, reduce: Reducer | None = None,
          chunk_bytes: int | None = None,
          flush_bytes: int = FLUSH_BYTES) -> tuple[SpillStats, SpillLayout]:
    """Spill ``files`` into ``partitions`` in ``folder`` in this process,
    chunk after chunk (see :func:`plan_chunks`; ``chunk_bytes`` None: a chunk
    per file); write unattributable resources and unreadable files to
    ``errors_path`` (NDJSON). ``on_bytes(n)`` is called with the number of
    bytes (on disk) read since the last call, for a progress bar. Returns the
    counts and the layout. A screen runs the same chunks in parallel.
    """
    chunks = plan_chunks(files, chunk_bytes or (1 << 62))
    results = {c.index: spill_chunk(c, folder, partitions, reduce=reduce, on_bytes=on_bytes,
                                    flush_bytes=flush_bytes)
               for c in chunks}
    return assemble(chunks, results, folder, errors_path,
                    lambda c: spill_chunk(c, folder, partitions, reduce=reduce, whole=True,
                                          flush_bytes=flush_bytes),
                    deleted_files=sum(f.role == "deleted" for f in files))


def input_bytes(files: Sequence[InputFile], *, on_disk: bool = False) -> int:
    """Estimated uncompressed size of the inputs (gzip counted 6x), or their
    size on disk."""
    total = 0
    for input_file in files:
        size = input_file.path.stat().st_size
        if not on_disk and _is_gzip(input_file.path):
            size *= 6
        total += size
    return total
