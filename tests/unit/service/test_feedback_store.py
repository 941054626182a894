"""Feedback per rule: cards issued noted in the store, feedback tied to their
rules (or to an unknown card), override reasons from a site ruleset, reports."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from cdss import cli
from cdss.errors import RulesetError
from cdss.rulesets import load_ruleset_file
from cdss.service import create_app, serve_in_background
from cdss.service._store import feedback_report
from tests.support.builders import lab
from tests.support.rulesets import MINI_RULESET, write_ruleset
from tests.unit.service.test_service import NOW, call

REASONS = [{"code": "already-treated", "display": "Already treated"},
           {"code": "not-relevant", "display": "Not relevant to this visit"}]


def site_ruleset(folder: Path, reasons: bool = True) -> Path:
    data: dict[str, Any] = copy.deepcopy(MINI_RULESET)
    if reasons:
        data["override_reasons"] = REASONS
        data["rules"][0]["override_reasons"] = ["already-treated"]  # M-LOW-01 offers one
    return write_ruleset(folder, data)


def test_override_reasons_are_a_later_field(tmp_path: Path) -> None:
    plain = load_ruleset_file(site_ruleset(tmp_path / "a", reasons=False))
    data = copy.deepcopy(MINI_RULESET)
    data["override_reasons"] = []
    empty = load_ruleset_file(write_ruleset(tmp_path / "b", data))
    declared = load_ruleset_file(site_ruleset(tmp_path / "c"))
    assert plain.sha256 == empty.sha256 != declared.sha256
    bad = copy.deepcopy(MINI_RULESET)
    bad["override_reasons"] = REASONS
    bad["rules"][1]["override_reasons"] = ["alredy-treated"]
    with pytest.raises(RulesetError, match="alredy-treated") as caught:
        load_ruleset_file(write_ruleset(tmp_path / "d", bad))
    assert caught.value.rule_id == "M-MG-01"


def test_feedback_is_stored_per_rule_and_reported(tmp_path: Path) -> None:
    path = site_ruleset(tmp_path / "rulesets")
    rs = load_ruleset_file(path)
    db = tmp_path / "store.sqlite3"
    app = create_app(rulesets=[rs], clock=lambda: NOW, insecure_dev=True, store=db)
    record = [lab("k1", "2823-3", 3.1, "mmol/L", when="2026-02-20", pid="f1"),
              lab("m1", "19123-9", 1.2, "mg/dL", when="2026-02-20", pid="f1")]
    with serve_in_background(app) as url:
        r = httpx.post(f"{url}/cds-services/mini", json=call(rs, "f1", record))
        assert r.status_code == 200, r.text
        cards = {c["extension"]["dev.cdss.provenance"]["rules"][0]: c for c in r.json()["cards"]
                 if c["extension"]["dev.cdss.provenance"]["kind"] == "flag"}
        assert set(cards) == {"M-LOW-01", "M-MG-01"}
        system = "https://cdss.dev/fhir/CodeSystem/mini/override-reason"
        assert cards["M-LOW-01"]["overrideReasons"] == [
            {"system": system, "code": "already-treated", "display": "Already treated"}]
        assert [c["code"] for c in cards["M-MG-01"]["overrideReasons"]] == \
            ["already-treated", "not-relevant"]
        unknown = str(uuid.uuid4())
        feedback = {"feedback": [
            {"card": cards["M-LOW-01"]["uuid"], "outcome": "accepted",
             "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
             "outcomeTimestamp": "2026-03-01T10:00:00Z"},
            {"card": cards["M-MG-01"]["uuid"], "outcome": "overridden",
             "overrideReason": {"reason": {"system": system, "code": "not-relevant",
                                           "display": "Not relevant to this visit"},
                                "userComment": "seen by nephrology"},
             "outcomeTimestamp": "2026-03-01T10:01:00Z"},
            {"card": unknown, "outcome": "overridden",
             "outcomeTimestamp": "2026-03-01T10:02:00Z"}]}
        r = httpx.post(f"{url}/cds-services/mini/feedback", json=feedback)
        assert r.status_code == 200 and r.json() == {"received": 3}
        r = httpx.post(f"{url}/cds-services/mini/feedback", json=feedback)  # a retry
        assert r.status_code == 200
        assert len(app.state.feedback) == 6  # the in-memory log keeps what it always kept
        assert app.state.store.counts.unknown_cards == 2
    report = {(r["ruleset"], r["rule"]): r for r in feedback_report(db)["rules"]}
    low, mg = report[("mini@1.0.0", "M-LOW-01")], report[("mini@1.0.0", "M-MG-01")]
    assert (low["shown"], low["accepted"], low["overridden"], low["acceptance_rate"]) == \
        (1, 1, 0, 1.0)
    assert (mg["shown"], mg["accepted"], mg["overridden"], mg["acceptance_rate"]) == \
        (1, 0, 1, 0.0)
    assert mg["reasons"] == [{"code": "not-relevant", "display": "Not relevant to this visit",
                              "count": 1}]
    assert mg["comments"] == 1 and "comment_texts" not in mg
    lost = report[(None, None)]
    assert (lost["shown"], lost["overridden"]) == (0, 1)  # stored once, never dropped
    assert set(report) == {("mini@1.0.0", "M-LOW-01"), ("mini@1.0.0", "M-MG-01"), (None, None)}
    assert feedback_report(db, since=NOW.replace(hour=10, minute=1))["rules"][-1]["rule"] \
        is None

    runner = CliRunner()
    table = runner.invoke(cli.app, ["feedback-report", "--store", str(db)])
    assert table.exit_code == 0, table.output
    line = next(x for x in table.output.splitlines() if "M-MG-01" in x)
    assert "not-relevant (Not relevant to this visit) 1" in line and "0%" in line
    assert "seen by nephrology" not in table.output
    assert "(unknown card)" in table.output
    shown = runner.invoke(cli.app, ["feedback-report", "--store", str(db), "--comments"])
    assert "M-MG-01: seen by nephrology" in shown.output
    as_json = runner.invoke(cli.app, ["feedback-report", "--store", str(db), "--json"])
    rows = orjson.loads(as_json.output)["rules"]
    assert {(r["rule"], r["accepted"], r["overridden"]) for r in rows} >= \
        {("M-LOW-01", 1, 0), ("M-MG-01", 0, 1), (None, 0, 1)}
    bad = runner.invoke(cli.app, ["feedback-report", "--store", str(db), "--since", "soon"])
    assert bad.exit_code != 0


def test_a_store_that_fails_at_runtime_does_not_fail_the_answer(tmp_path: Path) -> None:
    rs = load_ruleset_file(site_ruleset(tmp_path / "rulesets"))
    db = tmp_path / "store.sqlite3"
    app = create_app(rulesets=[rs], clock=lambda: NOW, insecure_dev=True, store=db)
    record = [lab("k1", "2823-3", 3.1, "mmol/L", when="2026-02-20", pid="f2")]
    with serve_in_background(app) as url:
        assert app.state.store.flushed()
        app.state.store.path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        db.mkdir()  # the file is gone and cannot come back
        store = app.state.store

        def broken(*args: Any) -> None:
            raise OSError("disk gone")

        store._write_cards = broken
        r = httpx.post(f"{url}/cds-services/mini", json=call(rs, "f2", record))
        assert r.status_code == 200 and r.json()["cards"]
        store._write_feedback = broken
        r = httpx.post(f"{url}/cds-services/mini/feedback", json={"feedback": [
            {"card": r.json()["cards"][0]["uuid"], "outcome": "overridden",
             "outcomeTimestamp": "2026-03-01T10:02:00Z"}]})
        assert r.status_code == 500  # the client is told, and may send it again
        assert store.counts.failed["cards"] >= 1 and store.counts.failed["feedback"] == 1
