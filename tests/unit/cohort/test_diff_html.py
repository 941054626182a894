"""The HTML page of a version diff: per rule, its title, what its patients
gained and lost, example patients; self-contained and escaped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdss.cli import app
from cdss.cohort import DiffReport
from tests.unit.cohort.test_diff_rules import AFTER, BEFORE, diff_cohort, diff_report


def _hand_report() -> DiffReport:
    """A report built by hand, with text that must be escaped."""
    rules = [{"rule": "R-<1>", "item": "flag", "code": "a&b", "change": "gained"},
             {"rule": "R-2", "item": "plan", "code": "walk", "change": "lost"}]
    return DiffReport(
        from_ruleset={"id": "x", "version": "1.0.0", "title": "Old <b>title</b>"},
        to_ruleset={"id": "x", "version": "1.1.0", "title": "New title"},
        as_of="2026-03-01", mode="lean", patients=3, changed=2, unchanged=1, errors=0,
        resource_errors=0,
        tallies={"rules_gained": {"R-<1>": 1}, "rules_lost": {"R-2": 2}, "rules_changed": {},
                 "rule_items": {"R-<1> gained flag a&b": 1, "R-2 lost plan walk": 2}},
        changes=[{"patient": "Patient/<script>alert(1)</script>", "rules": rules},
                 {"patient": "Patient/quiet", "rules": rules[1:]}],
        rule_titles={"R-<1>": "Flag when \"x\" < 3 & y", "R-2": "Walking advice"},
        item_labels={"R-<1> flag a&b": "Alarm <A>", "R-2 flag a&b": "Not this one"})


def test_the_page_shows_each_rule_and_escapes_text() -> None:
    page = _hand_report().to_html()
    assert "<script" not in page
    assert "Patient/&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Flag when &quot;x&quot; &lt; 3 &amp; y" in page
    assert "<code>R-&lt;1&gt;</code>" in page and "a&amp;b" in page
    assert "Old &lt;b&gt;title&lt;/b&gt;" in page
    assert "Walking advice" in page and "plan item" in page
    rule_2 = page[page.index('id="rule-R-2"'):]
    assert re.search(r"lost</td><td>plan item</td><td><code>walk</code></td><td></td>"
                     r'<td class="n">2</td>', rule_2)
    assert "<td>Alarm &lt;A&gt;</td>" in page and "Not this one" not in page
    assert "Patient/quiet" in rule_2


def test_the_page_is_self_contained() -> None:
    page = _hand_report().to_html()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_identifiers_can_be_left_out() -> None:
    page = _hand_report().to_html(identifiers=False)
    assert "Patient/" not in page
    assert "patient 1 of the report" in page and "patient 2 of the report" in page


def test_examples_are_capped() -> None:
    page = _hand_report().to_html(examples=1)
    rule_2 = page[page.index('id="rule-R-2"'):]
    assert "Patient/quiet" not in rule_2


def test_a_report_without_changes() -> None:
    empty = DiffReport(from_ruleset={"id": "x", "version": "1"},
                       to_ruleset={"id": "x", "version": "1"}, as_of="2026-03-01", mode="lean",
                       patients=2, changed=0, unchanged=2, errors=0, resource_errors=0,
                       tallies={})
    assert "No rule's results change." in empty.to_html()


def test_the_shipped_versions_page(tmp_path_factory: pytest.TempPathFactory) -> None:
    report = diff_report(tmp_path_factory)
    page = report.to_html()
    for rule, entry in report.rules().items():
        assert f'id="rule-{rule}"' in page
        assert entry["title"] and entry["title"] in page
    assert "calf-overload-from-gait" in page
    assert ("Secondary calf cramps from gait compensation (cramp site not recorded; "
            "calf presumed)") in page
    assert f"<td class=\"n\">{report.patients:,}</td>" in page


def test_the_command_writes_the_page(tmp_path_factory: pytest.TempPathFactory,
                                     tmp_path: Path) -> None:
    cohort = diff_cohort(tmp_path_factory)
    target = tmp_path / "out" / "diff.html"
    result = CliRunner().invoke(app, ["diff", str(cohort.out), "--from", BEFORE, "--to", AFTER,
                                      "--as-of", "2026-03-01", "--workers", "0",
                                      "--html", str(target), "--no-identifiers"])
    assert result.exit_code == 0, result.output
    page = target.read_text(encoding="utf-8")
    assert 'id="rule-PC-GAIT-02"' in page and "Patient/" not in page


def test_every_item_a_rule_changed_is_shown_by_name(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    # "rule change item code" -> the label of "rule item code": a flag's or
    # referral's display, a plan item's text, a requested analyte's display
    report = diff_report(tmp_path_factory)
    keys = [key.split(" ") for key in report.tallies["rule_items"]]
    kinds = {item for _, _, item, _ in keys}
    assert {"flag", "plan", "data_request"} <= kinds
    missing = [key for key in keys if f"{key[0]} {key[2]} {key[3]}" not in report.item_labels]
    assert missing == []
    page = report.to_html()
    assert "Potassium" in page and "<td></td><td class=\"n\">" not in page
