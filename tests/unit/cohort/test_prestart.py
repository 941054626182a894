"""Local worker processes start before the spill pass and warm up there.

A fresh local screen starts its worker processes before it spills the
inputs, so that their start-up (spawn, imports, the unit registry) overlaps
the spill; the partitions then run in exactly those processes. Nothing of the
results depends on it: the screen is the same as with processes started
after the spill.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdss.cohort import CohortError, screen
from cdss.cohort import _screen as cohort_mod
from cdss.cohort import _worker as worker_mod
from cdss.cohort._worker import PartitionCounts
from cdss.errors import DependencyError
from tests.support.builders import lab
from tests.support.cohort import AS_OF, RULESET, write_ndjson

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

_IDS = tuple(f"p{i}" for i in range(12))


def _cohort(folder: Path) -> Path:
    write_ndjson(folder / "Patient.ndjson", [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01"}
        for pid in _IDS])
    write_ndjson(folder / "Observation.ndjson",
                 [lab(f"k-{pid}", "2823-3", 3.1 if i % 2 else 4.2, "mmol/L", pid=pid)
                  for i, pid in enumerate(_IDS)])
    return folder


def _record_prestarted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the processes started before the spill, as they start."""
    pids: list[int] = []
    real = cohort_mod._Prestarted.__init__

    def init(self: Any, count: int) -> None:
        real(self, count)
        pids.extend(w.process.pid for w in self.workers)

    monkeypatch.setattr(cohort_mod._Prestarted, "__init__", init)
    return pids


def _record_counts(monkeypatch: pytest.MonkeyPatch) -> dict[int, PartitionCounts]:
    """Every partition's counts, as the merge receives them."""
    seen: dict[int, PartitionCounts] = {}
    real = cohort_mod._merge_screen

    def merge(work: Any, out_dir: Path, partitions: int,
              counts: dict[int, PartitionCounts], *args: Any, **kwargs: Any) -> Any:
        seen.update(counts)
        return real(work, out_dir, partitions, counts, *args, **kwargs)

    monkeypatch.setattr(cohort_mod, "_merge_screen", merge)
    return seen


@pytest.mark.parametrize(("executor", "workers", "partitions", "resumed", "expected"), [
    ("local", 2, 8, False, 2),  # every worker: they spill chunks while they start
    ("local", 1, 4, False, 1),
    ("local", 8, 32, False, 8),
    ("local", 4, 2, False, 2),  # no more processes than partitions
    ("local", 0, 4, False, 0),  # inline: no process
    ("local", 2, 8, True, 0),  # resumed: partitions may be done already
    ("dask", 2, 8, False, 0),
])
def test_how_many_processes_start_before_the_spill(executor: str, workers: int,
                                                   partitions: int, resumed: bool,
                                                   expected: int) -> None:
    assert cohort_mod._prestart_count(executor, workers, partitions, resumed) == expected


def test_partitions_run_in_the_processes_started_before_the_spill(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _record_prestarted(monkeypatch)
    counts = _record_counts(monkeypatch)
    spilled_with: list[int] = []
    real_spill = cohort_mod._spill

    def spill(*args: Any, **kwargs: Any) -> Any:
        spilled_with.append(len(started))  # the processes exist when the spill starts
        return real_spill(*args, **kwargs)

    monkeypatch.setattr(cohort_mod, "_spill", spill)
    summary = screen([_cohort(tmp_path / "in")], ruleset=RULESET, as_of=AS_OF,
                     out=tmp_path / "out", workers=2, partitions=4)
    assert summary.balanced and summary.assessed == len(_IDS)
    assert spilled_with == [2]
    assert len(set(started)) == 2
    assert {c.pid for c in counts.values()} <= set(started)
    assert len(counts) == 4


def test_the_same_results_as_a_screen_in_this_process(tmp_path: Path) -> None:
    inputs = _cohort(tmp_path / "in")
    files = ("assessments.ndjson", "errors.ndjson")
    here = screen([inputs], ruleset=RULESET, as_of=AS_OF, out=tmp_path / "w0", workers=0,
                  partitions=4)
    there = screen([inputs], ruleset=RULESET, as_of=AS_OF, out=tmp_path / "w2", workers=2,
                   partitions=4)
    for name in files:
        assert here.files[name].read_bytes() == there.files[name].read_bytes()
    assert here.flags == there.flags and here.flags.get("hypokalemia") == len(_IDS) // 2


def test_processes_started_for_a_spill_that_fails_are_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = _record_prestarted(monkeypatch)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise CohortError("the disk is full")

    monkeypatch.setattr(cohort_mod, "_spill", failing)
    with pytest.raises(CohortError, match="the disk is full"):
        screen([_cohort(tmp_path / "in")], ruleset=RULESET, as_of=AS_OF,
               out=tmp_path / "out", workers=2, partitions=4)
    assert len(started) == 2
    for pid in started:  # ended and reaped: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_warm_up_loads_the_unit_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # counted, not cleared: a new registry beside the cached parses of the old one
    # would make every later conversion between the two fail
    from cdss import units

    loaded: list[int] = []
    real = units._registry

    def counted() -> Any:
        loaded.append(1)
        return real()

    monkeypatch.setattr(units, "_registry", counted)
    worker_mod.warm_up()
    assert loaded == [1]


def test_warm_up_leaves_a_failure_to_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    from cdss import units

    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise DependencyError("no registry", package="ucumvert")

    monkeypatch.setattr(units, "_registry", broken)
    worker_mod.warm_up()  # does not raise: the patient that needs a unit reports it
    assert calls == [1]


def test_worker_cpu_seconds_are_in_the_timings(tmp_path: Path) -> None:
    summary = screen([_cohort(tmp_path / "in")], ruleset=RULESET, as_of=AS_OF,
                     out=tmp_path / "out", workers=1, partitions=2)
    assert summary.timings["worker_cpu_seconds"] > 0
    assert summary.timings["worker_cpu_seconds"] <= summary.timings["worker_seconds"] * 1.5


def test_a_done_marker_without_cpu_seconds_is_still_read() -> None:
    marker = PartitionCounts(kind="screen", patients=2, errors=0, partition=3,
                             assessed=2, cpu_seconds=1.5).to_json()
    assert PartitionCounts.from_json(marker).cpu_seconds == 1.5
    older = orjson.loads(marker)
    del older["cpu_seconds"]
    read = PartitionCounts.from_json(orjson.dumps(older))
    assert read.cpu_seconds == 0.0 and read.partition == 3 and read.assessed == 2


def test_a_worker_that_dies_while_the_spill_runs_stops_the_screen_and_resume_finishes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed once warm, before it spills, stops the screen with an
    error saying to run again (no partial spill is kept); the screen resumed
    then gives the results of a screen never interrupted."""
    import signal

    inputs = _cohort(tmp_path / "in")
    real = cohort_mod._spill_in_parallel
    killed: list[int] = []

    def spill_in_parallel(chunks: Any, pool: Any, *args: Any, **kwargs: Any) -> Any:
        if not killed:
            victim = pool[0]
            message = victim.conn.recv()  # warm: it has said so
            assert message[0] == "ready"
            victim.ready = True
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.join(10)
            killed.append(victim.process.pid)
        return real(chunks, pool, *args, **kwargs)

    monkeypatch.setattr(cohort_mod, "_spill_in_parallel", spill_in_parallel)
    with pytest.raises(CohortError, match=r"(spill|ended).*run again"):
        screen([inputs], ruleset=RULESET, as_of=AS_OF, out=tmp_path / "out", workers=2,
               partitions=4)
    assert killed and not (tmp_path / "out" / ".cdss-screen" / "spill.json").exists()
    resumed = screen([inputs], ruleset=RULESET, as_of=AS_OF, out=tmp_path / "out", workers=2,
                     partitions=4, resume=True)
    plain = screen([inputs], ruleset=RULESET, as_of=AS_OF, out=tmp_path / "plain",
                   workers=2, partitions=4)
    assert resumed.balanced and resumed.assessed == len(_IDS)
    for name in ("assessments.ndjson", "assessments.parquet", "errors.ndjson", "summary.json"):
        assert (tmp_path / "out" / name).read_bytes() == (plain.out / name).read_bytes(), name
