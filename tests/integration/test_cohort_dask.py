"""Screens on a Dask cluster give the results of a local screen.

A small LocalCluster (one worker process, one thread) on the loopback
interface stands in for a cluster; the output folder is on the local disk,
which the worker shares.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.distributed as distributed
import orjson
import pytest

from cdss.cohort import CohortError, GeneratedCohort, screen
from tests.support.builders import lab
from tests.support.cohort import (
    AS_OF,
    RULESET,
    assessment_lines,
    read_ndjson,
    shared_expected,
    write_ndjson,
)
from tests.support.probes import evaluate_or_die

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'


@pytest.fixture(scope="module")
def cohort_expected(cohort: GeneratedCohort) -> dict[str, bytes]:
    return shared_expected(cohort)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # Starting and stopping a cluster on a busy machine may warn about slow
    # shutdowns; those warnings are about Dask, not about the screen.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           silence_logs=50)
        dask_client = distributed.Client(cluster)
    try:
        yield dask_client
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dask_client.close()
            cluster.close()


def test_a_dask_screen_equals_evaluate_and_the_local_screen(
        client: Any, cohort: GeneratedCohort, cohort_expected: dict[str, bytes],
        tmp_path: Path) -> None:
    summary = screen(cohort.out, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "dask",
                     executor="dask", client=client, partitions=3)
    lines = assessment_lines(summary.out)
    assert {orjson.loads(x)["patient"]: x for x in lines} == cohort_expected
    local = screen(cohort.out, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "local",
                   workers=0)
    assert lines == assessment_lines(local.out)
    assert (summary.out / "assessments.parquet").read_bytes() == (
        local.out / "assessments.parquet").read_bytes()
    assert summary.executor == "dask" and summary.balanced


def test_the_command_runs_on_a_scheduler_address(client: Any, cohort: GeneratedCohort,
                                                 cohort_expected: dict[str, bytes],
                                                 tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    result = CliRunner().invoke(app, [
        "screen", str(cohort.manifest), "--ruleset", RULESET, "--as-of", AS_OF,
        "--out", str(tmp_path / "out"), "--executor", "dask",
        "--scheduler", client.scheduler.address, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(assessment_lines(tmp_path / "out")) == len(cohort_expected)


def test_dask_needs_a_cluster(cohort: GeneratedCohort, tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="scheduler"):
        screen(cohort.out, ruleset=RULESET, as_of=AS_OF, out=tmp_path / "o", executor="dask")


def test_a_lost_dask_worker_costs_the_patient_in_flight_an_error_row(tmp_path: Path) -> None:
    """A Dask worker killed (SIGSEGV) while evaluating a patient: the nanny
    restarts it, the scheduler gives up on the task (KilledWorker; no
    retries here, to keep the test short), and the screen finishes with an
    error row for that patient."""
    ids = ["a", "b", "c", "segv-1"]
    write_ndjson(tmp_path / "in" / "Patient.ndjson", [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01"}
        for pid in ids])
    write_ndjson(tmp_path / "in" / "Observation.ndjson",
                 [lab(f"k-{pid}", "2823-3", 3.1, "mmol/L", pid=pid) for pid in ids])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1,
                                               processes=True, host="127.0.0.1",
                                               dashboard_address=None, silence_logs=50)
        dask_client = distributed.Client(cluster)
    try:
        summary = screen(tmp_path / "in", ruleset=RULESET, as_of=AS_OF, out=tmp_path / "out",
                         executor="dask", client=dask_client, partitions=2,
                         evaluator=evaluate_or_die)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dask_client.close()
            cluster.close()
    (error,) = read_ndjson(tmp_path / "out" / "errors.ndjson")
    assert (error["patient"], error["error"], error["exit_code"], error["signal"]) == (
        "Patient/segv-1", "worker-died", None, None)
    assert "KilledWorker" in error["reason"]
    assert (summary.patients, summary.assessed, summary.patient_errors) == (4, 3, 1)
