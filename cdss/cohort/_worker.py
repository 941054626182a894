"""The per-partition function of a cohort screen, run in worker processes.

:func:`run_partition` reads one spilled partition (see :mod:`cdss.cohort._inputs`),
groups its lines by patient, evaluates every patient and writes the
partition's results next to it; the same function runs in local worker
processes and on Dask workers, so both give identical results.

Each patient's resources become one Bundle (bytes, built by concatenating the
spilled JSON, so lean intake validates the whole record in one call) and go
through :func:`cdss.evaluate` exactly as a caller's Bundle would. A patient
whose record fails becomes an error row with the reason, never a missing row.

Results are written atomically: each file goes to a temporary name, is
flushed to disk and renamed, and the partition's *done marker* is written
last. A partition with a done marker is complete; one without is redone on
``--resume``. Within a partition, patients are in key order, so that a merge
of the partitions is sorted by patient reference.

Before each patient is evaluated, its key is appended to the partition's
*journal* (one unbuffered write), so that when the process dies (a segfault
in the rule engine's C code, ``os._exit``, an out-of-memory kill) the caller
can tell whose evaluation was in flight, check it alone in a fresh process,
and run the partition again with that patient as a ``worker-died`` error row
(``PartitionTask.died``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import pickle
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from cdss._changes import compare, rule_changes
from cdss.cohort._inputs import REDUCED
from cdss.errors import CDSSError, EngineError, InputError

__all__ = [
    "DIFF_TALLIES",
    "SCREEN_TALLIES",
    "PartitionCounts",
    "PartitionTask",
    "SpillTask",
    "TaskKind",
    "compare",
    "describe_exit",
    "die_with_parent",
    "in_flight",
    "peak_rss_mb",
    "run_partition",
    "run_spill",
    "tune_malloc",
    "warm_up",
    "worker_loop",
]

_SORT = orjson.OPT_SORT_KEYS
_PREFIX = b'{"resourceType":"Bundle","type":"collection","entry":['


#: A partition's job: a screen (one ruleset) or a diff (two).
TaskKind = Literal["screen", "diff"]


@dataclass(frozen=True)
class PartitionTask:
    """One partition to evaluate.

    ``kind`` is ``screen`` (one ruleset) or ``diff`` (two: from, to);
    ``rulesets`` are ``(key, pickled Ruleset)`` pairs, so that workers run
    exactly the ruleset the caller loaded (site folders and concept maps
    included) and check its identity; ``sources`` is the file listing the
    input files by index, read only to name the file of a failing resource.

    ``evaluator`` replaces :func:`cdss.evaluate` (same call; it must be
    importable by name in the worker). ``only`` restricts the partition to
    these patient keys (the check of one patient alone after a worker died).
    ``died`` lists ``(key, exit code, reason)`` of patients whose evaluation
    killed a worker: each becomes a ``worker-died`` error row and is not
    evaluated again. ``formats`` names the extra outputs of a screen to write
    (``fhir``: the partition's FHIR resources, see :mod:`cdss.cohort._fhir_bulk`).
    """

    kind: TaskKind
    partition: int
    spill: str
    out_dir: str
    rulesets: tuple[tuple[str, bytes], ...]
    as_of: str
    mode: str
    sources: str
    tune_malloc: bool = False
    evaluator: Callable[..., Any] | None = None
    only: tuple[str, ...] = ()
    died: tuple[tuple[str, int | None, str], ...] = ()
    formats: tuple[str, ...] = ()
    #: ``(file, offset, length, line base)`` of the partition's spilled lines in
    #: input order (see :class:`cdss.cohort._inputs.SpillLayout`); empty:
    #: ``spill``, a file of the partition's lines alone
    spills: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def done_path(self) -> Path:
        return Path(self.out_dir) / f"p{self.partition:05d}.done"

    @property
    def journal_path(self) -> Path:
        return Path(self.out_dir) / f"p{self.partition:05d}.journal"


@dataclass(frozen=True)
class SpillTask:
    """One chunk of the spill (:func:`cdss.cohort._inputs.spill_chunk`) for a
    worker process: ``rulesets`` as for :class:`PartitionTask`, whose
    terminologies decide which resources are spilled reduced (``reduce``)."""

    chunk: Any  # cdss.cohort._inputs.SpillChunk
    folder: str
    partitions: int
    rulesets: tuple[tuple[str, bytes], ...]
    reduce: bool = True


#: The tallies of a screen partition: code -> patients (``severity``: highest
#: severity -> patients; ``errors_by_kind``: error kind -> rows;
#: ``unmapped_codes``: ``system|code`` -> notes; ``age_bands``, ``sexes``: assessed
#: patients by age band and sex; ``flags_by_age_band``, ``flags_by_sex``:
#: ``code|band`` and ``code|sex`` -> patients; ``unmapped_displays``:
#: ``system|code<TAB>display`` -> patients whose records give the code that
#: display). A done marker without the last five (an earlier version's) is
#: still read.
SCREEN_TALLIES = ("flags", "severity", "referrals", "plan", "data_requests", "errors_by_kind",
                  "unmapped_codes", "age_bands", "sexes", "flags_by_age_band", "flags_by_sex",
                  "unmapped_displays")
#: The tallies of a diff partition: code (or ``code: from -> to``) -> patients;
#: per rule (see :func:`cdss._changes.rule_changes`): ``rules_gained``,
#: ``rules_lost``, ``rules_changed``: rule id -> patients with an item of that
#: rule gained, lost or changed; ``rule_items``: ``"rule change item code"``
#: (e.g. ``"PC-GAIT-02 gained flag calf-overload-from-gait"``) -> patients.
DIFF_TALLIES = ("flags_added", "flags_removed", "severity_changed", "plan_added",
                "plan_removed", "plan_modified", "referrals_added", "referrals_removed",
                "data_requests_added", "data_requests_removed", "rules_gained", "rules_lost",
                "rules_changed", "rule_items")


@dataclass(frozen=True)
class PartitionCounts:
    """What one partition did: returned by :func:`run_partition` to the caller
    (across processes, or from a Dask worker) and kept as JSON in the
    partition's done marker, from which ``--resume`` reads it back.

    ``patients`` = ``assessed`` + ``errors`` for a screen and ``changed`` +
    ``unchanged`` + ``errors`` for a diff; ``tallies`` holds the names of
    :data:`SCREEN_TALLIES` or :data:`DIFF_TALLIES`.
    """

    kind: TaskKind
    patients: int
    errors: int
    partition: int = -1
    resources: int = 0
    assessed: int = 0
    left_out: int = 0
    changed: int = 0
    unchanged: int = 0
    tallies: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    pid: int = 0
    peak_rss_mb: float | None = None
    #: CPU time of the worker process on the partition: ``seconds`` well above it
    #: means the process waited for a core (a machine shared with other work)
    cpu_seconds: float = 0.0

    def tally(self, name: str) -> Mapping[str, int]:
        """One tally (empty when nothing was counted)."""
        return self.tallies.get(name, {})

    def to_json(self) -> bytes:
        """The done marker's content (sorted keys)."""
        return orjson.dumps({
            "kind": self.kind, "partition": self.partition, "patients": self.patients,
            "errors": self.errors, "resources": self.resources, "assessed": self.assessed,
            "left_out": self.left_out, "changed": self.changed, "unchanged": self.unchanged,
            "tallies": {k: dict(v) for k, v in self.tallies.items()},
            "seconds": self.seconds, "pid": self.pid, "peak_rss_mb": self.peak_rss_mb,
            "cpu_seconds": self.cpu_seconds,
        }, option=_SORT)

    @classmethod
    def from_json(cls, data: bytes) -> PartitionCounts:
        """Read a done marker; ``ValueError`` when it is not one this version
        writes (the partition is then redone)."""
        try:
            raw = orjson.loads(data)
            kind = raw["kind"]
            names = SCREEN_TALLIES if kind == "screen" else DIFF_TALLIES
            if kind not in ("screen", "diff") or set(raw["tallies"]) - set(names):
                raise ValueError(f"not a partition's counts: kind {kind!r}")
            tallies = {name: {str(code): _count(n) for code, n in raw["tallies"][name].items()}
                       for name in names if name in raw["tallies"]}
            peak = raw["peak_rss_mb"]
            return cls(kind=kind, partition=_count(raw["partition"]),
                       patients=_count(raw["patients"]), errors=_count(raw["errors"]),
                       resources=_count(raw["resources"]), assessed=_count(raw["assessed"]),
                       left_out=_count(raw["left_out"]), changed=_count(raw["changed"]),
                       unchanged=_count(raw["unchanged"]), tallies=tallies,
                       seconds=float(raw["seconds"]), pid=_count(raw["pid"]),
                       peak_rss_mb=None if peak is None else float(peak),
                       cpu_seconds=float(raw.get("cpu_seconds", 0.0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a partition's counts: {exc}") from exc


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(f"not a count: {value!r}")
    return value


# --------------------------------------------------------------------------- #
# Process set-up
# --------------------------------------------------------------------------- #
_TUNED = False
_RULESETS: dict[str, Any] = {}
_SOURCES: dict[str, list[str]] = {}


def tune_malloc() -> bool:
    """Set glibc malloc's mmap and trim thresholds in this process (as the
    ``MALLOC_MMAP_THRESHOLD_=16777216`` and ``MALLOC_TRIM_THRESHOLD_=268435456``
    environment variables would at start-up): durable-rules allocates and
    frees many small blocks per patient, and fixed thresholds stop glibc from
    returning memory to the system after every session. Returns whether it
    applied (glibc only); idempotent."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = bool(libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024) == 1)
        ok = bool(libc.mallopt(m_trim_threshold, 256 * 1024 * 1024) == 1) and ok
    except (OSError, AttributeError):
        return False
    _TUNED = ok
    return ok


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MiB (Linux: ``VmHWM``, which,
    unlike ``getrusage``, does not carry over the parent's peak across exec);
    None where it cannot be read."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _ruleset(key: str, data: bytes) -> Any:
    ruleset = _RULESETS.get(key)
    if ruleset is None:
        ruleset = pickle.loads(data)  # pickled by the calling process
        if ruleset.key != key:
            raise CDSSError(f"the ruleset sent to the worker is {ruleset.key}, not {key}")
        _RULESETS[key] = ruleset
    return ruleset


def warm_up() -> None:
    """Pay a worker process's fixed costs before its first partition: import
    the evaluation and load the UCUM unit registry (about 0.7 s, most of a
    worker's start-up after the interpreter's). A local screen starts its
    workers before its spill pass, which the screening process runs while
    they warm up, so that this overlaps the spill instead of delaying the
    first partitions. A failure is left for the evaluation to
    meet and report as it would have without the warm-up."""
    with contextlib.suppress(Exception):  # reported when a patient meets it
        import cdss.evaluation  # noqa: F401
        from cdss.units import _registry

        _registry()


def settle_gc() -> None:
    """Collect, then move every object alive (modules, the unit registry, a
    loaded ruleset, the terminology's memo) out of the garbage collector's
    view (:func:`gc.freeze`): a warm worker's full collections then look only
    at what its patients make, not at the hundreds of thousands of objects it
    keeps for the whole screen. A worker process calls it once warm and after
    each partition; never in a caller's own process."""
    gc.collect()
    gc.freeze()


def _source_label(sources: str, index: int) -> str | None:
    labels = _SOURCES.get(sources)
    if labels is None:
        try:
            labels = [str(s) for s in orjson.loads(Path(sources).read_bytes())]
        except (OSError, orjson.JSONDecodeError):
            labels = []
        _SOURCES[sources] = labels
    return labels[index] if 0 <= index < len(labels) else None


# --------------------------------------------------------------------------- #
# Reading a partition
# --------------------------------------------------------------------------- #
Entry = tuple[str, int, int, str, bytes]  # type, source, line, alias, JSON


def _read_groups(ranges: Sequence[tuple[str, int, int, int]]) -> dict[str, list[Entry]]:
    """A partition's spilled lines grouped by patient, in input order: each
    ``(file, offset, length, line base)`` in order (a length of -1: the whole
    file), each line's number moved on by its line base."""
    groups: dict[str, list[Entry]] = {}
    for name, offset, length, base in ranges:
        try:
            with open(name, "rb") as handle:
                handle.seek(offset)
                data = handle.read() if length < 0 else handle.read(length)
        except FileNotFoundError:
            continue
        for line in data.split(b"\n"):
            if not line:
                continue
            key, rtype, source, number, alias, payload = line.split(b"\t", 5)
            groups.setdefault(key.decode(), []).append(
                (rtype.decode(), int(source), int(number) + base, alias.decode(), payload))
    return groups


def record_bytes(entries: Sequence[Entry]) -> bytes:
    """One patient's spilled resources as a collection Bundle (JSON bytes),
    the reduced ones (see :func:`reduced_resources`) left out.

    The Patient gets one entry per other spelling of its reference that its
    resources used (as ``fullUrl``), so that intake matches them to it.
    """
    aliases = sorted({alias for _, _, _, alias, _ in entries if alias})
    parts: list[bytes] = []
    for rtype, _, _, _, payload in entries:
        if rtype[:1] == REDUCED:
            continue
        if rtype == "Patient" and aliases:
            parts += [b'{"fullUrl":' + orjson.dumps(alias) + b',"resource":' + payload + b"}"
                      for alias in aliases]
        else:
            parts.append(b'{"resource":' + payload + b"}")
    return _PREFIX + b",".join(parts) + b"]}"


def reduced_resources(entries: Sequence[Entry]) -> list[Any]:
    """The patient's resources the spill reduced (no rule can read them), in
    input order, for intake to tally."""
    return [orjson.loads(payload) for rtype, _, _, _, payload in entries
            if rtype[:1] == REDUCED]


# --------------------------------------------------------------------------- #
# Evaluating
# --------------------------------------------------------------------------- #
def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return "input"
    if isinstance(exc, EngineError):
        return "engine"
    if isinstance(exc, CDSSError):
        return "cdss"
    return "internal"


def _error_row(task: PartitionTask, key: str, entries: Sequence[Entry],
               exc: BaseException) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": "patient", "patient": key, "error": _error_kind(exc),
                           "exception": type(exc).__name__, "reason": str(exc),
                           "resources": len(entries)}
    if isinstance(exc, InputError):
        row.update(resource_type=exc.resource_type, resource_id=exc.resource_id,
                   field=exc.field)
        where = _locate(entries, exc.resource_type, exc.resource_id)
        if where is not None:
            row["file"] = _source_label(task.sources, where[0])
            row["line"] = where[1]
    return row


def _left_out_rows(task: PartitionTask, key: str, entries: Sequence[Entry],
                   assessment: Any) -> list[dict[str, Any]]:
    """The error rows of the resources an assessed patient's evaluation left
    out as unreadable (the patient's assessment is written too)."""
    rows = []
    for lo in assessment.left_out:
        rtype, _, rid = lo.resource.partition("/")
        row: dict[str, Any] = {"kind": "resource", "patient": key, "error": "left-out",
                               "resource_type": rtype, "resource_id": rid, "field": lo.field,
                               "reason": lo.reason}
        where = _locate(entries, rtype, rid)
        if where is not None:
            row["file"] = _source_label(task.sources, where[0])
            row["line"] = where[1]
        rows.append(row)
    return rows


def describe_exit(exit_code: int | None) -> tuple[int | None, str | None, str]:
    """``(exit code, signal name, words)`` of a dead worker's exit status as
    :mod:`multiprocessing` gives it (negative: killed by that signal; None:
    unknown, e.g. a lost Dask worker)."""
    if exit_code is None:
        return None, None, "the worker was lost"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return None, name, f"the worker process was killed by {name}"
    return exit_code, None, f"the worker process exited with code {exit_code}"


def _died_row(key: str, entries: Sequence[Entry], exit_code: int | None,
              reason: str) -> dict[str, Any]:
    """The error row of a patient whose evaluation killed a worker: the id,
    how the worker ended, and nothing of the patient's data."""
    code, name, _ = describe_exit(exit_code)
    return {"kind": "patient", "patient": key, "error": "worker-died", "reason": reason,
            "exit_code": code, "signal": name, "resources": len(entries)}


class _Journal:
    """The keys of the patients a worker started to evaluate, one per line,
    each written unbuffered before the evaluation: the last line names the
    patient in flight when the process died (the kernel keeps what was
    written when a process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def start(self, key: str) -> None:
        os.write(self.fd, key.encode() + b"\n")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def in_flight(task: PartitionTask) -> str | None:
    """The patient whose evaluation was in flight when ``task``'s worker
    died (the last line of its journal), or None (no journal, or no patient
    started: the worker died before or between patients' evaluations)."""
    try:
        data = task.journal_path.read_bytes()
    except OSError:
        return None
    lines = data.split(b"\n")
    last = lines[-2] if len(lines) >= 2 and not lines[-1] else b""
    return last.decode("utf-8", "replace") or None


def _locate(entries: Sequence[Entry], rtype: str | None, rid: str | None
            ) -> tuple[int, int] | None:
    """The (source, line) of the resource an error names, when it can be found."""
    if rtype is None:
        return None
    for etype, source, number, _, payload in entries:
        if etype.lstrip(REDUCED) != rtype:
            continue
        if rid is None:
            return source, number
        try:
            found = orjson.loads(payload).get("id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if found == rid or (found is not None and not isinstance(found, str)
                            and str(found) == rid):  # a numeric id, as intake names it
            return source, number
    return None


def _record(entries: Sequence[Entry]) -> tuple[bytes, list[Any]]:
    """The patient's Bundle (:func:`record_bytes`) and the resources the spill
    reduced (:func:`reduced_resources`)."""
    return record_bytes(entries), reduced_resources(entries)


def _evaluate(record: tuple[bytes, list[Any]], ruleset: Any, as_of: Any, mode: str, key: str,
              evaluator: Callable[..., Any] | None = None) -> Any:
    """The patient's Assessment from its :func:`_record`: what
    :func:`cdss.evaluate` gives for its Bundle, the reduced resources handed
    to intake as known to contribute nothing; or the caller's ``evaluator``
    of the Bundle (a screen with an evaluator of its own reduces none)."""
    from cdss.evaluation import assess, extract_facts

    data, reduced = record
    if evaluator is not None:
        assessment = evaluator(data, ruleset=ruleset, as_of=as_of, mode=mode)
    else:
        assessment = assess(extract_facts(data, ruleset=ruleset, as_of=as_of, mode=mode,
                                          reduced=reduced), ruleset)
    if assessment.patient is None:  # only resources the facts do not use
        assessment = assessment.model_copy(update={"patient": key})
    return assessment


def flat_row(key: str, assessment: Any) -> dict[str, Any]:
    """The Parquet row of an Assessment: codes of what it concluded."""
    return {
        "patient": key, "status": "assessed",
        "highest_severity": assessment.highest_severity,
        "flags": [f.code for f in assessment.flags],
        "referrals": [r.code for r in assessment.referrals],
        "plan": [p.code for p in assessment.plan],
        "data_requests": [d.analyte for d in assessment.data_requests],
        "data_quality_notes": len(assessment.data_quality),
    }


def table_codes(ruleset: Any) -> dict[str, list[str]]:
    """Every flag, referral, plan item and requested analyte the ruleset can
    produce, by group: the fixed columns of the Parquet table, in order."""
    flags, referrals, requests = set(), set(), set()
    for rule in ruleset.file.rules:
        for action in rule.then:
            if action.flag:
                flags.add(action.flag.code)
            if action.referral:
                referrals.add(action.referral.code)
            if action.request:
                requests.add(action.request.analyte)
    return {"flag": sorted(flags), "referral": sorted(referrals),
            "plan": [item.code for item in ruleset.file.plan_items],
            "request": sorted(requests)}


def table_row(key: str, flat: Mapping[str, Any] | None, codes: Mapping[str, list[str]],
              error: tuple[str, str] | None = None) -> list[Any]:
    """A patient's row of the Parquet table, its cells in column order:
    patient, status, highest severity, data-quality notes, one cell per code
    of :func:`table_codes` (whether the Assessment has it; None for an
    error), error kind, error."""
    if flat is None:
        assert error is not None
        return [key, "error", None, None, *(None for names in codes.values() for _ in names),
                *error]
    cells: list[Any] = [key, "assessed", flat["highest_severity"], flat["data_quality_notes"]]
    for group, field_name in (("flag", "flags"), ("referral", "referrals"), ("plan", "plan"),
                              ("request", "data_requests")):
        present = set(flat[field_name])
        cells += [code in present for code in codes[group]]
    return [*cells, None, None]


class _Out:
    """A partition result file, written under a temporary name, then renamed."""

    def __init__(self, folder: Path, name: str) -> None:
        self.final = folder / name
        self.tmp = folder / f"{name}.tmp"
        self.handle: IO[bytes] = self.tmp.open("wb", buffering=1 << 16)

    def write(self, key: str, payload: bytes) -> None:
        self.handle.write(key.encode() + b"\t" + payload + b"\n")

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def run_partition(task: PartitionTask) -> PartitionCounts:
    """Evaluate one partition and write its results; return its counts (also
    written as the partition's done marker)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    if task.tune_malloc:
        tune_malloc()
    from cdss.evaluation import resolve_as_of

    if task.kind not in ("screen", "diff"):
        raise CDSSError(f"unknown partition task kind {task.kind!r}")
    rulesets = [_ruleset(key, data) for key, data in task.rulesets]
    as_of = resolve_as_of(task.as_of)
    out_dir = Path(task.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _read_groups(task.spills or ((task.spill, 0, -1, 0),))
    if task.only:
        groups = {key: groups[key] for key in task.only if key in groups}
    journal = _Journal(task.journal_path)
    try:
        if task.kind == "screen":
            counts = _screen(task, groups, rulesets[0], as_of, out_dir, journal)
        else:
            counts = _diff(task, groups, rulesets[0], rulesets[1], as_of, out_dir, journal)
    finally:
        journal.close()
    counts = replace(counts, partition=task.partition,
                     resources=sum(len(v) for v in groups.values()),
                     seconds=round(time.perf_counter() - started, 6), pid=os.getpid(),
                     peak_rss_mb=peak_rss_mb(),
                     cpu_seconds=round(time.process_time() - cpu_started, 6))
    write_atomic(task.done_path, counts.to_json())
    task.journal_path.unlink(missing_ok=True)
    return counts


_REDUCERS: dict[tuple[str, ...], Any] = {}


def run_spill(task: SpillTask) -> Any:
    """Spill one chunk; return its :class:`cdss.cohort._inputs.ChunkResult`."""
    from cdss.cohort._inputs import Reducer, spill_chunk

    reducer = None
    if task.reduce:
        keys = tuple(key for key, _ in task.rulesets)
        reducer = _REDUCERS.get(keys)
        if reducer is None:
            rulesets = [_ruleset(key, data) for key, data in task.rulesets]
            reducer = _REDUCERS[keys] = Reducer([r.terminology for r in rulesets])
    return spill_chunk(task.chunk, Path(task.folder), task.partitions, reduce=reducer)


def die_with_parent(parent: int | None) -> bool:
    """Have the kernel kill this process (SIGKILL) when the process that
    started it, ``parent``, dies (Linux: ``prctl(PR_SET_PDEATHSIG)``); exit
    at once when it has died already. Returns whether it applied.

    A screen's worker would otherwise go on with its partition after the
    screen was killed (``kill -9``, an out-of-memory kill of the screen's
    process), and a ``--resume`` started meanwhile would evaluate the same
    partition and race it over the partition's files. (The kernel sends the
    signal when the *thread* that started the process ends: a screen starts,
    uses and stops its workers in the thread that runs it.) Elsewhere than
    Linux a worker ends when it next finds the caller gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:  # died before the prctl
        os._exit(1)
    return True


def worker_loop(conn: Any, parent: int | None = None, announce: bool = False) -> None:
    """The loop of a local worker process: :func:`die_with_parent` (the
    caller's process id ``parent``), :func:`warm_up` (and, with
    ``announce``, send ``("ready", pid, None)`` once warm), then receive a
    :class:`SpillTask` or a :class:`PartitionTask` on ``conn`` (a
    :mod:`multiprocessing` connection), run it, send back ``("done",
    ChunkResult or PartitionCounts, None)`` or ``("failed", "Type: message",
    pickled exception or None)``; stop on ``None`` or when the caller has
    gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    die_with_parent(parent)
    warm_up()
    settle_gc()
    if announce:
        try:
            conn.send(("ready", os.getpid(), None))
        except (OSError, ValueError):
            return
    while True:
        message: tuple[str, Any, bytes | None]
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # e.g. an evaluator this process cannot import
            message = ("failed", f"the worker cannot read its task ({type(exc).__name__}: "
                       f"{exc}); an evaluator must be a module-level function of a module "
                       "the worker processes can import", None)
        else:
            if task is None:
                return
            message = _run_reported(task)
        try:
            conn.send(message)
        except (OSError, ValueError):
            return
        settle_gc()  # while the caller reads the result


def _run_reported(task: PartitionTask | SpillTask) -> tuple[str, Any, bytes | None]:
    try:
        if isinstance(task, SpillTask):
            return "done", run_spill(task), None
        return "done", run_partition(task), None
    except Exception as exc:
        try:
            pickled: bytes | None = pickle.dumps(exc)
        except Exception:
            pickled = None
        return "failed", f"{type(exc).__name__}: {exc}", pickled


def _counter(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _patient_json(entries: Sequence[Entry]) -> bytes | None:
    """The patient's Patient resource (JSON), when the record has one."""
    return next((payload for rtype, _, _, _, payload in entries if rtype == "Patient"), None)


def _screen(task: PartitionTask, groups: Mapping[str, list[Entry]], ruleset: Any, as_of: Any,
            out_dir: Path, journal: _Journal) -> PartitionCounts:
    from cdss.cohort._fhir_bulk import partition_lines
    from cdss.cohort._worklist import demographics, flag_tally_key, on_worklist, sort_key
    from cdss.cohort._worklist import worklist_row as make_worklist_row

    name = f"p{task.partition:05d}"
    outs = [_Out(out_dir, f"{name}.{suffix}")
            for suffix in ("assessments", "rows", "errors", "worklist")]
    assessments, rows, errors, worklist = outs
    fhir = _Out(out_dir, f"{name}.fhir") if "fhir" in task.formats else None
    if fhir is not None:
        outs.append(fhir)
    worklist_rows: list[tuple[str, bytes]] = []  # sorted by the worklist order at the end
    bands: Counter[str] = Counter()
    sexes: Counter[str] = Counter()
    by_band: Counter[str] = Counter()
    by_sex: Counter[str] = Counter()
    as_of_date = as_of.date()
    flags: Counter[str] = Counter()
    severity: Counter[str] = Counter()
    referrals: Counter[str] = Counter()
    plan: Counter[str] = Counter()
    requests: Counter[str] = Counter()
    error_kinds: Counter[str] = Counter()
    unmapped: Counter[str] = Counter()
    unmapped_displays: Counter[str] = Counter()
    assessed = failed = left_out = 0
    died = {key: (code, reason) for key, code, reason in task.died}
    codes = table_codes(ruleset)
    try:
        for key in sorted(groups):
            entries = groups[key]
            row: dict[str, Any] | None = None
            if key in died:  # its evaluation killed a worker: not again
                row = _died_row(key, entries, *died[key])
            else:
                journal.start(key)
                try:
                    assessment = _evaluate(_record(entries), ruleset, as_of, task.mode, key,
                                           task.evaluator)
                except Exception as exc:  # a patient that fails is an error row, never lost
                    row = _error_row(task, key, entries, exc)
            if row is not None:
                errors.write(key, orjson.dumps(row, option=_SORT))
                rows.write(key, orjson.dumps(table_row(key, None, codes,
                                                       (row["error"], row["reason"]))))
                error_kinds[row["error"]] += 1
                failed += 1
                continue
            assessments.write(key, assessment.to_json())
            if fhir is not None:
                for line in partition_lines(key, assessment):
                    fhir.write(key, line)
            for row in _left_out_rows(task, key, entries, assessment):
                errors.write(key, orjson.dumps(row, option=_SORT))
                error_kinds["left-out"] += 1
                left_out += 1
            unmapped_notes = [n for n in assessment.data_quality
                              if n.code == "unmapped-code" and n.coding]
            unmapped.update({n.coding for n in unmapped_notes})
            unmapped_displays.update({f"{n.coding}\t{n.display}" for n in unmapped_notes
                                      if n.display})
            flat = flat_row(key, assessment)
            rows.write(key, orjson.dumps(table_row(key, flat, codes)))
            flags.update(flat["flags"])
            referrals.update(flat["referrals"])
            plan.update(flat["plan"])
            requests.update(flat["data_requests"])
            severity[flat["highest_severity"] or "none"] += 1
            band, sex = demographics(_patient_json(entries), as_of_date)
            bands[band] += 1
            sexes[sex] += 1
            by_band.update(flag_tally_key(code, band) for code in flat["flags"])
            by_sex.update(flag_tally_key(code, sex) for code in flat["flags"])
            if on_worklist(assessment):
                worklist_rows.append((sort_key(key, assessment),
                                      orjson.dumps(make_worklist_row(key, assessment))))
            assessed += 1
        for order, payload in sorted(worklist_rows):
            worklist.write(order, payload)
        for out in outs:
            out.commit()
    except BaseException:
        for out in outs:
            out.abort()
        raise
    tallies = {"flags": flags, "severity": severity, "referrals": referrals, "plan": plan,
               "data_requests": requests, "errors_by_kind": error_kinds,
               "unmapped_codes": unmapped, "age_bands": bands, "sexes": sexes,
               "flags_by_age_band": by_band, "flags_by_sex": by_sex,
               "unmapped_displays": unmapped_displays}
    return PartitionCounts(kind="screen", patients=len(groups), assessed=assessed,
                           errors=failed, left_out=left_out,
                           tallies={k: dict(sorted(v.items())) for k, v in tallies.items()})


# --------------------------------------------------------------------------- #
# Version diff
# --------------------------------------------------------------------------- #
def _diff(task: PartitionTask, groups: Mapping[str, list[Entry]], before_rs: Any,
          after_rs: Any, as_of: Any, out_dir: Path, journal: _Journal) -> PartitionCounts:
    out = _Out(out_dir, f"p{task.partition:05d}.diff")
    changed = failed = 0
    tallies: dict[str, Counter[str]] = {name: Counter() for name in DIFF_TALLIES}
    died = {key: (code, reason) for key, code, reason in task.died}
    try:
        for key in sorted(groups):
            entries = groups[key]
            results: list[Any] = []
            if key in died:  # its evaluation (either version) killed a worker
                results = [_died_row(key, entries, *died[key])] * 2
            else:
                journal.start(key)
                record = _record(entries)
                for ruleset in (before_rs, after_rs):
                    try:
                        results.append(_evaluate(record, ruleset, as_of, task.mode, key,
                                                 task.evaluator))
                    except Exception as exc:  # reported, never lost
                        results.append(_error_row(task, key, entries, exc))
            if any(isinstance(r, dict) for r in results):
                row = {"patient": key, "error": {
                    side: (r["reason"] if isinstance(r, dict) else None)
                    for side, r in zip(("from", "to"), results, strict=True)}}
                out.write(key, orjson.dumps(row, option=_SORT))
                failed += 1
                continue
            change = compare(*results)
            if not change:
                continue
            changed += 1
            rules = rule_changes(*results)
            out.write(key, orjson.dumps({"patient": key, **change, "rules": rules},
                                        option=_SORT))
            for how in ("gained", "lost", "changed"):
                tallies[f"rules_{how}"].update({r["rule"] for r in rules if r["change"] == how})
            tallies["rule_items"].update(
                f"{r['rule']} {r['change']} {r['item']} {r['code']}" for r in rules)
            for group in ("flags", "plan", "referrals", "data_requests"):
                for how in ("added", "removed"):
                    tallies[f"{group}_{how}"].update(change.get(group, {}).get(how, ()))
            tallies["plan_modified"].update(change.get("plan", {}).get("modified", ()))
            tallies["severity_changed"].update(
                f"{s['code']}: {s['from']} -> {s['to']}"
                for s in change.get("flags", {}).get("severity", ()))
        out.commit()
    except BaseException:
        out.abort()
        raise
    return PartitionCounts(kind="diff", patients=len(groups), changed=changed, errors=failed,
                           unchanged=len(groups) - changed - failed,
                           tallies={name: dict(sorted(c.items()))
                                    for name, c in tallies.items()})
