"""Cohort screens: a ruleset over every patient of a FHIR bulk export.

:func:`screen` runs in three steps, each bounded in memory:

1. **Spill** (:mod:`cdss.cohort._inputs`): read every resource of the inputs
   once and put it in one of ``N`` partitions by a stable hash of its patient
   reference, so that a partition holds whole patients; resources that belong
   to no patient become error rows, and those no rule can read are reduced.
   The spill runs in chunks (byte ranges of large NDJSON files) in the worker
   processes, put together in input order (:func:`_spill`).
2. **Evaluate** (:mod:`cdss.cohort._worker`): one task per partition, run in
   worker processes (one per core, ``spawn`` context: durable-rules is not
   thread-safe) or on a Dask cluster; each writes its results atomically and
   then a done marker. A worker process that dies while evaluating a patient
   costs that patient a ``worker-died`` error row, not the screen
   (:class:`_Containment`).
3. **Merge**: the partitions' sorted results are merged into
   ``assessments.ndjson`` (one Assessment per line), ``assessments.parquet``
   (one flat row per patient), ``errors.ndjson``, ``summary.json`` and
   ``report.html``, all sorted by patient reference, and ``worklist.csv`` and
   ``worklist.parquet``: the patients to act on, most severe first
   (:mod:`cdss.cohort._worklist`; each partition writes its rows in that
   order, so the merge streams them). ``run.json`` holds what measures the
   run (timings, peak memory, whether it was resumed); every other file is
   the same bytes for the same inputs, ruleset and as-of date, resumed or not.

Every patient seen gets exactly one row, an Assessment or an error, and the
counts are checked (patients seen = assessments + patient errors) before the
results are published. ``resume=True`` continues an interrupted screen: the
spill is reused when it finished, and partitions with a done marker are not
evaluated again, so no patient is lost or counted twice.

:func:`diff` runs two versions of a ruleset over a cohort and reports the
patients whose flags, referrals, plan or data requests change, and how.

Dask and pyarrow are imported only when used (the ``cohort`` extra).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
import pickle
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from cdss.cohort._fhir_bulk import FHIR_FOLDER, MANIFEST, remove_bulk, write_bulk
from cdss.cohort._inputs import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    ChunkResult,
    InputFile,
    Reducer,
    SpillChunk,
    SpillLayout,
    assemble,
    discover,
    input_bytes,
    plan_chunks,
    spill_chunk,
)
from cdss.cohort._worker import (
    DIFF_TALLIES,
    PartitionCounts,
    PartitionTask,
    SpillTask,
    TaskKind,
    describe_exit,
    in_flight,
    peak_rss_mb,
    run_partition,
    table_codes,
    write_atomic,
)
from cdss.cohort._worklist import (
    AGE_BANDS,
    SEXES,
    WorklistHead,
    ordered,
    split_tally,
    write_worklist,
)
from cdss.errors import CohortError, InvalidArgument
from cdss.rulesets import Ruleset

__all__ = ["EXECUTORS", "FORMATS", "DiffReport", "ScreenSummary", "diff", "screen"]

#: Called with each partition's counts as it is done.
OnDone = Callable[[PartitionCounts], None]

#: Where partitions are evaluated.
EXECUTORS = ("local", "dask")
#: The outputs a screen can write besides its own (``formats``): ``fhir`` is
#: FHIR Bulk Data NDJSON in ``fhir/`` (see :mod:`cdss.cohort._fhir_bulk`).
FORMATS = ("fhir",)
#: Target size of one partition's input (uncompressed): bounds worker memory.
PARTITION_BYTES = 16 * 1024 * 1024
MAX_PARTITIONS = 512
_WORK = ".cdss-screen"
#: 2: the spill is in chunks (``spill-layout.json``)
_STATE_VERSION = 2
_OUTPUTS = ("assessments.ndjson", "assessments.parquet", "errors.ndjson", "summary.json",
            "report.html", "worklist.csv", "worklist.parquet", "run.json")
#: The summary's fields that measure the run rather than its results: in
#: ``run.json``, never in ``summary.json`` or ``report.html``, so that those
#: are the same bytes for the same inputs, resumed or not.
RUN_FIELDS = ("timings", "memory", "resumed")
_SORT = orjson.OPT_SORT_KEYS
#: How many worklist rows a screen's report shows by default.
WORKLIST_SHOWN = 500


# --------------------------------------------------------------------------- #
# Results
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ScreenSummary:
    """What a screen did: counts, prevalence, errors, identity and timings.

    The same content is in ``summary.json`` (the results) and ``run.json``
    (:data:`RUN_FIELDS`: the run's timings, peak memory and whether it was
    resumed). ``balanced`` is the check that every patient seen has exactly
    one row (an Assessment or an error).
    """

    out: Path
    ruleset: dict[str, str]
    as_of: str
    mode: str
    executor: str
    workers: int
    partitions: int
    patients: int
    assessed: int
    patient_errors: int
    resource_errors: int
    file_errors: int
    resources: dict[str, Any]
    flags: dict[str, int]
    severity: dict[str, int]
    referrals: dict[str, int]
    plan: dict[str, int]
    data_requests: dict[str, int]
    errors_by_kind: dict[str, int]
    timings: dict[str, float]
    resumed: bool = False
    #: codes that matched no value set: ``system|code`` -> patients, most frequent first
    unmapped_codes: dict[str, int] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    memory: dict[str, float | None] = field(default_factory=dict)
    #: assessed patients by age band and sex, and each flag's patients in each
    #: (``age_bands``, ``sexes``, ``flags_by_age_band``, ``flags_by_sex``)
    demographics: dict[str, Any] = field(default_factory=dict)
    #: the worklist: ``patients`` on it, ``identifiers`` (whether it names them),
    #: ``shown`` (rows in the report)
    worklist: dict[str, Any] = field(default_factory=dict)
    #: the ruleset's display names by code: ``flags``, ``referrals``, ``plan``,
    #: ``data_requests``
    displays: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Patients seen = assessments + patient error rows."""
        return self.patients == self.assessed + self.patient_errors

    @property
    def files(self) -> dict[str, Path]:
        """The result files by name."""
        return {name: self.out / name for name in _OUTPUTS}

    def prevalence(self, code: str) -> float:
        """The share of assessed patients with flag ``code``."""
        return self.flags.get(code, 0) / self.assessed if self.assessed else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data: the content of ``summary.json`` and,
        under :data:`RUN_FIELDS`, of ``run.json``."""
        return {
            "ruleset": self.ruleset, "as_of": self.as_of, "mode": self.mode,
            "executor": self.executor, "workers": self.workers, "partitions": self.partitions,
            "inputs": list(self.inputs),
            "counts": {"patients": self.patients, "assessments": self.assessed,
                       "patient_errors": self.patient_errors,
                       "resource_errors": self.resource_errors,
                       "file_errors": self.file_errors, "balanced": self.balanced},
            "resources": self.resources,
            "flags": {code: {"patients": n, "prevalence": round(self.prevalence(code), 6)}
                      for code, n in self.flags.items()},
            "highest_severity": self.severity, "referrals": self.referrals,
            "plan": self.plan, "data_requests": self.data_requests,
            "errors_by_kind": self.errors_by_kind, "unmapped_codes": self.unmapped_codes,
            "timings": self.timings, "memory": self.memory, "resumed": self.resumed,
            "demographics": self.demographics, "worklist": self.worklist,
            "displays": self.displays,
        }

    @classmethod
    def read(cls, out: Path) -> ScreenSummary:
        """The summary of the finished screen in ``out`` (``summary.json`` and
        ``run.json``)."""
        data = orjson.loads((out / "summary.json").read_bytes())
        run = out / "run.json"
        return cls.from_dict(out, {**data, **(orjson.loads(run.read_bytes())
                                              if run.exists() else {})})

    @classmethod
    def from_dict(cls, out: Path, data: Mapping[str, Any]) -> ScreenSummary:
        counts = data["counts"]
        return cls(
            out=out, ruleset=dict(data["ruleset"]), as_of=data["as_of"], mode=data["mode"],
            executor=data["executor"], workers=data["workers"], partitions=data["partitions"],
            patients=counts["patients"], assessed=counts["assessments"],
            patient_errors=counts["patient_errors"], resource_errors=counts["resource_errors"],
            file_errors=counts["file_errors"], resources=dict(data["resources"]),
            flags={code: v["patients"] for code, v in data["flags"].items()},
            severity=dict(data["highest_severity"]), referrals=dict(data["referrals"]),
            plan=dict(data["plan"]), data_requests=dict(data["data_requests"]),
            errors_by_kind=dict(data["errors_by_kind"]), timings=dict(data.get("timings", {})),
            resumed=bool(data.get("resumed")), inputs=tuple(data.get("inputs", ())),
            memory=dict(data.get("memory", {})),
            unmapped_codes=dict(data.get("unmapped_codes", {})),
            demographics=dict(data.get("demographics", {})),
            worklist=dict(data.get("worklist", {})), displays=dict(data.get("displays", {})),
        )


@dataclass(frozen=True)
class DiffReport:
    """Which patients' results change between two ruleset versions, and how.

    ``changes`` holds one entry per patient whose flags, referrals, plan,
    suppressions or data requests differ (or who failed in either version),
    sorted by patient reference, each with the rules behind it (``rules``:
    see :func:`cdss._changes.rule_changes`); ``tallies`` counts each change
    by code and by rule; ``rule_titles`` gives the title of every rule of
    either version (the newer version's where both have it) and
    ``item_labels`` the display each rule gives its flags and referrals
    (``"rule flag code"``, ``"rule referral code"``; the newer version's).
    """

    from_ruleset: dict[str, str]
    to_ruleset: dict[str, str]
    as_of: str
    mode: str
    patients: int
    changed: int
    unchanged: int
    errors: int
    resource_errors: int
    tallies: dict[str, dict[str, int]]
    changes: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    rule_titles: dict[str, str] = field(default_factory=dict)
    item_labels: dict[str, str] = field(default_factory=dict)

    def rules(self) -> dict[str, dict[str, Any]]:
        """Per rule whose results change: its title, the patients with an item
        of it gained, lost or changed, and each item's change (see
        :func:`cdss.cohort._diff_report.rule_summary`)."""
        from cdss.cohort._diff_report import rule_summary

        return rule_summary(self.tallies, self.rule_titles)

    def to_html(self, *, identifiers: bool = True, examples: int = 3) -> str:
        """The report as one self-contained HTML page a clinician can read:
        per rule, what its patients gained and lost, with up to ``examples``
        example patients (their references left out with ``identifiers=False``)."""
        from cdss.cohort._diff_report import render_html

        return render_html(self, identifiers=identifiers, examples=examples)

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_ruleset, "to": self.to_ruleset, "as_of": self.as_of,
                "mode": self.mode,
                "counts": {"patients": self.patients, "changed": self.changed,
                           "unchanged": self.unchanged, "errors": self.errors,
                           "resource_errors": self.resource_errors},
                "tallies": self.tallies, "rules": self.rules(), "changes": self.changes,
                "timings": self.timings}

    def to_json(self, *, indent: bool = True) -> bytes:
        """Deterministic JSON apart from ``timings``: sorted keys."""
        option = _SORT | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(self.to_dict(), option=option)


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #
def _identity(ruleset: Ruleset) -> dict[str, str]:
    return {"id": ruleset.id, "version": ruleset.version, "sha256": ruleset.sha256,
            "title": ruleset.file.title}


def _check_common(mode: str, executor: str, workers: int | None, partitions: int | None,
                  evaluator: Any = None) -> int:
    from cdss.intake import MODES

    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
    if executor not in EXECUTORS:
        raise InvalidArgument(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgument(f"workers must be a whole number >= 0, got {workers!r}")
    if evaluator is not None and not callable(evaluator):
        raise InvalidArgument(f"evaluator must be a function, got {evaluator!r}")
    if evaluator is not None and executor == "local" and workers > 0:
        try:  # sent to the worker processes by name
            pickle.dumps(evaluator)
        except Exception as exc:
            raise InvalidArgument(f"evaluator {evaluator!r} cannot be sent to worker "
                                  "processes: it must be a module-level function of an "
                                  f"importable module ({exc})") from exc
    if partitions is not None and (isinstance(partitions, bool) or not isinstance(
            partitions, int) or not 1 <= partitions <= 100_000):
        raise InvalidArgument(f"partitions must be a whole number >= 1, got {partitions!r}")
    return workers


def _partition_count(sources: Sequence[InputFile], workers: int) -> int:
    """Enough partitions to keep each near PARTITION_BYTES, and at least four
    per worker so that the work balances."""
    by_size = math.ceil(input_bytes(sources) / PARTITION_BYTES)
    return max(1, min(MAX_PARTITIONS, max(by_size, 4 * max(1, workers))))


def _as_of_text(as_of: datetime | date | str) -> str:
    from cdss.evaluation import resolve_as_of

    if as_of is None:
        raise InvalidArgument("as_of is required: a screen is reproducible only at a fixed "
                              "time (e.g. '2026-03-01')")
    return resolve_as_of(as_of).isoformat()


# --------------------------------------------------------------------------- #
# Progress
# --------------------------------------------------------------------------- #
class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))
        self.tasks: dict[str, Any] = {}
        self.formats: dict[str, str] = {}

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def add(self, name: str, description: str, total: float, completed: float = 0,
            note: str = "{completed:,.0f}/{total:,.0f}") -> None:
        """A bar; ``note`` formats ``completed``, ``total`` and ``extra``."""
        if self.bar is not None:
            self.formats[name] = note
            self.tasks[name] = self.bar.add_task(description, total=total, completed=completed,
                                                 note=note.format(completed=completed,
                                                                  total=total, extra=""))

    def advance(self, name: str, amount: float = 1, extra: str = "") -> None:
        if self.bar is not None and name in self.tasks:
            task_id = self.tasks[name]
            self.bar.advance(task_id, amount)
            task = self.bar.tasks[task_id]
            self.bar.update(task_id, note=self.formats[name].format(
                completed=task.completed, total=task.total, extra=extra))


# --------------------------------------------------------------------------- #
# Running partitions
# --------------------------------------------------------------------------- #
#: Worker deaths in one partition not tied to a patient before the screen stops.
MAX_UNEXPLAINED_DEATHS = 3


class _Containment:
    """What to run after a worker process died on a partition.

    The partition's journal names the patient in flight. That patient is
    evaluated alone in a fresh worker: if the worker dies again, the patient
    is the cause, and the partition runs again with the patient as a
    ``worker-died`` error row (:attr:`PartitionTask.died`). If it survives
    alone, the partition runs again as it was; should it die again with the
    same patient in flight, that patient is the cause after all (its
    evaluation kills a worker only after others'). Deaths not tied to a
    patient (none in flight, or another each time) stop the screen after
    :data:`MAX_UNEXPLAINED_DEATHS`, as something other than the data is then
    killing the workers.
    """

    def __init__(self, tasks: Sequence[PartitionTask], executor: str) -> None:
        self.tasks = {t.partition: t for t in tasks}
        self.executor = executor
        self.blamed: dict[int, dict[str, tuple[int | None, str]]] = {}
        self.suspects: dict[int, set[str]] = {}
        self.unexplained: dict[int, list[tuple[str | None, str]]] = {}

    def _retry(self, partition: int) -> PartitionTask:
        died = self.blamed.get(partition, {})
        return replace(self.tasks[partition],
                       died=tuple((key, code, why) for key, (code, why) in sorted(died.items())))

    def _isolate(self, partition: int, key: str) -> PartitionTask:
        task = self.tasks[partition]
        return replace(task, only=(key,), died=(),
                       out_dir=str(Path(task.out_dir) / f"isolate-p{partition:05d}"))

    def _what(self, exit_code: int | None) -> str:
        if self.executor == "dask":
            return "the Dask worker was lost (KilledWorker)"
        return describe_exit(exit_code)[2]

    def _unexplained(self, partition: int, key: str | None, what: str) -> None:
        deaths = self.unexplained.setdefault(partition, [])
        deaths.append((key, what))
        if len(deaths) >= MAX_UNEXPLAINED_DEATHS:
            raise CohortError(
                f"worker processes died {len(deaths)} times while screening partition "
                f"{partition}, not on any one patient ({'; '.join(w for _, w in deaths)}); "
                "finished partitions are kept: run again with --resume")

    def died(self, task: PartitionTask, exit_code: int | None) -> tuple[PartitionTask, bool]:
        """The task to run after ``task``'s worker died, and whether it needs
        a fresh worker process; raises CohortError after too many deaths no
        patient explains."""
        partition, what = task.partition, self._what(exit_code)
        if task.only:  # the patient alone killed a fresh worker: the cause
            shutil.rmtree(task.out_dir, ignore_errors=True)
            alone = "alone in a fresh worker" if self.executor == "local" else "alone"
            self.blamed.setdefault(partition, {})[task.only[0]] = (exit_code, (
                f"{what} while evaluating this patient, and again when it was evaluated "
                f"{alone}; the patient was not assessed"))
            return self._retry(partition), False
        key = in_flight(task)
        if key is None:
            self._unexplained(partition, None, f"{what} with no patient in flight")
            return self._retry(partition), False
        if key in self.suspects.get(partition, ()):  # its first death is explained now
            self.unexplained[partition] = [
                (k, w) for k, w in self.unexplained.get(partition, []) if k != key]
            self.blamed.setdefault(partition, {})[key] = (exit_code, (
                f"{what} while evaluating this patient, twice in its partition (evaluated "
                "alone, it did not); the patient was not assessed"))
            return self._retry(partition), False
        return self._isolate(partition, key), True

    def finished(self, task: PartitionTask) -> PartitionTask | None:
        """The task to run after ``task`` finished, or None when its partition is done."""
        if not task.only:
            return None
        shutil.rmtree(task.out_dir, ignore_errors=True)
        key = task.only[0]
        self.suspects.setdefault(task.partition, set()).add(key)
        self._unexplained(task.partition, key, f"a worker died with {key} in flight, "
                                               "which evaluated alone did not kill one")
        return self._retry(task.partition)


def _run_tasks(tasks: Sequence[PartitionTask], *, executor: str, workers: int, client: Any,
               scheduler: str | None, work: Path, on_done: OnDone,
               prestarted: _Prestarted | None = None) -> None:
    """Run ``tasks`` inline (``workers=0``), in ``spawn`` worker processes (those
    ``prestarted`` before the spill first), or on a Dask cluster; call
    ``on_done(counts)`` as each partition is done. A worker that dies costs
    the patient in flight an error row (see :class:`_Containment`); inline,
    nothing can survive the process dying."""
    if not tasks:
        return
    if executor == "dask":
        _run_dask(tasks, client=client, scheduler=scheduler, work=work, on_done=on_done)
        return
    if workers == 0:
        for task in tasks:
            on_done(run_partition(task))
        return
    _run_local(tasks, workers=workers, on_done=on_done,
               pool=prestarted.take() if prestarted is not None else None)


def _pickled(rulesets: Sequence[Ruleset]) -> tuple[tuple[str, bytes], ...]:
    return tuple((r.key, pickle.dumps(r)) for r in rulesets)


class _Prestarted:
    """Local worker processes started before the spill pass, so that their
    start-up (spawn, imports, loading the unit registry: about a second each,
    see :func:`cdss.cohort._worker.warm_up`) overlaps the spill, which this
    process runs until they are warm and they run after. :func:`_run_local`
    takes them over; those not taken (the spill failed, or every partition
    was reused) are stopped on exit."""

    def __init__(self, count: int) -> None:
        import multiprocessing

        self.workers: list[_LocalWorker] = []
        if count > 0:
            context = multiprocessing.get_context("spawn")
            self.workers = [_LocalWorker(context, announce=True) for _ in range(count)]

    def take(self) -> list[_LocalWorker]:
        taken, self.workers = self.workers, []
        return taken

    def __enter__(self) -> _Prestarted:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.take():
            worker.stop()


def _prestart_count(executor: str, workers: int, partitions: int, resumed: bool) -> int:
    """How many worker processes to start before the spill: for a fresh local
    screen, one per worker (no more than there are partitions); they spill
    chunks while they start, then evaluate. None on Dask, inline
    (``workers=0``), or on resume (the spill and partitions may be done)."""
    if executor != "local" or resumed:
        return 0
    return max(0, min(workers, partitions))


class _LocalWorker:
    """One worker process running :func:`cdss.cohort._worker.worker_loop`."""

    def __init__(self, context: Any, *, announce: bool = False) -> None:
        from cdss.cohort._worker import worker_loop

        # nothing large in the arguments: spawn writes them to the child's pipe, and
        # more than a pipe holds would block here until the child has started
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_loop, args=(child, os.getpid(), announce),
                                       daemon=True, name="cdss-screen-worker")
        #: warm: it said so (``announce``), or it was not asked to
        self.ready = not announce
        self.process.start()
        child.close()
        self.task: PartitionTask | None = None
        self.fresh = True  # has run nothing yet

    def send(self, task: SpillTask) -> bool:
        """Send a spill chunk (the process is no longer fresh)."""
        try:
            self.conn.send(task)
        except (OSError, ValueError):
            return False
        self.fresh = False
        return True

    def run(self, task: PartitionTask) -> bool:
        task.journal_path.unlink(missing_ok=True)  # never read an earlier run's journal
        try:
            self.conn.send(task)
        except (OSError, ValueError):
            return False
        self.task, self.fresh = task, False
        return True

    def receive(self) -> tuple[str, Any, bytes | None] | None:
        """The task's result, or None when the process died without one."""
        try:
            if self.conn.poll():
                message: tuple[str, Any, bytes | None] = self.conn.recv()
                return message
        except (EOFError, OSError):
            pass
        return None

    def stop(self, *, kill: bool = False) -> int | None:
        """End the process (asked, or terminated); return its exit code."""
        if not kill and self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        if self.process.is_alive():  # pragma: no cover - a process that ignores SIGTERM
            self.process.kill()
            self.process.join()
        code: int | None = self.process.exitcode
        self.conn.close()
        self.process.close()
        return code


def _run_local(tasks: Sequence[PartitionTask], *, workers: int, on_done: OnDone,
               pool: list[_LocalWorker] | None = None) -> None:
    """Run ``tasks`` in at most ``workers`` processes of our own (not a
    ProcessPoolExecutor, which breaks as a whole when one process dies and
    cannot say which), starting with those in ``pool`` (started earlier, none
    of which has run a task): a dead process is replaced, and its partition
    handled by :class:`_Containment` while the others carry on."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    contain = _Containment(tasks, "local")
    queue: deque[tuple[PartitionTask, bool]] = deque((task, False) for task in tasks)
    slots = max(1, min(workers, len(tasks)))
    pool = list(pool or [])
    failure: CohortError | None = None
    lost = 0  # processes gone before they could take a task

    def dispatch() -> None:
        nonlocal lost
        while queue and failure is None:
            task, fresh = queue[0]
            idle = [w for w in pool if w.task is None]
            worker = next((w for w in idle if w.fresh), None) if fresh else (
                idle[0] if idle else None)
            if worker is None and fresh and len(pool) >= slots and idle:
                pool.remove(idle[0])  # make room for a fresh process
                idle[0].stop()
            if worker is None and len(pool) < slots:
                worker = _LocalWorker(context)
                pool.append(worker)
            if worker is None:
                return
            if worker.run(task):
                queue.popleft()
                continue
            pool.remove(worker)  # the process has gone: try another
            worker.stop(kill=True)
            lost += 1
            if lost >= MAX_UNEXPLAINED_DEATHS:
                raise CohortError(f"{lost} worker processes died before they could take "
                                  "a partition; finished partitions are kept: run again "
                                  "with --resume")

    completed = False
    try:
        while True:
            dispatch()
            busy = [w for w in pool if w.task is not None]
            if not busy:
                break
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                task = worker.task
                assert task is not None
                worker.task = None
                message = worker.receive()
                exit_code: int | None = None
                if message is None or worker.process.sentinel in ready:
                    pool.remove(worker)
                    exit_code = worker.stop(kill=True)
                if failure is not None:
                    continue
                try:
                    if message is None:
                        if task.done_path.exists() and not task.only:  # died when done
                            on_done(PartitionCounts.from_json(task.done_path.read_bytes()))
                            continue
                        queue.appendleft(contain.died(task, exit_code))
                    elif message[0] == "done":
                        follow = contain.finished(task)
                        if follow is None:
                            on_done(message[1])
                        else:
                            queue.appendleft((follow, False))
                    else:
                        failure = _task_failed(task, message[1], message[2])
                except CohortError as exc:
                    failure = exc
        if failure is not None:
            raise failure
        completed = True
    finally:
        for worker in pool:
            worker.stop(kill=not completed)


def _task_failed(task: PartitionTask, what: str, pickled: bytes | None) -> CohortError:
    error = CohortError(f"partition {task.partition} failed: {what}; finished partitions "
                        "are kept: run again with --resume")
    if pickled is not None:
        with contextlib.suppress(Exception):
            error.__cause__ = pickle.loads(pickled)  # from our own worker process
    return error


def _run_dask(tasks: Sequence[PartitionTask], *, client: Any, scheduler: str | None,
              work: Path, on_done: OnDone) -> None:
    try:
        from dask.distributed import Client, KilledWorker, as_completed
    except ImportError as exc:
        raise CohortError("executor='dask' needs dask[distributed]: pip install "
                          "'cdss-fhir[cohort]'") from exc
    own = client is None
    if own:
        if not scheduler:
            raise CohortError("executor='dask' needs a scheduler address (--scheduler) or a "
                              "dask.distributed Client (client=)")
        try:
            client = Client(scheduler, timeout="30s")  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise CohortError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    try:
        seen = client.run(os.path.isdir, str(work))
        missing = sorted(w for w, ok in seen.items() if not ok)
        if not seen or missing:
            raise CohortError(f"Dask workers {missing or '(none)'} cannot see {work}: the "
                              "output folder must be on storage shared with the workers")
        contain = _Containment(tasks, "dask")
        for task in tasks:  # never read an interrupted run's journal
            task.journal_path.unlink(missing_ok=True)
        futures = client.map(run_partition, list(tasks), pure=False)
        by_future = dict(zip(futures, tasks, strict=True))
        running = as_completed(futures)  # type: ignore[no-untyped-call]

        def submit(task: PartitionTask) -> None:
            task.journal_path.unlink(missing_ok=True)
            future = client.submit(run_partition, task, pure=False)
            by_future[future] = task
            running.add(future)  # type: ignore[no-untyped-call]

        try:
            for future in running:
                task = by_future.pop(future)
                try:
                    counts = future.result()
                except KilledWorker:  # the worker died (the scheduler's retries included)
                    submit(contain.died(task, None)[0])
                    continue
                except Exception as exc:
                    raise CohortError(f"partition {task.partition} failed on the cluster: "
                                      f"{type(exc).__name__}: {exc}; finished partitions are "
                                      "kept: run again with --resume") from exc
                follow = contain.finished(task)
                if follow is None:
                    on_done(counts)
                else:
                    submit(follow)
        finally:
            client.cancel([f for f in by_future if not f.done()])
    finally:
        if own:
            client.close()


# --------------------------------------------------------------------------- #
# Work folder and resume
# --------------------------------------------------------------------------- #
class _Work:
    """The screen's working folder inside the output folder."""

    def __init__(self, out: Path) -> None:
        self.root = out / _WORK
        self.spill = self.root / "spill"
        self.parts = self.root / "parts"
        self.state = self.root / "state.json"
        self.spill_done = self.root / "spill.json"
        self.spill_layout = self.root / "spill-layout.json"
        self.spill_errors = self.root / "spill-errors.ndjson"
        self.sources = self.root / "sources.json"

    def reset(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

    def read_state(self) -> dict[str, Any] | None:
        try:
            return dict(orjson.loads(self.state.read_bytes()))
        except (OSError, orjson.JSONDecodeError, TypeError, ValueError):
            return None

    def done_counts(self, partitions: int, kind: TaskKind,
                    formats: Sequence[str] = ()) -> dict[int, PartitionCounts]:
        """Counts of the partitions that finished (done marker and results,
        those of ``formats`` included); a marker this version cannot read
        leaves its partition to be redone."""
        done: dict[int, PartitionCounts] = {}
        suffixes = (("assessments", "rows", "errors", "worklist", *formats)
                    if kind == "screen" else ("diff",))
        for p in range(partitions):
            marker = self.parts / f"p{p:05d}.done"
            if not marker.exists():
                continue
            if not all((self.parts / f"p{p:05d}.{s}").exists() for s in suffixes):
                continue
            try:
                counts = PartitionCounts.from_json(marker.read_bytes())
            except (OSError, ValueError):
                continue
            if counts.kind == kind and counts.partition == p:
                done[p] = counts
        return done


def _fingerprint(kind: str, sources: Sequence[InputFile], rulesets: Sequence[Any], as_of: str,
                 mode: str, evaluator: Callable[..., Any] | None = None) -> dict[str, Any]:
    found = {"kind": kind, "inputs": [s.fingerprint() for s in sources],
             "rulesets": [r.key for r in rulesets], "as_of": as_of, "mode": mode}
    if evaluator is not None:  # absent by default, as in screens made before it existed
        found["evaluator"] = _evaluator_name(evaluator)
    return found


def _evaluator_name(evaluator: Callable[..., Any]) -> str:
    return (f"{getattr(evaluator, '__module__', '?')}."
            f"{getattr(evaluator, '__qualname__', type(evaluator).__name__)}")


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


# --------------------------------------------------------------------------- #
# The pipeline shared by screen and diff
# --------------------------------------------------------------------------- #
def _prepare(work: _Work, *, kind: str, sources: Sequence[InputFile], rulesets: Sequence[Any],
             as_of: str, mode: str, workers: int, partitions: int | None, resume: bool,
             evaluator: Callable[..., Any] | None = None) -> tuple[int, bool]:
    """Set up or reuse the work folder; return (partitions, resumed)."""
    fingerprint = _fingerprint(kind, sources, rulesets, as_of, mode, evaluator)
    state = work.read_state() if resume else None
    if state is not None and state.get("version") == _STATE_VERSION:
        changed = _differences(state.get("fingerprint", {}), fingerprint)
        if changed:
            raise CohortError(
                f"{work.root.parent} holds a screen with other {', '.join(changed)}; "
                "run without --resume to start again, or choose another output folder")
        stored = int(state["partitions"])
        if partitions is not None and partitions != stored:
            raise CohortError(f"the interrupted screen used {stored} partitions, not "
                              f"{partitions}")
        return stored, True
    count = partitions or _partition_count(sources, workers)
    work.reset()
    write_atomic(work.state, orjson.dumps({"version": _STATE_VERSION, "partitions": count,
                                           "fingerprint": fingerprint}, option=_SORT))
    return count, False


@dataclass(frozen=True)
class _Spilled:
    """What the spill pass gave: its counts (as ``spill.json`` holds them),
    where each partition's lines are, and how it ran."""

    stats: dict[str, Any]
    layout: SpillLayout
    seconds: float = 0.0
    chunks: int = 0
    reduced: int = 0
    #: the processes that spilled
    pids: frozenset[int] = frozenset()


def _chunk_bytes(total: int, processes: int) -> int:
    """About sixteen chunks per process for ``total`` bytes of input, within
    the chunk bounds: small enough that the processes finish together and
    hand over quickly."""
    return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, total // max(1, 16 * processes)))


def _spill(work: _Work, sources: Sequence[InputFile], partitions: int, progress: _Progress,
           *, rulesets: Sequence[Ruleset], reduce: bool,
           prestarted: _Prestarted | None = None) -> _Spilled:
    """Run the spill pass unless a finished one is there; return its counts
    and layout. The chunks run in the ``prestarted`` worker processes (see
    :func:`_spill_in_parallel`), else here."""
    if work.spill_done.exists() and work.spill_layout.exists():
        try:
            return _Spilled(stats=dict(orjson.loads(work.spill_done.read_bytes())),
                            layout=SpillLayout.from_json(work.spill_layout.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    started = time.perf_counter()
    shutil.rmtree(work.spill, ignore_errors=True)
    shutil.rmtree(work.parts, ignore_errors=True)
    work.spill.mkdir(parents=True)
    write_atomic(work.sources, orjson.dumps([s.label for s in sources]))
    on_disk = input_bytes(sources, on_disk=True)
    progress.add("read", "reading", total=max(1e-6, on_disk / 1e6),
                 note="{completed:,.1f}/{total:,.1f} MB")
    pool = prestarted.workers if prestarted is not None else []
    chunks = plan_chunks(sources, _chunk_bytes(on_disk, len(pool) + 1))
    reducer = Reducer([r.terminology for r in rulesets]) if reduce else None

    def here(chunk: SpillChunk, *, whole: bool = False) -> ChunkResult:
        return spill_chunk(chunk, work.spill, partitions, reduce=reducer, whole=whole,
                           on_bytes=None if whole else (
                               lambda n: progress.advance("read", n / 1e6)))

    if pool:
        task = SpillTask(chunk=None, folder=str(work.spill), partitions=partitions,
                         rulesets=_pickled(rulesets), reduce=reduce)
        results = _spill_in_parallel(chunks, pool, task, here, progress)
    else:
        results = {chunk.index: here(chunk) for chunk in chunks}
    stats, layout = assemble(chunks, results, work.spill, work.spill_errors,
                             lambda chunk: here(chunk, whole=True),
                             deleted_files=sum(s.role == "deleted" for s in sources))
    seconds = time.perf_counter() - started
    write_atomic(work.spill_layout, layout.to_json())
    write_atomic(work.spill_done, orjson.dumps({**stats.to_dict(), "seconds": seconds},
                                               option=_SORT))
    return _Spilled(stats=stats.to_dict(), layout=layout, seconds=seconds, chunks=len(chunks),
                    reduced=sum(r.reduced for r in results.values()),
                    pids=frozenset(r.pid for r in results.values()))


def _spill_in_parallel(chunks: Sequence[SpillChunk], pool: list[_LocalWorker],
                       template: SpillTask, here: Callable[[SpillChunk], ChunkResult],
                       progress: _Progress) -> dict[int, ChunkResult]:
    """Run ``chunks`` in the processes of ``pool``, one chunk each at a time
    as each is warm (see :func:`cdss.cohort._worker.warm_up`), and here only
    while none is: with workers, ``workers=N`` means N processes do the work,
    this one hands it out. Returns when every chunk is done and every process
    is warm (or gone: :func:`_run_local` replaces it)."""
    from multiprocessing.connection import wait

    queue = deque(chunks)
    results: dict[int, ChunkResult] = {}
    running: dict[_LocalWorker, SpillChunk] = {}
    # the rulesets go with a process's first chunk only (it keeps them)
    known = replace(template, rulesets=tuple((key, b"") for key, _ in template.rulesets))
    while queue or running or any(not w.ready for w in pool):
        for worker in pool:
            if queue and worker.ready and worker not in running:
                chunk = queue.popleft()
                if not worker.send(replace(template if worker.fresh else known, chunk=chunk)):
                    raise CohortError("a worker process ended before it could spill; run "
                                      "again")
                running[worker] = chunk
        timeout: float | None = None
        if queue and not any(w.ready for w in pool):
            chunk = queue.popleft()
            results[chunk.index] = here(chunk)
            timeout = 0
        watched = [w for w in pool if w in running or not w.ready]
        if not watched:
            continue
        signalled = set(wait([w.conn for w in watched] + [w.process.sentinel for w in watched],
                             timeout=timeout))
        for worker in [w for w in watched if w.conn in signalled
                       or w.process.sentinel in signalled]:
            message = worker.receive()
            if message is not None and message[0] == "ready":
                worker.ready = True
                continue
            spilled = running.pop(worker) if worker in running else None
            if message is None:  # the process died
                pool.remove(worker)
                code = describe_exit(worker.stop(kill=True))[2]
                if spilled is not None:
                    raise CohortError(f"spilling {spilled.label} failed: {code}; run again")
                continue  # it died starting: _run_local starts another
            assert spilled is not None
            if message[0] != "done":
                raise CohortError(f"spilling {spilled.label} failed: {message[1]}")
            results[spilled.index] = message[1]
            progress.advance("read", spilled.size / 1e6)
    return results


def _import_in_background(*modules: str) -> None:
    """Import what the merge needs in a thread while this process waits for
    its workers (pyarrow and numpy: a few tenths of a second); a module that
    cannot be imported is left for the merge to report."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    threading.Thread(target=load, name="cdss-screen-imports", daemon=True).start()


def _reduces(evaluator: Callable[..., Any] | None) -> bool:
    """Whether the spill reduces the resources no rule can read: not for a
    caller's own evaluator (it may read them), nor on the reference path."""
    from cdss.intake import reference_path

    return evaluator is None and not reference_path()


def _evaluate_partitions(work: _Work, *, kind: TaskKind, partitions: int, layout: SpillLayout,
                         rulesets: Sequence[Any], as_of: str, mode: str, executor: str,
                         workers: int, client: Any, scheduler: str | None,
                         tune_malloc: bool, progress: _Progress,
                         evaluator: Callable[..., Any] | None = None,
                         prestarted: _Prestarted | None = None,
                         formats: tuple[str, ...] = (),
                         ) -> tuple[dict[int, PartitionCounts], int, float]:
    """Evaluate every partition without a done marker (or without the files
    of ``formats``); return all counts, the number reused from an earlier
    run, and the seconds spent."""
    work.parts.mkdir(parents=True, exist_ok=True)
    done = work.done_counts(partitions, kind, formats)
    reused = len(done)
    pickled = _pickled(rulesets)
    # malloc is tuned in worker processes only, never in the caller's process
    tune = tune_malloc and (executor == "dask" or workers > 0)
    tasks = [PartitionTask(kind=kind, partition=p, spill=str(work.spill / f"p{p:05d}.tsv"),
                           out_dir=str(work.parts), rulesets=pickled, as_of=as_of, mode=mode,
                           sources=str(work.sources), tune_malloc=tune, evaluator=evaluator,
                           formats=formats, spills=layout.partition_files(work.spill, p))
             for p in range(partitions) if p not in done]
    progress.add("eval", "screening", total=partitions, completed=reused,
                 note="{completed:,.0f}/{total:,.0f} partitions {extra}")
    patients = sum(c.patients for c in done.values())

    def on_done(counts: PartitionCounts) -> None:
        nonlocal patients
        done[counts.partition] = counts
        patients += counts.patients
        progress.advance("eval", 1, extra=f"{patients:,} patients")

    started = time.perf_counter()
    _run_tasks(tasks, executor=executor, workers=workers, client=client, scheduler=scheduler,
               work=work.root, on_done=on_done, prestarted=prestarted)
    return done, reused, time.perf_counter() - started


def _merged_lines(paths: Sequence[Path]) -> Iterator[tuple[str, bytes]]:
    """``(key, payload)`` of sorted ``key\\tpayload`` files, merged in key order
    (a tab sorts before every character a key may hold)."""
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(p.open("rb")) for p in paths if p.exists()]
        for line in heapq.merge(*handles):
            key, _, payload = line.rstrip(b"\n").partition(b"\t")
            yield key.decode(), payload


@contextlib.contextmanager
def _publish(path: Path) -> Iterator[IO[bytes]]:
    """Write ``path`` under a temporary name; rename it only when complete."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb", buffering=1 << 20) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sum_counters(counts: Mapping[int, PartitionCounts], name: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c.tally(name))
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def _write_parquet(path: Path, rows: Iterator[tuple[str, bytes]], ruleset: Any,
                   as_of: str, mode: str) -> int:
    """Write the flat table (one row per patient, each a list of cells in
    column order: :func:`cdss.cohort._worker.table_row`) in batches; return
    the rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CohortError("assessments.parquet needs pyarrow: pip install 'cdss-fhir[cohort]'"
                          ) from exc
    codes = table_codes(ruleset)
    columns = [("patient", pa.string()), ("status", pa.string()),
               ("highest_severity", pa.string()), ("data_quality_notes", pa.int32())]
    columns += [(f"{group}:{code}", pa.bool_()) for group in codes for code in codes[group]]
    columns += [("error_kind", pa.string()), ("error", pa.string())]
    metadata = {b"cdss.ruleset": orjson.dumps(_identity(ruleset), option=_SORT),
                b"cdss.as_of": as_of.encode(), b"cdss.mode": mode.encode()}
    schema = pa.schema([pa.field(n, t) for n, t in columns], metadata=metadata)
    written = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        batch: list[list[Any]] = []

        def flush() -> None:
            cells = list(zip(*batch, strict=True)) if batch else [() for _ in columns]
            if len(cells) != len(columns):
                raise CohortError(f"a partition's table rows have {len(cells)} cells, not "
                                  f"{len(columns)}: run again without --resume")
            writer.write_table(pa.Table.from_arrays(
                [pa.array(column, type=kind) for column, (_, kind) in zip(cells, columns,
                                                                          strict=True)],
                schema=schema))
            batch.clear()

        for _, payload in rows:
            batch.append(orjson.loads(payload))
            written += 1
            if len(batch) >= 20_000:
                flush()
        if batch or not written:
            flush()
    os.replace(tmp, path)
    return written


def _part_paths(work: _Work, partitions: int, suffix: str) -> list[Path]:
    return [work.parts / f"p{p:05d}.{suffix}" for p in range(partitions)]


# --------------------------------------------------------------------------- #
# screen
# --------------------------------------------------------------------------- #
def screen(
    inputs: Sequence[str | Path] | str | Path,
    *,
    ruleset: Ruleset | str,
    as_of: datetime | date | str,
    out: str | Path,
    workers: int | None = None,
    mode: str = "lean",
    executor: str = "local",
    client: Any = None,
    resume: bool = False,
    progress: bool = False,
    scheduler: str | None = None,
    partitions: int | None = None,
    paths: Sequence[str | Path] | None = None,
    tune_malloc: bool = False,
    evaluator: Callable[..., Any] | None = None,
    identifiers: bool = True,
    worklist_shown: int = WORKLIST_SHOWN,
    formats: Sequence[str] = (),
) -> ScreenSummary:
    """Screen every patient of ``inputs`` with ``ruleset`` at ``as_of``.

    ``inputs``: FHIR bulk NDJSON files (``.ndjson``, ``.ndjson.gz``), a
    bulk-export folder (its ``manifest.json`` names the files), a manifest, or
    a folder of Bundles (``*.json``). ``ruleset``: a loaded
    :class:`~cdss.rulesets.Ruleset` or ``"id[@version]"`` (``paths`` adds a
    site's ruleset folders). Results go to the folder ``out`` (see the module
    docstring). ``workers``: processes (default one per core; ``0`` evaluates
    in this process). ``executor="dask"`` runs the partitions on a cluster given
    as ``client`` (a ``dask.distributed.Client``) or ``scheduler`` (its
    address); ``out`` must then be on storage the workers share. ``mode``:
    ``lean`` or ``strict`` intake. ``resume``: continue an interrupted screen
    in ``out``. ``progress``: a progress bar on stderr. ``partitions``:
    override the number of partitions (default: by input size).
    ``tune_malloc``: set glibc malloc's mmap and trim thresholds in the worker
    processes (off by default: it made no measurable difference here, see
    bench/README.md). ``evaluator``: the function that evaluates one
    patient, called as :func:`cdss.evaluate` is (``evaluator(record,
    ruleset=..., as_of=..., mode=...)``, the record a Bundle as JSON bytes),
    which is the default; worker processes import it by name, so it must be a
    module-level function of an importable module.

    The worklist (``worklist.csv``, ``worklist.parquet`` and a table in
    ``report.html``, see :mod:`cdss.cohort._worklist`) lists the patients to
    act on; ``identifiers=False`` leaves patient references out of it and out
    of the report (a row number instead), for sharing outside the care team.
    ``worklist_shown``: the worklist rows the report shows (the files hold
    all).

    ``formats``: outputs to write besides the usual ones, which are always
    written: ``"fhir"`` writes every assessment's FHIR resources as Bulk Data
    NDJSON, one file per resource type, and a ``manifest.json``, in the
    folder ``fhir/`` (see :mod:`cdss.cohort._fhir_bulk`); the partitions write
    them, so memory stays bounded, and ``resume`` keeps them.

    A worker process that dies while evaluating a patient (a crash in the rule
    engine, an out-of-memory kill) costs that patient a ``worker-died`` error
    row, not the screen (see the module docstring); with ``workers=0`` the
    screen's own process would die.

    Returns the :class:`ScreenSummary`; raises :class:`CohortError` when the
    screen cannot run, never for a bad patient or resource (those are rows in
    ``errors.ndjson``).
    """
    from cdss.evaluation import resolve_ruleset

    started = time.perf_counter()
    workers = _check_common(mode, executor, workers, partitions, evaluator)
    if isinstance(worklist_shown, bool) or not isinstance(worklist_shown, int) \
            or worklist_shown < 0:
        raise InvalidArgument(f"worklist_shown must be a whole number >= 0, got "
                              f"{worklist_shown!r}")
    wanted = _formats(formats)
    rs = resolve_ruleset(ruleset, paths)
    when = _as_of_text(as_of)
    sources = discover(inputs if not isinstance(inputs, (str, Path)) else [inputs])
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise CohortError(f"{out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = _Work(out_dir)
    state = work.read_state() if resume else None
    if state is not None and state.get("complete") and (out_dir / "summary.json").exists():
        _prepare(work, kind="screen", sources=sources, rulesets=[rs], as_of=when, mode=mode,
                 workers=workers, partitions=partitions, resume=True, evaluator=evaluator)
        finished = ScreenSummary.read(out_dir)
        if finished.worklist.get("identifiers", True) != identifiers:
            raise CohortError(f"the finished screen in {out_dir} was made with identifiers="
                              f"{not identifiers}; run it again without resume")
        if "fhir" in wanted and not (out_dir / FHIR_FOLDER / MANIFEST).exists():
            raise CohortError(f"the finished screen in {out_dir} has no FHIR output; run it "
                              "again without resume")
        return finished
    n, resumed = _prepare(work, kind="screen", sources=sources, rulesets=[rs], as_of=when,
                          mode=mode, workers=workers, partitions=partitions, resume=resume,
                          evaluator=evaluator)
    if not resumed:
        for name in _OUTPUTS:
            (out_dir / name).unlink(missing_ok=True)
        remove_bulk(out_dir)
    with _Prestarted(_prestart_count(executor, workers, n, resumed)) as prestarted, \
            _Progress(progress) as bar:
        done_spill = _spill(work, sources, n, bar, rulesets=[rs], reduce=_reduces(evaluator),
                            prestarted=prestarted)
        spilled = done_spill.stats
        if executor == "dask" or workers > 0:  # this process waits meanwhile
            _import_in_background("pyarrow.parquet", "cdss.cohort._report")
        counts, reused, eval_seconds = _evaluate_partitions(
            work, kind="screen", partitions=n, layout=done_spill.layout, rulesets=[rs],
            as_of=when, mode=mode,
            executor=executor, workers=workers, client=client, scheduler=scheduler,
            tune_malloc=tune_malloc, progress=bar, evaluator=evaluator, prestarted=prestarted,
            formats=wanted)
    merge_started = time.perf_counter()
    summary, head = _merge_screen(work, out_dir, n, counts, spilled, rs, when, mode, executor,
                                  workers, resumed, sources, identifiers=identifiers,
                                  worklist_shown=worklist_shown)
    if "fhir" in wanted:
        _check_bulk(write_bulk(out_dir, _merged_lines(_part_paths(work, n, "fhir")), when,
                               rs.spec),
                    summary)
    timings = {"spill_seconds": round(done_spill.seconds, 3),
               "spill_chunks": done_spill.chunks,
               "spill_processes": len(done_spill.pids),
               "resources_reduced": done_spill.reduced,
               "evaluate_seconds": round(eval_seconds, 3),
               "merge_seconds": round(time.perf_counter() - merge_started, 3),
               "total_seconds": round(time.perf_counter() - started, 3),
               "worker_seconds": round(sum(c.seconds for c in counts.values()), 3),
               "worker_cpu_seconds": round(sum(c.cpu_seconds for c in counts.values()), 3),
               "partitions_reused": reused}
    total = timings["total_seconds"] or 1e-9
    timings["patients_per_second"] = round(summary["counts"]["patients"] / total, 1)
    summary["timings"] = timings
    worker_peaks = [c.peak_rss_mb for c in counts.values() if c.peak_rss_mb]
    summary["memory"] = {"parent_peak_mb": peak_rss_mb(),
                         "worker_peak_mb": max(worker_peaks) if worker_peaks else None}
    results = {k: v for k, v in summary.items() if k not in RUN_FIELDS}
    for name, data in (("summary.json", results),
                       ("run.json", {k: summary[k] for k in RUN_FIELDS})):
        write_atomic(out_dir / name, orjson.dumps(data, option=_SORT | orjson.OPT_INDENT_2)
                     + b"\n")
    from cdss.cohort._report import render_report

    write_atomic(out_dir / "report.html",
                 render_report(results, worklist=head.rows).encode("utf-8"))
    write_atomic(work.state, orjson.dumps({**(work.read_state() or {}), "complete": True},
                                          option=_SORT))
    shutil.rmtree(work.spill, ignore_errors=True)
    shutil.rmtree(work.parts, ignore_errors=True)
    return ScreenSummary.from_dict(out_dir, summary)


def _check_bulk(written: Mapping[str, int], summary: Mapping[str, Any]) -> None:
    """The FHIR output holds one GuidanceResponse per assessment, one
    DetectedIssue per flag and one ServiceRequest per referral."""
    expected = {"GuidanceResponse": summary["counts"]["assessments"],
                "DetectedIssue": sum(v["patients"] for v in summary["flags"].values()),
                "ServiceRequest": sum(summary["referrals"].values())}
    problems = [f"{written.get(name, 0)} {name} written, {n} expected"
                for name, n in expected.items() if written.get(name, 0) != n]
    if problems:
        raise CohortError("the FHIR output does not balance: " + "; ".join(problems))


def _formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [formats]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidArgument(f"formats must be among {FORMATS}, got {unknown[0]!r}")
    return tuple(f for f in FORMATS if f in formats)


def _merge_screen(work: _Work, out_dir: Path, partitions: int,
                  counts: Mapping[int, PartitionCounts], spilled: Mapping[str, Any],
                  ruleset: Any, as_of: str, mode: str, executor: str, workers: int,
                  resumed: bool, sources: Sequence[InputFile], *, identifiers: bool = True,
                  worklist_shown: int = 500) -> tuple[dict[str, Any], WorklistHead]:
    """Merge the partitions into the result files and check the counts;
    return the summary and the worklist rows the report shows."""
    patients = sum(c.patients for c in counts.values())
    assessed = sum(c.assessed for c in counts.values())
    failed = sum(c.errors for c in counts.values())
    resources = sum(c.resources for c in counts.values())
    if len(counts) != partitions:
        missing = sorted(set(range(partitions)) - set(counts))
        raise CohortError(f"partitions {missing[:10]} have no results; run again with --resume")
    written = 0
    with _publish(out_dir / "assessments.ndjson") as handle:
        for _, payload in _merged_lines(_part_paths(work, partitions, "assessments")):
            handle.write(payload + b"\n")
            written += 1
    rows = _write_parquet(out_dir / "assessments.parquet",
                          _merged_lines(_part_paths(work, partitions, "rows")), ruleset,
                          as_of, mode)
    error_rows = 0
    with _publish(out_dir / "errors.ndjson") as handle:
        for _, payload in _merged_lines(_part_paths(work, partitions, "errors")):
            handle.write(payload + b"\n")
            error_rows += 1
        if work.spill_errors.exists():
            with work.spill_errors.open("rb") as spill_errors:
                shutil.copyfileobj(spill_errors, handle)
    problems = []
    if patients != assessed + failed:
        problems.append(f"patients seen {patients} != assessments {assessed} + errors {failed}")
    if written != assessed:
        problems.append(f"{written} assessments written, {assessed} made")
    left_out = sum(c.left_out for c in counts.values())
    if error_rows != failed + left_out:
        problems.append(f"{error_rows} error rows written, {failed} patient errors and "
                        f"{left_out} resources left out made")
    if rows != patients:
        problems.append(f"{rows} table rows written for {patients} patients")
    head = write_worklist(out_dir, _merged_lines(_part_paths(work, partitions, "worklist")),
                          identifiers=identifiers, shown=worklist_shown)
    if head.total > assessed:
        problems.append(f"{head.total} worklist rows written for {assessed} assessments")
    if resources != int(spilled.get("attributed", resources)):
        problems.append(f"{spilled.get('attributed')} resources spilled, {resources} read back")
    if problems:
        raise CohortError("the screen does not balance: " + "; ".join(problems))
    errors_by_kind = Counter(spilled.get("errors_by_kind", {}))
    errors_by_kind.update(_sum_counters(counts, "errors_by_kind"))
    unmapped = _most_frequent(_sum_counters(counts, "unmapped_codes"), UNMAPPED_SHOWN)
    summary = ScreenSummary(
        out=out_dir, ruleset=_identity(ruleset), as_of=as_of, mode=mode, executor=executor,
        workers=workers, partitions=partitions, patients=patients, assessed=assessed,
        patient_errors=failed,
        resource_errors=int(spilled.get("resource_errors", 0)) + left_out,
        file_errors=int(spilled.get("file_errors", 0)),
        resources={k: v for k, v in spilled.items() if k != "seconds"},
        flags=_sum_counters(counts, "flags"), severity=_sum_counters(counts, "severity"),
        referrals=_sum_counters(counts, "referrals"), plan=_sum_counters(counts, "plan"),
        data_requests=_sum_counters(counts, "data_requests"),
        errors_by_kind=dict(sorted(errors_by_kind.items())), timings={}, resumed=resumed,
        inputs=tuple(s.label for s in sources),
        unmapped_codes=unmapped,
        demographics={
            "age_bands": ordered(_sum_counters(counts, "age_bands"), AGE_BANDS),
            "sexes": ordered(_sum_counters(counts, "sexes"), SEXES),
            "flags_by_age_band": split_tally(_sum_counters(counts, "flags_by_age_band")),
            "flags_by_sex": split_tally(_sum_counters(counts, "flags_by_sex"))},
        worklist={"patients": head.total, "identifiers": identifiers,
                  "shown": len(head.rows)},
        displays={**_displays(ruleset),
                  "unmapped_codes": _unmapped_displays(counts, unmapped)},
    )
    return summary.to_dict(), head


def _unmapped_displays(counts: Mapping[int, PartitionCounts],
                       shown: Mapping[str, int]) -> dict[str, str]:
    """The display the records give each shown unmapped code most often (of
    equally frequent ones, the first alphabetically); codes charted with no
    display have none."""
    best: dict[str, tuple[int, str]] = {}
    for key, n in _sum_counters(counts, "unmapped_displays").items():
        coding, _, display = key.partition("\t")
        if coding in shown and (coding not in best or (-n, display) < best[coding]):
            best[coding] = (-n, display)
    return {coding: best[coding][1] for coding in shown if coding in best}


def _displays(ruleset: Ruleset) -> dict[str, dict[str, str]]:
    """The ruleset's display names of flags, referrals, plan items and
    requested analytes, by code (a code's first rule names it)."""
    flags: dict[str, str] = {}
    referrals: dict[str, str] = {}
    requests: dict[str, str] = {}
    concepts = ruleset.valuesets.concepts
    for rule in ruleset.file.rules:
        for action in rule.then:
            if action.flag:
                flags.setdefault(action.flag.code, action.flag.display)
            if action.referral:
                referrals.setdefault(action.referral.code, action.referral.display)
            if action.request and action.request.analyte in concepts:
                requests.setdefault(action.request.analyte,
                                    concepts[action.request.analyte].display)
    return {"flags": dict(sorted(flags.items())), "referrals": dict(sorted(referrals.items())),
            "plan": {item.code: item.text for item in ruleset.file.plan_items},
            "data_requests": dict(sorted(requests.items()))}


#: How many of the most frequent unmapped codes a screen's summary lists.
UNMAPPED_SHOWN = 50


def _most_frequent(counts: Mapping[str, int], n: int) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


# --------------------------------------------------------------------------- #
# diff
# --------------------------------------------------------------------------- #
def _rule_titles(ruleset: Ruleset) -> dict[str, str]:
    return {rule.id: rule.title for rule in ruleset.file.rules}


def _item_labels(ruleset: Ruleset) -> dict[str, str]:
    """``"rule item code"`` -> what a reader sees of the item: the display the
    rule gives a flag or referral, the text of a plan item the rule adds,
    emphasises, tailors or suppresses (shortened to :data:`_PLAN_TEXT_CHARS`), and
    the display of the analyte a data request asks for."""
    from cdss.cohort._report import shorten

    labels: dict[str, str] = {}
    texts = {item.code: shorten(" ".join(item.text.split()), _PLAN_TEXT_CHARS)
             for item in ruleset.file.plan_items}
    concepts = ruleset.valuesets.concepts
    for rule in ruleset.file.rules:
        for action in rule.then:
            for item in ("flag", "referral"):
                made = getattr(action, item, None)
                if made is not None and getattr(made, "display", None):
                    labels.setdefault(f"{rule.id} {item} {made.code}", made.display)
            plans = [action.plan, *(getattr(getattr(action, kind), "plan", None)
                                    for kind in ("emphasize", "tailor", "suppress"))]
            if action.suppress and action.suppress.category:
                plans += [item.code for item in ruleset.file.plan_items
                          if item.category == action.suppress.category]
            for code in plans:
                if code in texts:
                    item = "suppressed" if action.suppress else "plan"
                    labels.setdefault(f"{rule.id} {item} {code}", texts[code])
            if action.request and action.request.analyte in concepts:
                labels.setdefault(f"{rule.id} data_request {action.request.analyte}",
                                  concepts[action.request.analyte].display)
    return labels


#: How much of a plan item's text a diff shows beside its code.
_PLAN_TEXT_CHARS = 90


def diff(
    inputs: Sequence[str | Path] | str | Path,
    *,
    from_ruleset: Ruleset | str,
    to_ruleset: Ruleset | str,
    as_of: datetime | date | str,
    workers: int | None = None,
    mode: str = "lean",
    executor: str = "local",
    client: Any = None,
    scheduler: str | None = None,
    progress: bool = False,
    paths: Sequence[str | Path] | None = None,
    work_dir: str | Path | None = None,
    out: str | Path | None = None,
    tune_malloc: bool = False,
    evaluator: Callable[..., Any] | None = None,
) -> DiffReport:
    """Evaluate ``inputs`` with two ruleset versions (``from_ruleset`` and
    ``to_ruleset``: loaded rulesets or ``"id@version"``) and report the
    patients whose results change, and how.

    Inputs, ``workers``, ``mode``, ``executor``, ``client``, ``scheduler`` and
    ``evaluator`` are as for :func:`screen`. Intermediate files go to a temporary folder
    (inside ``work_dir`` when given; on storage shared with the workers for
    Dask). ``out`` writes the report as JSON.
    """
    from cdss.evaluation import resolve_ruleset

    started = time.perf_counter()
    workers = _check_common(mode, executor, workers, None, evaluator)
    rs_before = resolve_ruleset(from_ruleset, paths)
    rs_after = resolve_ruleset(to_ruleset, paths)
    when = _as_of_text(as_of)
    sources = discover(inputs if not isinstance(inputs, (str, Path)) else [inputs])
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cdss-diff-", dir=work_dir) as tmp:
        work = _Work(Path(tmp))
        n, _ = _prepare(work, kind="diff", sources=sources, rulesets=[rs_before, rs_after],
                        as_of=when, mode=mode, workers=workers, partitions=None, resume=False,
                        evaluator=evaluator)
        with _Prestarted(_prestart_count(executor, workers, n, False)) as prestarted, \
                _Progress(progress) as bar:
            done_spill = _spill(work, sources, n, bar, rulesets=[rs_before, rs_after],
                                reduce=_reduces(evaluator), prestarted=prestarted)
            spilled = done_spill.stats
            counts, _, _ = _evaluate_partitions(
                work, kind="diff", partitions=n, layout=done_spill.layout,
                rulesets=[rs_before, rs_after], as_of=when,
                mode=mode, executor=executor, workers=workers, client=client,
                scheduler=scheduler, tune_malloc=tune_malloc, progress=bar,
                evaluator=evaluator, prestarted=prestarted)
        changes = [orjson.loads(payload)
                   for _, payload in _merged_lines(_part_paths(work, n, "diff"))]
    report = DiffReport(
        from_ruleset=_identity(rs_before), to_ruleset=_identity(rs_after), as_of=when, mode=mode,
        patients=sum(c.patients for c in counts.values()),
        changed=sum(c.changed for c in counts.values()),
        unchanged=sum(c.unchanged for c in counts.values()),
        errors=sum(c.errors for c in counts.values()),
        resource_errors=int(spilled.get("resource_errors", 0))
        + int(spilled.get("file_errors", 0)),
        tallies={name: _sum_counters(counts, name) for name in DIFF_TALLIES},
        changes=changes,
        timings={"total_seconds": round(time.perf_counter() - started, 3)},
        rule_titles={**_rule_titles(rs_before), **_rule_titles(rs_after)},
        item_labels={**_item_labels(rs_before), **_item_labels(rs_after)},
    )
    if out is not None:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, report.to_json() + b"\n")
    return report
