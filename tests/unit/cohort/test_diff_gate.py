"""The release gate: ``cdss diff --expect FILE`` exits 0 when the changes stay
within the expectations file, 1 with each violation listed when they do not,
2 when the file cannot be read (naming the field at fault)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdss.cli import app
from cdss.cohort import (
    DiffReport,
    Expectations,
    ExpectationsError,
    check,
    expectations_schema,
    load_expectations,
)
from tests.unit.cohort.test_diff_rules import AFTER, BEFORE, diff_cohort, diff_report


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> DiffReport:
    return diff_report(tmp_path_factory)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "expected.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _all_allowed(report: DiffReport) -> str:
    """An expectations file the report meets exactly (limits at the counts)."""
    lines = ["version: 1", f"max_changed: {report.changed}", "max_errors: 0",
             "other_rules: forbid", "rules:"]
    for rule, entry in report.rules().items():
        lines.append(f"  {rule}:")
        lines += [f"    max_{how}: {entry[how]}" for how in ("gained", "lost", "changed")]
        lines.append("    allow:")
        lines += [f"      - {i['change']} {i['item']} {i['code']}" for i in entry["items"]]
    return "\n".join(lines) + "\n"


def test_exact_expectations_pass(report: DiffReport, tmp_path: Path) -> None:
    assert check(report, load_expectations(_write(tmp_path, _all_allowed(report)))) == []
    assert check(report, Expectations()) == []  # an empty file expects nothing


def test_each_limit_can_be_broken(report: DiffReport) -> None:
    gained = report.rules()["PC-GAIT-02"]["gained"]
    assert gained >= 1
    found = check(report, Expectations.model_validate(
        {"max_changed": report.changed - 1,
         "rules": {"PC-GAIT-02": {"max_gained": gained - 1, "allow": ["gained plan"]}}}))
    assert [(v.rule, v.expectation) for v in found] == [
        (None, "max_changed"),
        ("PC-GAIT-02", "rules.PC-GAIT-02.max_gained"),
        ("PC-GAIT-02", "rules.PC-GAIT-02.allow"),
    ]
    assert str(found[1]) == (f"PC-GAIT-02: {gained} patients gaining an item of the rule, "
                             f"at most {gained - 1} expected (rules.PC-GAIT-02.max_gained)")
    assert "gained flag calf-overload-from-gait" in str(found[2])


def test_only_listed_rules_may_change(report: DiffReport) -> None:
    found = check(report, Expectations.model_validate(
        {"other_rules": "forbid", "rules": {"PC-GAIT-02": {}}}))
    assert {v.rule for v in found} == set(report.rules()) - {"PC-GAIT-02"}
    assert all(v.expectation == "other_rules" for v in found)
    assert check(report, Expectations.model_validate({"rules": {"PC-GAIT-02": {}}})) == []


def test_allow_by_item_or_by_code(report: DiffReport) -> None:
    items = report.rules()["PC-GAIT-02"]["items"]
    by_kind = sorted({f"{i['change']} {i['item']}" for i in items})
    assert check(report, Expectations.model_validate(
        {"rules": {"PC-GAIT-02": {"allow": by_kind}}})) == []
    one_short = check(report, Expectations.model_validate(
        {"rules": {"PC-GAIT-02": {"allow": by_kind[1:]}}}))
    assert len(one_short) == sum(1 for i in items
                                 if f"{i['change']} {i['item']}" == by_kind[0])


@pytest.mark.parametrize(("text", "field"), [
    ("rules:\n  PC-GAIT-02:\n    max_gaind: 3\n", "rules.PC-GAIT-02.max_gaind"),
    ("rules:\n  PC-GAIT-02:\n    max_lost: -1\n", "rules.PC-GAIT-02.max_lost"),
    ("rules:\n  PC-GAIT-02:\n    allow: [gained flog]\n", "rules.PC-GAIT-02.allow"),
    ("other_rules: maybe\n", "other_rules"),
    ("version: 2\n", "version"),
    ("max_changed: lots\n", "max_changed"),
    ("rules: [PC-GAIT-02]\n", "rules"),
])
def test_a_bad_file_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ExpectationsError) as caught:
        load_expectations(_write(tmp_path, text))
    assert caught.value.field == field
    assert field in str(caught.value)


@pytest.mark.parametrize("text", ["rules: [unclosed\n", "- just\n- a list\n"])
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ExpectationsError) as caught:
        load_expectations(_write(tmp_path, text))
    assert caught.value.field is None and "expected.yaml" in str(caught.value)


def test_the_schema_names_the_fields() -> None:
    schema = expectations_schema()
    assert {"version", "max_changed", "max_errors", "other_rules", "rules"} <= set(
        schema["properties"])
    assert schema["additionalProperties"] is False


def _run(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> tuple[int, str]:
    cohort = diff_cohort(tmp_path_factory)
    result = CliRunner().invoke(app, ["diff", str(cohort.out), "--from", BEFORE, "--to", AFTER,
                                      "--as-of", "2026-03-01", "--workers", "0", *extra])
    return result.exit_code, result.output


def test_the_gate_on_the_command_line(report: DiffReport, tmp_path: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    ok = _write(tmp_path, _all_allowed(report))
    code, output = _run(tmp_path_factory, "--expect", str(ok))
    assert code == 0, output
    assert "within" in output
    strict = tmp_path / "strict.yaml"
    strict.write_text("other_rules: forbid\nrules:\n  PC-GAIT-02:\n    max_gained: 0\n",
                      encoding="utf-8")
    code, output = _run(tmp_path_factory, "--expect", str(strict), "--format", "json")
    assert code == 1, output
    gained = report.rules()["PC-GAIT-02"]["gained"]
    assert f"PC-GAIT-02: {gained} patients gaining an item of the rule" in output
    assert "(rules.PC-GAIT-02.max_gained)" in output
    assert "PC-NEU-05: not listed" in output
    assert f"{len(check(report, load_expectations(strict)))} change(s) beyond" in output


def test_a_bad_file_stops_the_command(tmp_path: Path,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    bad = _write(tmp_path, "rules:\n  PC-GAIT-02:\n    max_gaind: 3\n")
    code, output = _run(tmp_path_factory, "--expect", str(bad))
    assert code == 2
    assert "rules.PC-GAIT-02.max_gaind" in output
    assert "changed" not in output.split("error:", 1)[0]  # failed before the diff ran
    code, output = _run(tmp_path_factory, "--expect", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in output


def test_the_documented_example_is_a_valid_file(tmp_path: Path) -> None:
    from tests.support.paths import ROOT

    doc = (ROOT / "docs" / "cohort-screens.md").read_text(encoding="utf-8")
    section = doc.split("### Release gate", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = load_expectations(_write(tmp_path, example))
    assert loaded.other_rules == "forbid"
    assert loaded.rules["PC-GAIT-02"].allows("gained", "flag", "calf-overload-from-gait")
    assert not loaded.rules["PC-GAIT-02"].allows("lost", "flag", "calf-overload-from-gait")
