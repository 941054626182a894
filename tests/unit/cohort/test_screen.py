"""Cohort screens: every patient once, the same result as evaluate(), in every
input shape, deterministic, resumable.

Stated in words:

1. Each patient seen gets exactly one row, and an assessed patient's row is
   byte-identical to ``cdss.evaluate`` of that patient's resources.
2. The results do not depend on the number of workers, the intake mode, or
   whether the cohort comes as NDJSON files, a manifest, gzip or Bundles.
3. An interrupted screen resumed gives the results of an uninterrupted one.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

import cdss
from cdss.cohort import CohortError, GeneratedCohort, screen
from cdss.cohort import _screen as cohort_mod
from cdss.cohort._inputs import discover, partition_of, patient_key
from cdss.cohort._worker import PartitionCounts, run_partition
from tests.support.cohort import (
    AS_OF,
    RULESET,
    assessment_lines,
    interrupted_screen,
    read_ndjson,
    screen_cohort,
    shared_expected,
)


@pytest.fixture(scope="module")
def cohort_expected(cohort: GeneratedCohort) -> dict[str, bytes]:
    return shared_expected(cohort)


@pytest.fixture(scope="module")
def screened(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
             ) -> cohort_mod.ScreenSummary:
    return screen_cohort([cohort.out], tmp_path_factory.mktemp("screen"), partitions=5)


def test_every_patient_has_the_assessment_evaluate_gives(
        screened: cohort_mod.ScreenSummary, cohort_expected: dict[str, bytes]) -> None:
    lines = assessment_lines(screened.out)
    got = {orjson.loads(line)["patient"]: line for line in lines}
    assert len(got) == len(lines) == len(cohort_expected) == 150
    assert got == cohort_expected
    assert list(got) == sorted(got)  # sorted by patient reference


def test_the_summary_counts_balance_and_match_the_rows(
        screened: cohort_mod.ScreenSummary) -> None:
    summary = orjson.loads((screened.out / "summary.json").read_bytes())
    counts = summary["counts"]
    assert counts == {"patients": 150, "assessments": 150, "patient_errors": 0,
                      "resource_errors": 0, "file_errors": 0, "balanced": True}
    assert screened.balanced and screened.patients == 150
    rows = [orjson.loads(line) for line in assessment_lines(screened.out)]
    for code, value in summary["flags"].items():
        having = sum(any(f["code"] == code for f in r["flags"]) for r in rows)
        assert value == {"patients": having, "prevalence": round(having / 150, 6)}
    assert sum(summary["highest_severity"].values()) == 150
    rs = cdss.load_ruleset(RULESET)
    assert summary["ruleset"] == {"id": "plantar-cramps", "version": "1.0.0",
                                  "sha256": rs.sha256, "title": rs.file.title}
    assert summary["as_of"] == "2026-03-01T00:00:00+00:00"
    assert summary["resources"]["types"]["Encounter"] > 0
    # what measures the run is in run.json, never in the results
    run = orjson.loads((screened.out / "run.json").read_bytes())
    assert {"spill_seconds", "evaluate_seconds", "merge_seconds",
            "total_seconds"} <= set(run["timings"])
    assert set(run["memory"]) == {"parent_peak_mb", "worker_peak_mb"}
    assert run["resumed"] is False
    assert not {"timings", "memory", "resumed"} & set(summary)
    report = (screened.out / "report.html").read_text()
    assert "seconds" not in report and "run.json" in report
    assert (screened.out / "errors.ndjson").read_bytes() == b""


def test_the_parquet_table_has_one_flat_row_per_patient(
        screened: cohort_mod.ScreenSummary) -> None:
    table = pq.read_table(screened.out / "assessments.parquet")
    rows = table.to_pylist()
    assessments = [orjson.loads(line) for line in assessment_lines(screened.out)]
    assert [r["patient"] for r in rows] == [a["patient"] for a in assessments]
    for row, full in zip(rows, assessments, strict=True):
        flags = {c.removeprefix("flag:") for c, v in row.items() if c.startswith("flag:") and v}
        plan = [c.removeprefix("plan:") for c, v in row.items() if c.startswith("plan:") and v]
        requests = {c.removeprefix("request:") for c, v in row.items()
                    if c.startswith("request:") and v}
        assert flags == {f["code"] for f in full["flags"]}
        assert set(plan) == {p["code"] for p in full["plan"]}
        assert requests == {d["analyte"] for d in full["data_requests"]}
        assert row["highest_severity"] == (full["flags"][0]["severity"] if full["flags"]
                                           else None)
        assert row["status"] == "assessed"
    metadata = table.schema.metadata
    assert orjson.loads(metadata[b"cdss.ruleset"])["version"] == "1.0.0"
    assert all(not isinstance(t, type(None)) for t in table.schema.types)


def test_the_report_is_self_contained(screened: cohort_mod.ScreenSummary) -> None:
    html = (screened.out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert "<svg" in html and "<script src" not in html and "<link" not in html
    assert html.count("<script") == html.count("<script>") == 1  # the worklist's, inline
    assert " src=" not in html and "url(" not in html
    rs = cdss.load_ruleset(RULESET)
    assert rs.sha256 in html and "plantar-cramps@1.0.0" in html
    summary = orjson.loads((screened.out / "summary.json").read_bytes())
    for code in summary["flags"]:
        assert code in html


def test_workers_and_modes_do_not_change_the_results(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary, tmp_path: Path) -> None:
    two = screen_cohort([cohort.out], tmp_path / "two", workers=2)
    strict = screen_cohort([cohort.out], tmp_path / "strict", mode="strict", partitions=3)
    for other in (two, strict):
        assert assessment_lines(other.out) == assessment_lines(screened.out)
        assert (pq.read_table(other.out / "assessments.parquet").to_pylist()
                == pq.read_table(screened.out / "assessments.parquet").to_pylist())
    assert two.workers == 2 and strict.mode == "strict"


def _as_bundles(cohort: GeneratedCohort, folder: Path) -> None:
    """The cohort as one Bundle file per patient, with urn:uuid references."""
    from tests.support.cohort import group_by_patient

    folder.mkdir()
    for i, (ref, resources) in enumerate(sorted(group_by_patient(cohort.files).items())):
        pid = ref.removeprefix("Patient/")
        entries = []
        for res in resources:
            res = dict(res)
            for name in ("subject", "patient"):
                if name in res:
                    res[name] = {"reference": f"urn:uuid:{pid}"}
            entry: dict[str, Any] = {"resource": res}
            if res["resourceType"] == "Patient":
                entry["fullUrl"] = f"urn:uuid:{pid}"
            entries.append(entry)
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        (folder / f"{i:04d}.json").write_bytes(orjson.dumps(bundle))


def test_every_input_shape_gives_the_same_results(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary, tmp_path: Path) -> None:
    gz = tmp_path / "gz"
    gz.mkdir()
    for path in cohort.files:
        (gz / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    _as_bundles(cohort, tmp_path / "bundles")
    shapes: dict[str, Any] = {
        "files": list(cohort.files),
        "manifest": cohort.manifest,
        "gzip": gz,
        "bundles": tmp_path / "bundles",
    }
    expected = assessment_lines(screened.out)
    for name, inputs in shapes.items():
        result = screen_cohort(inputs, tmp_path / f"out-{name}")
        assert assessment_lines(result.out) == expected, name
        assert result.patients == 150


def test_the_manifest_decides_which_files_are_read(cohort: GeneratedCohort,
                                                  tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    for path in cohort.files:
        (folder / path.name).write_bytes(path.read_bytes())
    manifest = orjson.loads(cohort.manifest.read_bytes())
    manifest["output"] = [o for o in manifest["output"] if o["type"] == "Patient"]
    for o in manifest["output"]:
        o["url"] = f"https://fhir.example.org/export/123/{o['url']}"
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    sources = discover([folder])
    assert [s.path.name for s in sources] == ["Patient.ndjson"]


def test_interrupted_screen_resumes_without_gaps_or_duplicates(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "resumed"
    interrupted_screen(monkeypatch, 3, [cohort.out], out, partitions=5)
    assert not (out / "assessments.ndjson").exists()
    assert len(list((out / ".cdss-screen" / "parts").glob("*.done"))) == 2
    resumed = screen_cohort([cohort.out], out, resume=True)
    assert resumed.resumed and resumed.timings["partitions_reused"] == 2
    assert resumed.partitions == 5
    assert assessment_lines(out) == assessment_lines(screened.out)
    for name in ("assessments.parquet", "errors.ndjson", "worklist.csv", "worklist.parquet",
                 "summary.json", "report.html"):
        assert (out / name).read_bytes() == (screened.out / name).read_bytes(), name
    assert resumed.patients == resumed.assessed == 150
    # resuming a finished screen does nothing and says the same
    again = screen_cohort([cohort.out], out, resume=True)
    assert again.to_dict()["counts"] == resumed.to_dict()["counts"]


def test_partition_counts_survive_their_done_marker_and_a_foreign_marker_is_redone(
        cohort: GeneratedCohort, screened: cohort_mod.ScreenSummary, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "marked"
    returned: list[PartitionCounts] = []
    real = run_partition

    def stopping(task: Any) -> PartitionCounts:
        if len(returned) == 2:
            raise KeyboardInterrupt
        returned.append(real(task))
        return returned[-1]

    monkeypatch.setattr(cohort_mod, "run_partition", stopping)
    with pytest.raises(KeyboardInterrupt):
        screen_cohort([cohort.out], out, partitions=5)
    monkeypatch.setattr(cohort_mod, "run_partition", run_partition)
    parts = out / ".cdss-screen" / "parts"
    for counts in returned:
        assert isinstance(counts, PartitionCounts) and counts.kind == "screen"
        assert counts.patients == counts.assessed + counts.errors
        assert sum(counts.tally("severity").values()) == counts.assessed
        marker = parts / f"p{counts.partition:05d}.done"
        assert PartitionCounts.from_json(marker.read_bytes()) == counts
    # a marker of another shape (an older version's, or damaged) is not trusted
    first = parts / f"p{returned[0].partition:05d}.done"
    first.write_bytes(orjson.dumps({"patients": returned[0].patients, "assessed": 0}))
    with pytest.raises(ValueError, match="not a partition's counts"):
        PartitionCounts.from_json(first.read_bytes())
    resumed = screen_cohort([cohort.out], out, resume=True)
    assert resumed.timings["partitions_reused"] == 1
    assert assessment_lines(out) == assessment_lines(screened.out)
    assert resumed.patients == resumed.assessed == 150


def test_resume_refuses_other_settings(cohort: GeneratedCohort, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s"

    def stop(task: Any) -> PartitionCounts:
        raise KeyboardInterrupt

    monkeypatch.setattr(cohort_mod, "run_partition", stop)
    with pytest.raises(KeyboardInterrupt):
        screen_cohort([cohort.out], out)
    monkeypatch.undo()
    with pytest.raises(CohortError, match="as_of"):
        screen([cohort.out], ruleset=RULESET, as_of="2026-04-01", out=out, workers=0,
               resume=True)
    with pytest.raises(CohortError, match="mode"):
        screen_cohort([cohort.out], out, mode="strict", resume=True)


def test_a_new_screen_replaces_the_results_of_an_old_one(tmp_path: Path) -> None:
    from tests.support.cohort import write_ndjson

    data = tmp_path / "in"
    write_ndjson(data / "Patient.ndjson", [{"resourceType": "Patient", "id": "a"},
                                           {"resourceType": "Patient", "id": "b"}])
    out = tmp_path / "out"
    assert screen_cohort(data, out).patients == 2
    write_ndjson(data / "Patient.ndjson", [{"resourceType": "Patient", "id": "c"}])
    assert screen_cohort(data, out).patients == 1
    assert [orjson.loads(x)["patient"] for x in assessment_lines(out)] == ["Patient/c"]


def test_partitions_are_stable_across_processes() -> None:
    keys = ["Patient/pt0000001", "Patient/ä", "urn:uuid:1234"]
    here = [partition_of(k, 97) for k in keys]
    code = ("from cdss.cohort._inputs import partition_of;"
            f"print([partition_of(k, 97) for k in {keys!r}])")
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert result.stdout.strip() == str(here)
    assert partition_of("Patient/pt0000001", 97) == partition_of("Patient/pt0000001", 97)


def test_patient_keys() -> None:
    assert patient_key("Patient/1") == "Patient/1"
    assert patient_key("https://h.example/fhir/Patient/1/_history/3") == "Patient/1"
    assert patient_key("urn:uuid:x", {"urn:uuid:x": "Patient/1"}) == "Patient/1"
    assert patient_key("urn:uuid:y") == "urn:uuid:y"
    assert patient_key("Group/1") is None


def test_importing_cdss_imports_no_cohort_packages() -> None:
    code = ("import sys, cdss, cdss.cohort, cdss.cohort._generate, cdss.cohort._report;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'dask', 'distributed', 'pyarrow', 'typer'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_bad_arguments_are_refused(cohort: GeneratedCohort, tmp_path: Path) -> None:
    from cdss.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        screen_cohort(cohort.out, tmp_path / "a", mode="fast")
    with pytest.raises(InvalidArgument):
        screen_cohort(cohort.out, tmp_path / "b", executor="spark")
    with pytest.raises(InvalidArgument):
        screen_cohort(cohort.out, tmp_path / "c", workers=-1)
    with pytest.raises(InvalidArgument, match="as_of"):
        screen(cohort.out, ruleset=RULESET, as_of=None, out=tmp_path / "d")  # type: ignore[arg-type]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CohortError, match="not a folder"):
        screen_cohort(cohort.out, tmp_path / "file")


def test_rows_of_resources_read_add_up(screened: cohort_mod.ScreenSummary) -> None:
    resources = screened.resources
    assert resources["resources"] == (resources["attributed"]
                                      + resources["not_patient_specific"]
                                      + resources["resource_errors"])
    assert sum(resources["types"].values()) == resources["attributed"]
    assert read_ndjson(screened.out / "errors.ndjson") == []


def test_the_screen_command(cohort: GeneratedCohort, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    args = ["screen", str(cohort.manifest), "--ruleset", RULESET, "--as-of", AS_OF,
            "--out", str(tmp_path / "out"), "--workers", "0", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "count in = count out" in first.output and "150" in first.output
    assert "hypokalemia" in first.output and "on the worklist" in first.output
    anonymous = CliRunner().invoke(app, [*args[:-4], str(tmp_path / "anonymous"),
                                         "--workers", "0", "--no-progress",
                                         "--no-identifiers", "--worklist-shown", "5"])
    assert anonymous.exit_code == 0, anonymous.output
    assert "Patient/" not in (tmp_path / "anonymous" / "report.html").read_text()
    assert "Patient/" not in (tmp_path / "anonymous" / "worklist.csv").read_text()
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert len(assessment_lines(tmp_path / "out")) == 150
    bad = CliRunner().invoke(app, [*args[:-3], "--mode", "fast"])
    assert bad.exit_code == 2 and "mode" in bad.output
