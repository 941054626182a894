"""Inputs as bulk exports arrive: folders of export folders, mixed NDJSON and
Bundle files, manifests of Bulk Data Access STU2-STU4 (``output``, ``error``,
``outcome``, ``deleted``, ``outputOrganizedBy``, partial manifests' ``next``
links), and the same assessments as one plain NDJSON folder of the same
resources."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdss.cohort import CohortError
from cdss.cohort._inputs import discover
from tests.support.builders import condition, lab, patient
from tests.support.cohort import AS_OF, RULESET, read_ndjson, screen_cohort, write_ndjson

IDS = ("a", "b", "c", "d")


def _resources(pid: str) -> list[dict[str, Any]]:
    """A patient, a low potassium and a condition."""
    return [patient(pid), lab(f"k-{pid}", "2823-3", 3.1, "mmol/L", pid=pid),
            {**condition(f"c-{pid}", "44054006"), "subject": {"reference": f"Patient/{pid}"}}]


def _by_type(pids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for pid in pids:
        for res in _resources(pid):
            grouped.setdefault(res["resourceType"], []).append(res)
    return grouped


def _plain(folder: Path, pids: Sequence[str] = IDS) -> Path:
    for rtype, items in _by_type(pids).items():
        write_ndjson(folder / f"{rtype}.ndjson", items)
    return folder


def _manifest(path: Path, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"transactionTime": "2026-02-01T00:00:00Z",
                                   "requiresAccessToken": False, **fields}))
    return path


def _outcome(text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "id": f"oo-{text[:3]}",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]}


def _header(pid: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "header", "valueReference": {"reference": f"Patient/{pid}"}}]}


def _names(files: Sequence[Any], root: Path) -> list[tuple[str, str]]:
    return [(str(f.path.relative_to(root.resolve())), f.role) for f in files]


# --------------------------------------------------------------------------- #
# Folders
# --------------------------------------------------------------------------- #
def test_a_folder_of_export_folders_is_read_recursively_in_a_stable_order(
        tmp_path: Path) -> None:
    root = tmp_path / "exports"
    _plain(root / "b-second", ("c", "d"))
    _plain(root / "a-first", ("a",))
    nested = root / "a-first" / "z-nested"
    write_ndjson(nested / "Patient.ndjson", [patient("e")])
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    write_ndjson(root / ".hidden" / "Patient.ndjson", [patient("x")])
    found = discover([root])
    assert _names(found, root) == [
        ("a-first/Condition.ndjson", "data"), ("a-first/Observation.ndjson", "data"),
        ("a-first/Patient.ndjson", "data"), ("a-first/z-nested/Patient.ndjson", "data"),
        ("b-second/Condition.ndjson", "data"), ("b-second/Observation.ndjson", "data"),
        ("b-second/Patient.ndjson", "data")]
    assert discover([root, root / "a-first"]) == found  # each file once


def test_a_folder_tree_without_any_input_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(CohortError, match="in it or in its subfolders"):
        discover([tmp_path / "in"])


def test_a_screens_own_output_folder_is_not_an_export(tmp_path: Path) -> None:
    root = _plain(tmp_path / "in")
    screen_cohort(root, root / "results")
    assert all("results" not in str(f.path) for f in discover([root]))


def test_ndjson_and_bundle_files_in_one_folder_are_both_read(tmp_path: Path) -> None:
    folder = _plain(tmp_path / "in", ("a", "b"))
    (folder / "more.json").write_bytes(orjson.dumps({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": res} for res in _resources("c")]}))
    assert [(f.path.name, f.kind) for f in discover([folder])] == [
        ("Condition.ndjson", "ndjson"), ("Observation.ndjson", "ndjson"),
        ("Patient.ndjson", "ndjson"), ("more.json", "json")]
    summary = screen_cohort(folder, tmp_path / "out")
    assert summary.assessed == 3 and summary.balanced


# --------------------------------------------------------------------------- #
# Manifests
# --------------------------------------------------------------------------- #
def test_manifest_urls_plain_relative_file_and_downloaded_https(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    write_ndjson(folder / "Patient.ndjson", [patient("a")])
    write_ndjson(folder / "files" / "Observation.ndjson", [_resources("a")[1]])
    write_ndjson(folder / "Condition.ndjson", [_resources("a")[2]])
    write_ndjson(tmp_path / "elsewhere" / "Patient.2.ndjson", [patient("b")])
    _manifest(folder / "manifest.json", output=[
        {"type": "Patient", "url": "Patient.ndjson"},
        {"type": "Observation", "url": "files/Observation.ndjson"},
        {"type": "Condition", "url": "https://server.example/bulk/Condition.ndjson"},
        {"type": "Patient", "url": (tmp_path / "elsewhere" / "Patient.2.ndjson").as_uri()}])
    assert [f.path.name for f in discover([folder])] == [
        "Patient.ndjson", "Observation.ndjson", "Condition.ndjson", "Patient.2.ndjson"]


def test_a_remote_url_without_a_local_copy_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    write_ndjson(folder / "Patient.ndjson", [patient("a")])
    url = "https://server.example/bulk/Observation-7.ndjson"
    _manifest(folder / "manifest.json", output=[{"type": "Patient", "url": "Patient.ndjson"},
                                                {"type": "Observation", "url": url}])
    with pytest.raises(CohortError, match=r"output\[1\] names the remote file") as caught:
        discover([folder])
    assert url in str(caught.value)
    _manifest(folder / "manifest.json", output=[{"url": "s3://bucket/Patient.ndjson"}])
    with pytest.raises(CohortError, match="s3: URLs are not read"):
        discover([folder])


@pytest.mark.parametrize("key", ["error", "outcome"])
def test_the_exports_own_errors_are_error_rows_not_patient_data(tmp_path: Path,
                                                                key: str) -> None:
    folder = _plain(tmp_path / "export", ("a", "b"))
    write_ndjson(folder / "errors" / "OperationOutcome.ndjson", [
        _outcome("Observation/9 could not be exported"), b"{not json",
        {"resourceType": "Patient", "id": "zz"}])
    outputs = [{"type": t, "url": f"{t}.ndjson"} for t in ("Patient", "Observation",
                                                           "Condition")]
    _manifest(folder / "manifest.json", output=outputs,
              **{key: [{"type": "OperationOutcome", "url": "errors/OperationOutcome.ndjson"}]})
    assert [f.role for f in discover([folder])] == ["data", "data", "data", "errors"]
    summary = screen_cohort(folder, tmp_path / "out")
    rows = read_ndjson(tmp_path / "out" / "errors.ndjson")
    assert [(r["kind"], r["error"], r["line"]) for r in rows] == [
        ("export", "export-outcome", 1), ("export", "malformed-json", 2),
        ("export", "not-an-outcome", 3)]
    assert rows[0]["reason"] == "Observation/9 could not be exported"
    assert rows[0]["severity"] == "error" and rows[0]["code"] == "processing"
    assert all(r["file"].endswith("OperationOutcome.ndjson") for r in rows)
    assert summary.assessed == 2 and summary.patients == 2  # Patient/zz is no patient
    assert summary.resources["export_errors"] == 3
    assert summary.errors_by_kind == {"export-outcome": 1, "malformed-json": 1,
                                      "not-an-outcome": 1}


def test_deleted_files_are_counted_and_not_read(tmp_path: Path) -> None:
    folder = _plain(tmp_path / "export", ("a", "b"))
    write_ndjson(folder / "deleted.ndjson", [{
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/a"}}]}])
    outputs = [{"type": t, "url": f"{t}.ndjson"} for t in ("Patient", "Observation",
                                                           "Condition")]
    _manifest(folder / "manifest.json", output=outputs, deleted=[
        {"type": "Bundle", "url": "deleted.ndjson"},
        {"type": "Bundle", "url": "https://server.example/bulk/gone.ndjson"}])
    summary = screen_cohort(folder, tmp_path / "out")
    assert summary.resources["deleted_files"] == 1
    assert summary.assessed == 2 and read_ndjson(tmp_path / "out" / "errors.ndjson") == []


def _organized(folder: Path, pids: Sequence[str]) -> list[dict[str, Any]]:
    """Files organized by patient: each block a header, then the patient's
    resources; the last block continues in a second file."""
    blocks = [[_header(pid), *_resources(pid)] for pid in pids]
    first = [line for block in blocks[:-1] for line in block] + blocks[-1][:2]
    write_ndjson(folder / "file_1.ndjson", first)
    write_ndjson(folder / "file_2.ndjson", [blocks[-1][0], *blocks[-1][2:]])
    return [{"url": "file_1.ndjson", "continuesInFile": "file_2.ndjson"},
            {"url": "file_2.ndjson"}]


def test_output_organized_by_patient_skips_the_block_headers(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    outputs = _organized(folder, IDS)
    _manifest(folder / "manifest.json", outputOrganizedBy="Patient", output=outputs)
    summary = screen_cohort(folder, tmp_path / "out")
    assert read_ndjson(tmp_path / "out" / "errors.ndjson") == []
    assert summary.resources["block_headers"] == len(IDS) + 1
    assert summary.resources["not_patient_specific"] == 0
    assert summary.assessed == len(IDS) and summary.balanced


def test_partial_manifests_are_followed_through_their_next_links(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    _plain(folder)
    _manifest(folder / "manifest.json", output=[{"type": "Patient", "url": "Patient.ndjson"}],
              link=[{"relation": "next", "url": "manifest-2.json"}])
    _manifest(folder / "manifest-2.json",
              output=[{"type": "Observation", "url": "Observation.ndjson"}],
              link=[{"relation": "next", "url": (folder / "manifest-3.json").as_uri()}])
    _manifest(folder / "manifest-3.json",
              output=[{"type": "Condition", "url": "Condition.ndjson"}])
    assert [f.path.name for f in discover([folder])] == [
        "Patient.ndjson", "Observation.ndjson", "Condition.ndjson"]
    assert [f.path.name for f in discover([folder / "manifest-2.json"])] == [
        "Observation.ndjson", "Condition.ndjson"]


def test_a_remote_or_circular_next_link_is_refused(tmp_path: Path) -> None:
    folder = _plain(tmp_path / "export")
    remote = "https://server.example/bulk/status/7?page=2"
    _manifest(folder / "manifest.json", output=[{"url": "Patient.ndjson"}],
              link=[{"relation": "next", "url": remote}])
    with pytest.raises(CohortError, match=r"link\[0\] \(relation 'next'\) names the remote"):
        discover([folder])
    _manifest(folder / "manifest.json", output=[{"url": "Patient.ndjson"}],
              link=[{"relation": "next", "url": "manifest-2.json"}])
    _manifest(folder / "manifest-2.json", output=[{"url": "Observation.ndjson"}],
              link=[{"relation": "next", "url": "manifest.json"}])
    with pytest.raises(CohortError, match="leads back to"):
        discover([folder / "manifest.json"])


def test_two_unrelated_manifests_in_one_folder_are_refused(tmp_path: Path) -> None:
    folder = _plain(tmp_path / "export")
    _manifest(folder / "one.json", output=[{"url": "Patient.ndjson"}])
    _manifest(folder / "two.json", output=[{"url": "Condition.ndjson"}])
    with pytest.raises(CohortError, match="more than one export manifest"):
        discover([folder])


def test_a_manifest_with_the_logical_models_resource_type_is_a_manifest(
        tmp_path: Path) -> None:
    folder = _plain(tmp_path / "export")
    _manifest(folder / "manifest.json", output=[{"url": "Patient.ndjson"}],
              resourceType="http://hl7.org/fhir/uv/bulkdata/StructureDefinition/"
                           "BulkDataManifest")
    assert [f.path.name for f in discover([folder])] == ["Patient.ndjson"]


# --------------------------------------------------------------------------- #
# The same assessments
# --------------------------------------------------------------------------- #
def _export_shapes(root: Path) -> Path:
    """The resources of IDS spread over every input shape: a plain folder, an
    STU2 manifest with errors, an organized-by-patient export behind partial
    manifests, and a folder of Bundles beside NDJSON."""
    _plain(root / "1-plain", ("a",))
    stu2 = root / "2-stu2"
    for rtype, items in _by_type(("b",)).items():
        write_ndjson(stu2 / "out" / f"{rtype}.ndjson", items)
    write_ndjson(stu2 / "out" / "err.ndjson", [_outcome("one resource was left out")])
    _manifest(stu2 / "manifest.json",
              output=[{"type": t, "url": f"https://h.example/out/{t}.ndjson"}
                      for t in ("Patient", "Observation", "Condition")],
              error=[{"type": "OperationOutcome", "url": "out/err.ndjson"}])
    stu3 = root / "3-organized"
    outputs = _organized(stu3, ("c",))
    _manifest(stu3 / "manifest.json", outputOrganizedBy="Patient", output=outputs[:1],
              link=[{"relation": "next", "url": "manifest-2.json"}])
    _manifest(stu3 / "manifest-2.json", outputOrganizedBy="Patient", output=outputs[1:],
              outcome=[])
    mixed = root / "4-mixed"
    write_ndjson(mixed / "Patient.ndjson", [patient("d")])
    (mixed / "rest.json").write_bytes(orjson.dumps({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": res} for res in _resources("d")[1:]]}))
    return root


def test_every_shape_gives_the_assessments_of_one_plain_folder(tmp_path: Path) -> None:
    plain = screen_cohort(_plain(tmp_path / "plain"), tmp_path / "out-plain")
    shapes = screen_cohort(_export_shapes(tmp_path / "shapes"), tmp_path / "out-shapes")
    assert shapes.assessed == plain.assessed == len(IDS)
    assert (tmp_path / "out-shapes" / "assessments.ndjson").read_bytes() == (
        tmp_path / "out-plain" / "assessments.ndjson").read_bytes()
    rows = read_ndjson(tmp_path / "out-shapes" / "errors.ndjson")
    assert [(r["kind"], r["error"]) for r in rows] == [("export", "export-outcome")]
    counts: Mapping[str, Any] = shapes.resources
    assert counts["block_headers"] == 2 and counts["export_errors"] == 1
    assert counts["attributed"] == plain.resources["attributed"]


def test_the_screen_command_shows_the_exports_own_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdss.cli import app

    root = _export_shapes(tmp_path / "shapes")
    result = CliRunner().invoke(app, [
        "screen", str(root), "--ruleset", RULESET, "--as-of", AS_OF, "--out",
        str(tmp_path / "out"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "the export's own error rows" in result.output
    assert "block headers skipped" in result.output
