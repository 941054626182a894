"""The screen's report.html: well-formed, self-contained, escaped, and with
the worklist and the charts of the summary.

The page is checked with a strict parse: every element that is not void is
closed, in order, ids are unique, and the inline script holds no ``</``.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cdss.cohort import GeneratedCohort
from cdss.cohort import _screen as cohort_mod
from cdss.cohort._report import render_report
from tests.support.cohort import screen_cohort

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class StrictPage(HTMLParser):
    """Collects the problems of a page that a lenient browser would repair."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, tuple[int, int]]] = []
        self.problems: list[str] = []
        self.ids: set[str] = set()
        self.doctype = False
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        ident = found.get("id")
        if ident is not None:
            if ident in self.ids:
                self.problems.append(f"duplicate id {ident!r}")
            self.ids.add(ident)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)
        if tag not in _VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs(tag, attrs)  # <line/> in SVG

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            self.problems.append(f"end tag of void element {tag} at {self.getpos()}")
        elif not self.stack or self.stack[-1][0] != tag:
            top = self.stack[-1] if self.stack else None
            self.problems.append(f"</{tag}> at {self.getpos()} closes {top}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1][0] == "script" and "</" in data:
            self.problems.append("the script holds '</'")
        self.text.append(data)

    def check(self, html: str) -> StrictPage:
        self.feed(html)
        self.close()
        if not self.doctype:
            self.problems.append("no <!DOCTYPE html>")
        if self.stack:
            self.problems.append(f"unclosed: {self.stack}")
        return self


def strict(html: str) -> StrictPage:
    page = StrictPage().check(html)
    assert not page.problems, page.problems
    return page


def test_the_strict_parse_finds_broken_pages() -> None:
    assert StrictPage().check("<!DOCTYPE html><html><div><span></div></html>").problems
    assert StrictPage().check("<!DOCTYPE html><html><p>open").problems
    assert StrictPage().check('<!DOCTYPE html><p id="a"></p><p id="a"></p>').problems
    assert StrictPage().check("<html></html>").problems
    assert not StrictPage().check("<!DOCTYPE html><html><p>a<br>b</p></html>").problems


def _screen(inputs: Any, out: Path, **kwargs: Any) -> cohort_mod.ScreenSummary:
    return screen_cohort(inputs, out, partitions=3, **kwargs)


@pytest.fixture(scope="module")
def capped(cohort: GeneratedCohort, tmp_path_factory: pytest.TempPathFactory
           ) -> cohort_mod.ScreenSummary:
    return _screen([cohort.out], tmp_path_factory.mktemp("report"), worklist_shown=25)


def _worklist_rows(page: StrictPage) -> int:
    return sum(1 for tag, attrs in page.tags if tag == "tr" and "data-severity" in attrs)


def test_the_report_is_well_formed_and_has_the_new_sections(
        capped: cohort_mod.ScreenSummary) -> None:
    html = (capped.out / "report.html").read_text()
    page = strict(html)
    text = " ".join(page.text)
    for heading in ("Worklist", "Highest severity per patient", "Flags by age band",
                    "Flags by sex", "Data requests", "Codes that match no value set",
                    "Errors by kind"):
        assert f">{heading}</h2>" in html, heading
    for code, display in capped.displays["flags"].items():
        if code in capped.flags:
            assert display in text, display
    for analyte in capped.data_requests:
        assert capped.displays["data_requests"][analyte] in text
    for band in capped.demographics["age_bands"]:
        assert band in text
    # the worklist is capped, and says where the rest is
    total = capped.worklist["patients"]
    assert total > 25 and capped.worklist["shown"] == 25
    assert _worklist_rows(page) == 25
    assert f"{total - 25:,} more are in" in text and "worklist.csv" in text
    # without scripts the controls stay hidden and the table is a plain table
    controls = next(attrs for tag, attrs in page.tags if attrs.get("id") == "worklist-controls")
    assert "hidden" in controls
    assert not [tag for tag, attrs in page.tags if tag in ("link", "img")
                or (tag == "script" and "src" in attrs)]
    assert "url(" not in html and "@import" not in html


def _summary(**extra: Any) -> dict[str, Any]:
    evil = '<b>"x" & y</b>'
    return {
        "ruleset": {"id": "r", "version": "1", "title": evil, "sha256": "0"},
        "as_of": "2026-03-01", "mode": "lean", "executor": "local",
        "counts": {"patients": 3, "assessments": 2, "patient_errors": 1, "balanced": True},
        "flags": {"f-one": {"patients": 2, "prevalence": 1.0}},
        "highest_severity": {"high": 2},
        "referrals": {"ref-one": 1}, "data_requests": {"potassium": 1}, "plan": {},
        "unmapped_codes": {f"http://x|{evil}": 2}, "errors_by_kind": {"input": 1, evil: 1},
        "displays": {"flags": {"f-one": evil}, "referrals": {"ref-one": evil},
                     "data_requests": {"potassium": "Potassium"}},
        "demographics": {"age_bands": {"18-39": 2}, "sexes": {"female": 2},
                         "flags_by_age_band": {"f-one": {"18-39": 2}},
                         "flags_by_sex": {"f-one": {"female": 2}}},
        "worklist": {"patients": 2, "identifiers": True, "shown": 2},
        **extra,
    }


def _rows(patient: str) -> list[dict[str, Any]]:
    evil = '<b>"x" & y</b>'
    return [{"row": i, "patient": f"{patient}{i}", "highest_severity": "high",
             "flags": [{"code": "f-one", "display": evil, "severity": "high"}],
             "referrals": [{"code": "ref-one", "display": evil, "urgency": "urgent"}],
             "evidence": [f"potassium 2.9 mmol/L on 2026-02-01 {evil}"],
             "data_requests": [{"analyte": "potassium", "display": evil}]}
            for i in (1, 2)]


def test_every_value_from_the_data_is_escaped() -> None:
    html = render_report(_summary(), _rows('Patient/<i>"p'))
    page = strict(html)
    assert "<b>" not in html and "<i>" not in html
    assert "&lt;b&gt;&quot;x&quot; &amp; y&lt;/b&gt;" in html
    assert 'Patient/<i>"p1' in " ".join(page.text)
    assert _worklist_rows(page) == 2
    assert "All 2 patients" in " ".join(page.text)
    # errors by kind, data requests and unmapped codes are drawn as bars
    bars = [attrs.get("aria-label") for tag, attrs in page.tags
            if tag == "div" and attrs.get("class") == "bar"]
    assert "input: 50.0%" in bars and "Potassium (potassium): 50.0%" in bars
    assert any(label and label.startswith("http://x|") for label in bars)


def test_without_identifiers_the_report_has_no_patient_column() -> None:
    summary = _summary(worklist={"patients": 2, "identifiers": False, "shown": 2})
    rows = [{**row, "patient": None} for row in _rows("Patient/p")]
    html = render_report(summary, rows)
    strict(html)
    assert "Patient/" not in html and ">patient</th>" not in html
    assert ">patient</th>" in render_report(_summary(), _rows("Patient/p"))


def test_an_empty_worklist_has_no_table_and_no_script() -> None:
    summary = _summary(worklist={"patients": 0, "identifiers": True, "shown": 0})
    html = render_report(summary, [])
    strict(html)
    assert "<script" not in html and 'id="worklist"' not in html
    assert "No patient has a flag, referral or data request." in html
