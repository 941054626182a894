"""``cdss screen --format fhir``: the results as FHIR Bulk Data NDJSON, and the
SQL on FHIR views over them.

Stated in words:

1. The usual outputs do not change, byte for byte, when the FHIR output is
   asked for too.
2. One file per resource type and a manifest naming them, with every field a
   Bulk Data manifest requires; every resource is valid R4, its id unique
   across the cohort, and every reference between the screen's resources
   resolves in the files.
3. A resumed screen writes the same bytes as an uninterrupted one.
4. The shipped ViewDefinitions, run by a FHIRPath engine of someone else's
   (fhirpathpy), give the rows of the assessments: the same patients, flags,
   severities, rules, texts, evidence, referrals and plan items, and each plan
   in its order (tests/integration/test_sof_runner.py runs them with
   @medplum/core too).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdss.cohort import FORMATS, VIEWS, GeneratedCohort, view_definition
from cdss.cohort import _screen as cohort_mod
from cdss.cohort._fhir_bulk import RESOURCE_TYPES, patient_prefix, screen_request
from cdss.errors import CohortError, InvalidArgument
from tests.support.cohort import (
    AS_OF,
    RULESET,
    interrupted_screen,
    read_ndjson,
    screen_cohort,
)
from tests.support.sof import expected_rows, fhir_resources, mismatch, run_view

_OUTPUTS = ("assessments.ndjson", "assessments.parquet", "errors.ndjson", "worklist.csv",
            "worklist.parquet")


@pytest.fixture(scope="module")
def plain(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
          ) -> cohort_mod.ScreenSummary:
    return screen_cohort([cohort.out], tmp_path_factory.mktemp("plain"), partitions=5)


@pytest.fixture(scope="module")
def with_fhir(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
              ) -> cohort_mod.ScreenSummary:
    return screen_cohort([cohort.out], tmp_path_factory.mktemp("fhir"), partitions=5,
                   formats=["fhir"])


def _fhir_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "fhir").iterdir())}


def test_the_usual_outputs_are_the_same_with_the_fhir_output(
        plain: cohort_mod.ScreenSummary, with_fhir: cohort_mod.ScreenSummary) -> None:
    for name in _OUTPUTS:
        assert (with_fhir.out / name).read_bytes() == (plain.out / name).read_bytes(), name
    assert not (plain.out / "fhir").exists()
    assert FORMATS == ("fhir",)


def test_one_file_per_type_and_a_manifest(with_fhir: cohort_mod.ScreenSummary) -> None:
    folder = with_fhir.out / "fhir"
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    assert manifest["transactionTime"] == "2026-03-01T00:00:00Z"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    listed = {o["type"]: o for o in manifest["output"]}
    assert {p.name for p in folder.iterdir()} == {"manifest.json"} | {
        o["url"] for o in manifest["output"]}
    for rtype, item in listed.items():
        lines = read_ndjson(folder / item["url"])
        assert item["url"] == f"{rtype}.ndjson" and item["count"] == len(lines)
        assert {r["resourceType"] for r in lines} == {rtype}
    assessed = with_fhir.assessed
    assert listed["GuidanceResponse"]["count"] == listed["Provenance"]["count"] == assessed
    assert listed["DetectedIssue"]["count"] == sum(with_fhir.flags.values())
    assert listed["ServiceRequest"]["count"] == sum(with_fhir.referrals.values())
    assert {"CarePlan", "Parameters"} <= set(listed)


def test_the_manifest_has_every_field_a_bulk_data_manifest_requires(
        with_fhir: cohort_mod.ScreenSummary) -> None:
    # Bulk Data STU2/STU3 export manifest: all five required, of these JSON types
    manifest = orjson.loads((with_fhir.out / "fhir" / "manifest.json").read_bytes())
    required = {"transactionTime": str, "request": str, "requiresAccessToken": bool,
                "output": list, "error": list}
    assert list(manifest) == list(required)  # nothing else, in the specification's order
    for name, kind in required.items():
        assert isinstance(manifest[name], kind), name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                        manifest["transactionTime"])
    # no HTTP kick-off request: a URN naming the ruleset and the as-of instant
    assert manifest["request"] == "urn:cdss:screen:plantar-cramps@1.0.0:2026-03-01T00:00:00Z"
    assert manifest["request"] == screen_request(RULESET, with_fhir.as_of)
    for item in manifest["output"]:
        assert isinstance(item["type"], str) and isinstance(item["url"], str)
        assert isinstance(item["count"], int) and not isinstance(item["count"], bool)


def test_ids_are_unique_and_references_resolve(with_fhir: cohort_mod.ScreenSummary) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    resources = fhir_resources(with_fhir.out)
    keys = Counter(f"{r['resourceType']}/{r['id']}" for r in resources)
    assert max(keys.values()) == 1
    patients = {orjson.loads(line)["patient"] for line in
                (with_fhir.out / "assessments.ndjson").read_bytes().splitlines()}
    prefixes = {patient_prefix(p): p for p in patients}
    own = re.compile(r"^(Patient|Observation|Condition|MedicationStatement|"
                     r"MedicationRequest|Procedure|Encounter|AllergyIntolerance)/")

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["reference"]] if isinstance(node.get("reference"), str) \
                and "resourceType" not in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for res in resources:
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        prefix = res["id"].split("-", 1)[0]
        assert prefix in prefixes, res["id"]
        subject = res.get("subject") or res.get("patient")
        if subject is not None:
            assert subject["reference"] == prefixes[prefix]
        for ref in refs(res):
            assert not ref.startswith("urn:"), ref
            if ref.split("/", 1)[0] in RESOURCE_TYPES:
                assert keys[ref] == 1, ref
                assert ref.split("/", 1)[1].startswith(prefix), ref  # the same patient's
            else:
                assert own.match(ref), ref


def test_a_resumed_screen_writes_the_same_fhir_files(
        cohort: GeneratedCohort, with_fhir: cohort_mod.ScreenSummary, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "resumed"
    interrupted_screen(monkeypatch, 3, [cohort.out], out, partitions=5, formats=["fhir"])
    assert not (out / "fhir").exists()
    resumed = screen_cohort([cohort.out], out, resume=True, formats=["fhir"])
    assert resumed.timings["partitions_reused"] == 2
    assert _fhir_bytes(out) == _fhir_bytes(with_fhir.out)
    # the finished screen resumed again keeps them
    screen_cohort([cohort.out], out, resume=True, formats=["fhir"])
    assert _fhir_bytes(out) == _fhir_bytes(with_fhir.out)


def test_resuming_with_the_fhir_output_redoes_partitions_without_it(
        cohort: GeneratedCohort, with_fhir: cohort_mod.ScreenSummary, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "added"
    interrupted_screen(monkeypatch, 3, [cohort.out], out, partitions=5)
    resumed = screen_cohort([cohort.out], out, resume=True, formats=["fhir"])
    assert resumed.timings["partitions_reused"] == 0
    assert _fhir_bytes(out) == _fhir_bytes(with_fhir.out)


def test_a_finished_screen_without_it_cannot_add_it_on_resume(
        cohort: GeneratedCohort, plain: cohort_mod.ScreenSummary, tmp_path: Path) -> None:
    out = tmp_path / "done"
    screen_cohort([cohort.out], out, partitions=5)
    with pytest.raises(CohortError, match="no FHIR output"):
        screen_cohort([cohort.out], out, resume=True, formats=["fhir"])


def test_a_new_screen_removes_an_old_fhir_output(cohort: GeneratedCohort,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "again"
    screen_cohort([cohort.out], out, partitions=2, formats=["fhir"])
    assert (out / "fhir" / "manifest.json").exists()
    screen_cohort([cohort.out], out, partitions=2)
    assert not (out / "fhir").exists()


def test_unknown_formats_are_refused(cohort: GeneratedCohort, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="formats"):
        screen_cohort([cohort.out], tmp_path / "x", formats=["csv"])


# --------------------------------------------------------------------------- #
# The views
# --------------------------------------------------------------------------- #
def test_the_views_are_view_definitions() -> None:
    for name in VIEWS:
        view = view_definition(name)
        assert view["resourceType"] == "ViewDefinition" and view["status"] == "active"
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", view["name"])
        assert view["resource"] in RESOURCE_TYPES
        names: list[str] = []

        def walk(select: dict[str, Any], names: list[str] = names) -> None:
            for column in select.get("column", []):
                assert set(column) <= {"name", "path", "type", "description",
                                       "collection", "tag"}
                assert column["path"] and column["type"] and not column.get("collection")
                names.append(column["name"])
            for nested in select.get("select", []) + select.get("unionAll", []):
                walk(nested)

        for select in view["select"]:
            walk(select)
        assert len(names) == len(set(names)) and all(
            re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names), name
    with pytest.raises(InvalidArgument):
        view_definition("patients")


@pytest.mark.parametrize("name", VIEWS)
def test_each_view_gives_the_rows_of_the_assessments(
        with_fhir: cohort_mod.ScreenSummary, name: str) -> None:
    rows = run_view(view_definition(name), fhir_resources(with_fhir.out))
    want = expected_rows(with_fhir.out)[name]
    diff = mismatch(rows, want)
    assert want and not diff, diff


def test_the_plan_view_gives_each_plan_in_its_order(
        with_fhir: cohort_mod.ScreenSummary) -> None:
    rows = run_view(view_definition("plan_items"), fhir_resources(with_fhir.out))
    want = expected_rows(with_fhir.out)["plan_items"]
    assert [(r["patient"], r["code"]) for r in rows] == [(r["patient"], r["code"])
                                                          for r in want]


def test_the_screen_command_writes_the_fhir_output(cohort: GeneratedCohort,
                                                   tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["screen", str(cohort.out), "--ruleset", RULESET,
                                      "--as-of", AS_OF, "--out", str(out), "--workers", "0",
                                      "--partitions", "5", "--format", "fhir"])
    assert result.exit_code == 0, result.output
    assert (out / "fhir" / "manifest.json").exists()
    assert "FHIR Bulk Data output in" in result.output
    bad = CliRunner().invoke(app, ["screen", str(cohort.out), "--ruleset", RULESET,
                                   "--as-of", AS_OF, "--out", str(out), "--format", "xml"])
    assert bad.exit_code != 0


def test_a_fhir_output_that_does_not_balance_is_refused() -> None:
    summary = {"counts": {"assessments": 2}, "flags": {"a": {"patients": 2}},
               "referrals": {"r": 1}}
    cohort_mod._check_bulk({"GuidanceResponse": 2, "DetectedIssue": 2, "ServiceRequest": 1},
                           summary)
    with pytest.raises(CohortError, match="1 DetectedIssue written, 2 expected"):
        cohort_mod._check_bulk({"GuidanceResponse": 2, "DetectedIssue": 1,
                                "ServiceRequest": 1}, summary)


def test_worker_processes_write_the_same_fhir_files(
        cohort: GeneratedCohort, with_fhir: cohort_mod.ScreenSummary, tmp_path: Path) -> None:
    out = tmp_path / "workers"
    screen_cohort([cohort.out], out, partitions=5, workers=2, formats=["fhir"])
    assert _fhir_bytes(out) == _fhir_bytes(with_fhir.out)
