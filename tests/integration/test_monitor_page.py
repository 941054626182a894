"""The monitoring page (``cdss monitor --html``), rendered in headless
Chromium like the screen's report: nothing broken, every chart drawn, no
request, the alarms listed and the signalling periods marked; and the
command's exit status as cron or CI reads it."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cdss import cli
from cdss.monitor import Fault, simulate, write_store
from tests.integration.test_report_browser import page_problems, render

START = date(2026, 1, 1)
UNTIL = (START + timedelta(days=60)).isoformat()
RATES = {"R-COMMON": 0.2, "R-MID": 0.05, "R-RARE": 0.01}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("monitor") / "store.sqlite3"
    write_store(path, simulate(
        rates=RATES, days=60, calls_per_day=300, start=START, seed=7,
        faults=[Fault("silence", 50, "R-MID"),
                Fault("unmapped", 52, "R-COMMON", 0.5, "http://loinc.org|99999-9")]))
    return path


@pytest.fixture(scope="module")
def seen(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("page")
    result = CliRunner().invoke(cli.app, ["monitor", "--store", str(store), "--until", UNTIL,
                                          "--html", str(out / "monitor.html")])
    assert result.exit_code == 1, result.output
    seen: dict[str, Any] = render(out / "monitor.html", out / "monitor.png")
    return seen


def test_the_page_renders_with_nothing_broken(seen: dict[str, Any]) -> None:
    assert page_problems(seen, ("Alarms", "Service svc")) == []
    assert seen["title"] == "Rule monitoring: service"
    assert seen["failed_requests"] == []


def test_every_rule_has_a_chart_drawn(seen: dict[str, Any]) -> None:
    charts = [c for c in seen["charts"] if c["kind"] == "svg"]
    assert len(charts) == len(RATES)
    # the frame and one mark per period of the window (14), at least
    assert all(c["marks"] >= 15 for c in charts)


def test_a_broken_page_fails_the_same_checks(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><title>x</title><h1>Alarms</h1>"
                    "<svg width='640' height='0'></svg><img src='http://example.org/a.png'>"
                    "<script>undefined_call()</script>", encoding="utf-8")
    found = page_problems(render(page, tmp_path / "broken.png"), ("Alarms", "Service svc"))
    assert any("script error" in f for f in found)
    assert any("request" in f for f in found)
    assert any("sections missing" in f for f in found)
    assert any("charts not drawn" in f for f in found)


def test_the_exit_status_follows_fail_on(store: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["monitor", "--store", str(store), "--until", UNTIL]
    assert runner.invoke(cli.app, [*base, "--fail-on", "silent"]).exit_code == 1
    assert runner.invoke(cli.app, [*base, "--fail-on", "version"]).exit_code == 0
    assert runner.invoke(cli.app, [*base, "--fail-on", "none"]).exit_code == 0
    out = runner.invoke(cli.app, [*base, "--json", "-", "--fail-on", "none"])
    report = orjson.loads(out.output)
    assert {a["kind"] for a in report["alarms"]} >= {"silent", "unmapped"}
    early = runner.invoke(cli.app, [*base[:-1], (START + timedelta(days=49)).isoformat()])
    assert early.exit_code == 0 and "no alarm" in early.output
    bad = runner.invoke(cli.app, ["monitor", "--store", str(tmp_path / "none.sqlite3")])
    assert bad.exit_code == 2 and "no store file" in bad.output
    both = runner.invoke(cli.app, ["monitor"])
    assert both.exit_code == 2 and "--store" in both.output
