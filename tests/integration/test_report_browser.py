"""The screen's report, rendered in headless Chromium and used as a reader would.

``tests/tools/render.mjs`` (playwright-core driving Chromium) opens the
self-contained ``report.html`` from disk, records what broke (script errors,
console errors, any request at all), what was drawn (every chart's size on
screen) and what the worklist's controls did (sorting twice, a severity filter,
a text filter). The tests here judge that record, so a broken page fails them:
the last tests feed the same check pages that are broken on purpose.
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path
from typing import Any

import pytest

from cdss.cohort import GeneratedCohort, screen
from tests.support.cohort import AS_OF, RULESET
from tests.support.tools import chromium, run_node
from tests.unit.cohort.test_diff_rules import diff_report

SECTIONS = ("Counts", "Worklist", "Highest severity per patient", "Flag prevalence",
            "Flags by age band", "Flags by sex", "Referrals", "Data requests", "Plan items",
            "Codes that match no value set", "Errors by kind", "Ruleset")


def render(report: Path, screenshot: Path, needle: str = "") -> dict[str, Any]:
    """What Chromium made of ``report``."""
    result: dict[str, Any] = run_node("render.mjs", chromium(), report, screenshot, needle)
    return result


def page_problems(seen: dict[str, Any], sections: tuple[str, ...]) -> list[str]:
    """What is wrong with any rendered page of cdss, in words; empty when nothing is."""
    found = [f"script error: {e}" for e in seen["page_errors"]]
    found += [f"console error: {e}" for e in seen["console_errors"]]
    found += [f"request from a self-contained page: {u}" for u in seen["requests"]]
    missing = [s for s in sections if s not in seen["headings"]]
    if missing:
        found.append(f"sections missing: {missing}")
    flat = [c for c in seen["charts"] if c["width"] < 50 or c["height"] < 5 or not c["marks"]]
    if flat:
        found.append(f"charts not drawn: {flat}")
    if seen["clipped_texts"]:
        found.append(f"chart text cut off: {seen['clipped_texts']}")
    if seen["page_width"] > seen["viewport_width"]:
        found.append(f"page wider than the window: {seen['page_width']} px")
    return found


def problems(seen: dict[str, Any]) -> list[str]:
    """What is wrong with a rendered screen report: as any page, and its charts
    and worklist controls must be there."""
    found = page_problems(seen, SECTIONS)
    if not seen["charts"]:
        found.append("charts not drawn: none at all")
    worklist = seen["worklist"]
    if worklist is None:
        found.append("no worklist table")
    elif not worklist["controls_visible"]:
        found.append("the worklist's controls stayed hidden (its script did not run)")
    return found


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.fixture(scope="module")
def report(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("screen")
    screen([cohort.out], ruleset=RULESET, as_of=AS_OF, out=out, workers=0, partitions=3)
    return out


@pytest.fixture(scope="module")
def worklist_rows(report: Path) -> list[dict[str, str]]:
    with (report / "worklist.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def needle(worklist_rows: list[dict[str, str]]) -> str:
    """A flag's display that some, not all, listed patients have."""
    displays = sorted({d for r in worklist_rows for d in r["flags"].split("; ") if d})
    assert displays, "the generated cohort gave no flags"
    return max(displays, key=lambda d: (
        0 < sum(d in r["flags"] for r in worklist_rows) < len(worklist_rows), d))


@pytest.fixture(scope="module")
def seen(report: Path, needle: str, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Any]:
    shot = tmp_path_factory.mktemp("shot") / "report.png"
    result = render(report / "report.html", shot, needle.lower())
    result["screenshot"] = shot
    return result


def test_the_report_renders_with_nothing_broken(seen: dict[str, Any]) -> None:
    assert problems(seen) == []
    assert seen["title"].startswith("Cohort screen")
    assert seen["failed_requests"] == []


def test_every_chart_is_drawn(seen: dict[str, Any]) -> None:
    kinds = {c["kind"] for c in seen["charts"]}
    assert kinds == {"svg", "table"}
    assert len(seen["charts"]) >= 5  # severity, prevalence, referrals, requests, plan...


def test_the_screenshot_is_the_whole_page(seen: dict[str, Any]) -> None:
    width, height = _png_size(seen["screenshot"])
    assert width == seen["viewport_width"]
    assert height > 2000  # the full page, not the first window of it


def test_the_worklist_lists_the_csv_rows_in_order(seen: dict[str, Any],
                                                  worklist_rows: list[dict[str, str]]) -> None:
    rows = seen["worklist"]["rows"]
    assert [r["first"] for r in rows] == [r["row"] for r in worklist_rows][:len(rows)]
    assert [r["severity"] for r in rows] == [
        r["highest_severity"] or "none" for r in worklist_rows][:len(rows)]
    assert seen["worklist"]["shown_text"] == f"{len(rows)} of {len(rows)} rows shown"


def test_sorting_a_column_orders_the_rows_both_ways(seen: dict[str, Any]) -> None:
    worklist = seen["worklist"]
    numbers = [int(r["first"]) for r in worklist["rows"]]
    assert len(numbers) > 10  # 9 < 10 only when sorted as numbers, not text
    assert [int(n) for n in worklist["after_sort"]] == sorted(numbers)
    assert worklist["sort_state"] == "ascending"
    assert [int(n) for n in worklist["after_second_sort"]] == sorted(numbers, reverse=True)
    assert worklist["second_sort_state"] == "descending"


def test_the_filters_show_the_matching_rows(seen: dict[str, Any], needle: str) -> None:
    worklist = seen["worklist"]
    rows = worklist["rows"]
    total = len(rows)
    by_severity = worklist["severity_filter"]
    want = sum(r["severity"] == by_severity["severity"] for r in rows)
    assert 0 < by_severity["visible"] == want
    assert by_severity["shown_text"] == f"{want} of {total} rows shown"
    by_text = worklist["text_filter"]
    want = sum(needle.lower() in r["text"].lower() for r in rows)
    assert 0 < by_text["visible"] == want < total
    assert by_text["shown_text"] == f"{want} of {total} rows shown"
    assert worklist["cleared_visible"] == total


def _broken(report: Path, tmp_path: Path, old: str, new: str) -> Path:
    html = (report / "report.html").read_text(encoding="utf-8")
    assert old in html
    page = tmp_path / "report.html"
    page.write_text(html.replace(old, new), encoding="utf-8")
    return page


@pytest.mark.parametrize(("old", "new", "said"), [
    # a script error: the controls never appear
    ('getElementById("worklist-controls")', 'getElementById("worklist-controls").x.y',
     "script error"),
    # a chart that draws nothing
    ('<rect x="', '<g x="', "charts not drawn"),
    # a page that fetches something: not self-contained
    ("</body>", '<img src="https://example.org/logo.png"></body>', "request from"),
    # a chart label too long for its column
    ('<text x="', '<text x="-40" data-x="', "text cut off"),
    # a table that overflows the window
    ("<h2>Counts</h2>", '<h2>Counts</h2><div style="width:4000px">wide</div>', "wider"),
])
def test_a_broken_page_fails_the_check(report: Path, tmp_path: Path, old: str, new: str,
                                       said: str) -> None:
    page = _broken(report, tmp_path, old, new)
    found = problems(render(page, tmp_path / "shot.png"))
    assert any(said in p for p in found), found


def test_the_diff_page_renders_with_nothing_broken(tmp_path_factory: pytest.TempPathFactory,
                                                  tmp_path: Path) -> None:
    report = diff_report(tmp_path_factory)
    assert report.changed, "the two versions changed no patient of the cohort"
    page = tmp_path / "diff.html"
    page.write_text(report.to_html(), encoding="utf-8")
    seen = render(page, tmp_path / "diff.png")
    rules = sorted(report.tallies["rules_gained"].keys() | report.tallies["rules_lost"].keys()
                   | report.tallies["rules_changed"].keys())
    assert page_problems(seen, ("Summary",)) == []
    assert rules and all(any(rule in h for h in seen["headings"]) for rule in rules)
    assert _png_size(tmp_path / "diff.png")[0] == seen["viewport_width"]
