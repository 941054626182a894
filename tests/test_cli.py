from __future__ import annotations

import json
from pathlib import Path

from builders import bundle, finding, patient
from typer.testing import CliRunner

from cdss.cli import app

RUNNER = CliRunner()


def _record(tmp_path: Path) -> Path:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(bundle(patient(), finding("c", "leg-cramps", nocturnal=True))))
    return path


def test_evaluate_prints_readable_text(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["evaluate", str(_record(tmp_path)), "--as-of", "2026-02-01",
                                 "--ruleset", "plantar-cramps@1.0.0"])
    assert result.exit_code == 0, result.output
    assert "Ruleset plantar-cramps@1.0.0" in result.output
    assert "Gently stretch the calves" in result.output
    assert "order Potassium" in result.output


def test_evaluate_json_is_the_assessment(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["evaluate", str(_record(tmp_path)), "--as-of", "2026-02-01",
                                 "--format", "json", "--ruleset", "plantar-cramps@1.0.0"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["ruleset"]["version"] == "1.0.0"
    assert {p["code"] for p in data["plan"]} >= {"bedtime-calf-stretch"}


def test_bad_file_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = RUNNER.invoke(app, ["evaluate", str(bad)])
    assert result.exit_code == 2
    assert "malformed JSON" in result.output and "Traceback" not in result.output


def test_rulesets_and_schema_commands() -> None:
    listed = RUNNER.invoke(app, ["rulesets"])
    assert listed.exit_code == 0 and "plantar-cramps@1.0.0" in listed.output
    schema = RUNNER.invoke(app, ["schema"])
    assert schema.exit_code == 0 and json.loads(schema.output)["title"] == "RulesetFile"
