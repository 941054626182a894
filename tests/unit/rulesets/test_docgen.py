"""The generated ruleset reference never drifts from the rule files."""

from __future__ import annotations

import cdss
from cdss.rulesets import render_ruleset_doc
from tests.support.paths import ROOT

DOC = ROOT / "docs" / "rulesets" / "plantar-cramps.md"


def test_generated_document_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_ruleset_doc("plantar-cramps"), (
        "docs/rulesets/plantar-cramps.md is stale: run "
        "`cdss docs plantar-cramps --out docs/rulesets/plantar-cramps.md`")


def test_document_names_every_rule_threshold_and_claim() -> None:
    text = render_ruleset_doc("plantar-cramps")
    for spec in ("plantar-cramps@1.0.0", "plantar-cramps@1.1.0"):
        rs = cdss.load_ruleset(spec)
        assert rs.sha256 in text
        for rule in rs.rules:
            assert f"**{rule.id}**" in text
        for name in rs.file.thresholds:
            assert f"`{name}`" in text
        for claim in rs.file.claims:
            row = next(line for line in text.splitlines() if line.startswith(f"| {claim} |"))
            assert "not encoded" not in row  # every claim of the text maps to a rule


def test_unknown_ruleset_gives_a_short_document() -> None:
    assert "No versions found" in render_ruleset_doc("nothing-here")


def test_shipped_json_schema_is_current() -> None:
    import orjson

    from cdss.rulesets import ruleset_json_schema

    shipped = DOC.parent.parent / "ruleset.schema.json"
    assert orjson.loads(shipped.read_bytes()) == ruleset_json_schema(), (
        "docs/ruleset.schema.json is stale: run `cdss schema > docs/ruleset.schema.json`")
