"""A worker process that dies on a patient costs that patient an error row,
not the screen.

The evaluators of test_cohort_probes.py kill the worker process evaluating
chosen patients (SIGSEGV, as a crash in durable-rules' C code would, or
``os._exit``); every other patient is still screened, byte-identical to
:func:`cdss.evaluate`, and ``--resume`` finishes. The same probes check that
no durable-rules timer thread runs in a worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from cdss.cohort import CohortError, diff, screen
from cdss.cohort import _screen as cohort_mod
from cdss.cohort._inputs import partition_of
from cdss.cohort._worker import PartitionCounts, PartitionTask, run_partition
from cdss.errors import InvalidArgument
from tests.support.builders import lab
from tests.support.cohort import (
    AS_OF,
    RULESET,
    assessment_lines,
    expected_assessments,
    read_ndjson,
    write_ndjson,
)
from tests.support.probes import evaluate_or_die, report_timer_threads

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

_HEALTHY = ("a", "b", "c", "d", "e", "f")


def _patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female",
            "birthDate": "1970-01-01"}


def _cohort(folder: Path, ids: Sequence[str]) -> Path:
    """A Patient and a low potassium for each id."""
    write_ndjson(folder / "Patient.ndjson", [_patient(pid) for pid in ids])
    write_ndjson(folder / "Observation.ndjson",
                 [lab(f"k-{pid}", "2823-3", 3.1, "mmol/L", pid=pid) for pid in ids])
    return folder


def _expected(ids: Sequence[str]) -> dict[str, bytes]:
    return expected_assessments({f"Patient/{pid}": [
        _patient(pid), lab(f"k-{pid}", "2823-3", 3.1, "mmol/L", pid=pid)] for pid in ids})


def _screen(data: Path, out: Path, **kwargs: Any) -> cohort_mod.ScreenSummary:
    kwargs.setdefault("workers", 2)
    kwargs.setdefault("evaluator", evaluate_or_die)
    return screen(data, ruleset=RULESET, as_of=AS_OF, out=out, **kwargs)


def _assessed(out: Path) -> dict[str, bytes]:
    return {orjson.loads(line)["patient"]: line for line in assessment_lines(out)}


def test_a_worker_that_dies_on_a_patient_costs_that_patient_an_error_row(
        tmp_path: Path) -> None:
    data = _cohort(tmp_path / "in", [*_HEALTHY, "segv-1", "exit-1"])
    out = tmp_path / "out"
    summary = _screen(data, out, partitions=2)
    errors = {e["patient"]: e for e in read_ndjson(out / "errors.ndjson")}
    assert sorted(errors) == ["Patient/exit-1", "Patient/segv-1"]
    for error in errors.values():
        # the id and how the worker ended; nothing else of the patient
        assert set(error) == {"kind", "patient", "error", "reason", "exit_code", "signal",
                              "resources"}
        assert (error["kind"], error["error"], error["resources"]) == (
            "patient", "worker-died", 2)
        assert "alone in a fresh worker" in error["reason"]
    assert (errors["Patient/segv-1"]["signal"], errors["Patient/segv-1"]["exit_code"]) == (
        "SIGSEGV", None)
    assert "SIGSEGV" in errors["Patient/segv-1"]["reason"]
    assert (errors["Patient/exit-1"]["signal"], errors["Patient/exit-1"]["exit_code"]) == (
        None, 3)
    assert _assessed(out) == _expected(_HEALTHY)
    assert (summary.patients, summary.assessed, summary.patient_errors) == (8, 6, 2)
    assert summary.balanced and summary.errors_by_kind == {"worker-died": 2}
    rows = {r["patient"]: r for r in pq.read_table(out / "assessments.parquet").to_pylist()}
    assert [(r["status"], r["error_kind"]) for p, r in sorted(rows.items())
            if p in errors] == [("error", "worker-died")] * 2
    assert not list((out / ".cdss-screen").glob("parts/*"))  # nothing left behind
    # resuming the finished screen returns it
    again = _screen(data, out, partitions=2, resume=True)
    assert again.to_dict()["counts"] == summary.to_dict()["counts"]


def test_resuming_an_interrupted_screen_with_a_patient_that_kills_workers_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partitions = 3
    culprit = next(f"segv-{i}" for i in range(100)
                   if partition_of(f"Patient/segv-{i}", partitions) == partitions - 1)
    data = _cohort(tmp_path / "in", [*_HEALTHY, culprit])
    out = tmp_path / "out"
    real = run_partition

    def stopped(task: PartitionTask) -> PartitionCounts:
        if task.partition == partitions - 1:
            raise KeyboardInterrupt  # stopped before the culprit's partition
        return real(task)

    monkeypatch.setattr(cohort_mod, "run_partition", stopped)
    with pytest.raises(KeyboardInterrupt):  # inline: the culprit is never evaluated here
        _screen(data, out, partitions=partitions, workers=0)
    monkeypatch.undo()
    resumed = _screen(data, out, resume=True)
    assert resumed.resumed and resumed.timings["partitions_reused"] == partitions - 1
    (error,) = read_ndjson(out / "errors.ndjson")
    assert (error["patient"], error["error"]) == (f"Patient/{culprit}", "worker-died")
    assert _assessed(out) == _expected(_HEALTHY)


def test_patients_that_kill_a_worker_only_after_others_are_found(tmp_path: Path) -> None:
    # as many of them in one partition as deaths no patient explains stop a screen
    late = [f"late-{i}" for i in range(cohort_mod.MAX_UNEXPLAINED_DEATHS)]
    data = _cohort(tmp_path / "in", ["a", "b", *late])
    summary = _screen(data, tmp_path / "out", partitions=1, workers=1)
    errors = read_ndjson(tmp_path / "out" / "errors.ndjson")
    assert [(e["patient"], e["error"], e["exit_code"]) for e in errors] == [
        (f"Patient/{pid}", "worker-died", 4) for pid in late]
    assert all("twice" in e["reason"] for e in errors)
    assert _assessed(tmp_path / "out") == _expected(["a", "b"])
    assert summary.balanced and summary.patient_errors == len(late)


def test_a_worker_killed_once_costs_no_patient_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSS_PROBE_DIR", str(tmp_path))  # the workers inherit it
    ids = [*_HEALTHY, "once-1"]
    data = _cohort(tmp_path / "in", ids)
    summary = _screen(data, tmp_path / "out", partitions=2)
    assert (tmp_path / "died-once-1").exists()  # a worker did die
    assert read_ndjson(tmp_path / "out" / "errors.ndjson") == []
    assert summary.assessed == len(ids)
    plain = screen(data, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "plain", workers=0)
    for name in ("assessments.ndjson", "assessments.parquet", "errors.ndjson"):
        assert (tmp_path / "out" / name).read_bytes() == (plain.out / name).read_bytes()


def test_deaths_no_patient_explains_stop_the_screen(tmp_path: Path) -> None:
    task = PartitionTask(kind="screen", partition=4, spill=str(tmp_path / "p.tsv"),
                         out_dir=str(tmp_path), rulesets=(), as_of=AS_OF, mode="lean",
                         sources=str(tmp_path / "sources.json"))
    contain = cohort_mod._Containment([task], "local")
    for _ in range(cohort_mod.MAX_UNEXPLAINED_DEATHS - 1):
        retry, fresh = contain.died(task, -9)  # no journal: no patient in flight
        assert retry == task and not fresh
    with pytest.raises(CohortError, match=r"died 3 times while screening partition 4.*"
                                          r"SIGKILL.*--resume"):
        contain.died(task, -9)


def test_a_diff_survives_a_worker_that_dies_on_a_patient(tmp_path: Path) -> None:
    data = _cohort(tmp_path / "in", [*_HEALTHY, "exit-1"])
    report = diff(data, from_ruleset=RULESET, to_ruleset=RULESET, as_of=AS_OF, workers=2,
                  evaluator=evaluate_or_die)
    assert (report.patients, report.errors, report.unchanged) == (7, 1, 6)
    (change,) = report.changes
    assert change["patient"] == "Patient/exit-1"
    assert "exited with code 3" in change["error"]["from"]


def test_the_evaluator_must_be_a_function_and_is_part_of_a_resumed_screen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _cohort(tmp_path / "in", _HEALTHY)
    with pytest.raises(InvalidArgument, match="evaluator"):
        _screen(data, tmp_path / "a", evaluator="cdss.evaluate")
    with pytest.raises(InvalidArgument, match="module-level function"):
        _screen(data, tmp_path / "a", evaluator=lambda record, **kwargs: None)

    def stop(task: PartitionTask) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_mod, "run_partition", stop)
    with pytest.raises(KeyboardInterrupt):
        _screen(data, tmp_path / "b", workers=0)
    monkeypatch.undo()
    with pytest.raises(CohortError, match="evaluator"):
        _screen(data, tmp_path / "b", workers=0, evaluator=report_timer_threads, resume=True)


def test_no_durable_timer_thread_runs_in_a_screen_worker(tmp_path: Path) -> None:
    """durable-rules' ``Host`` starts ``threading.Timer`` threads that
    dispatch its rulesets; none may run in a worker that evaluated patients
    (the engine's Host starts none). The probe evaluates each patient, then
    reports its process id and the Timer threads alive as the error row."""
    data = _cohort(tmp_path / "in", _HEALTHY)
    summary = _screen(data, tmp_path / "out", partitions=2, workers=1,
                      evaluator=report_timer_threads)
    reports = [orjson.loads(e["reason"]) for e in read_ndjson(tmp_path / "out" /
                                                                "errors.ndjson")]
    assert len(reports) == summary.patients == len(_HEALTHY)  # the probe saw every patient
    assert all(r["pid"] != os.getpid() for r in reports)  # in a worker process
    assert [r["timers"] for r in reports] == [[]] * len(_HEALTHY)
