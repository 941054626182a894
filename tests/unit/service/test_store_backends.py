"""The store on both backends: SQLite (one file) and PostgreSQL (a fresh
schema per test, on the real server). The same schema and migrations, the
replay cache shared by every process that opens the store, feedback tied to
the rules of a card another replica issued, and the reports reading either."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from cdss import cli
from cdss.errors import ServiceConfigError, StoreError
from cdss.rulesets import load_ruleset_file
from cdss.service import create_app, serve_in_background
from cdss.service._backends import MIGRATIONS, SCHEMA_VERSION, backend_for
from cdss.service._store import Store, feedback_report, migrate_store, replay_key
from tests.support.builders import lab
from tests.support.postgres import SERVER
from tests.unit.service.test_feedback_store import site_ruleset
from tests.unit.service.test_service import NOW, call

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store's location: a file, or a URL of a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return str(request.getfixturevalue("pg_url"))


def test_the_replay_cache_is_shared_by_every_store_opened_on_it(location: str) -> None:
    one, two = Store(location), Store(location)  # two processes' views of one store
    try:
        now = time.time()
        assert one.remember(("https://ehr.example", "jti-1"), now + 60, now)
        assert not two.remember(("https://ehr.example", "jti-1"), now + 60, now)  # a replay
        assert not one.remember(("https://ehr.example", "jti-1"), now + 60, now)
        assert two.remember(("https://other.example", "jti-1"), now + 60, now)  # another issuer
        # an entry whose token has expired holds nothing back
        assert one.remember(("https://ehr.example", "old"), now - 1, now - 100)
        assert two.remember(("https://ehr.example", "old"), now + 60, now)
        # what is kept is a hash: the jti itself is not in the store
        conn = one.backend.connect()
        try:
            tokens = [row[0] for row in conn.execute("SELECT token FROM replay").fetchall()]
        finally:
            conn.close()
        assert replay_key("https://ehr.example", "jti-1") in tokens
        assert not any("jti-1" in t for t in tokens)
    finally:
        one.close()
        two.close()


def test_a_sqlite_replay_is_refused_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "store.sqlite3"
    store = Store(db)
    try:
        assert store.remember(("iss", "shared"), time.time() + 60)
    finally:
        store.close()
    code = ("import sys, time; from cdss.service._store import Store; "
            "s = Store(sys.argv[1]); print(s.remember(('iss', sys.argv[2]), time.time() + 60)); "
            "s.close()")
    seen = [subprocess.run([sys.executable, "-c", code, str(db), jti], capture_output=True,
                           text=True, check=True, timeout=60).stdout.strip()
            for jti in ("shared", "fresh", "fresh")]
    assert seen == ["False", "True", "False"]


def test_two_replicas_on_one_store_tie_feedback_to_the_other_ones_cards(
        location: str, tmp_path: Path) -> None:
    rs = load_ruleset_file(site_ruleset(tmp_path / "rulesets"))
    first = create_app(rulesets=[rs], clock=lambda: NOW, insecure_dev=True, store=location)
    second = create_app(rulesets=[rs], clock=lambda: NOW, insecure_dev=True, store=location)
    record = [lab("k1", "2823-3", 3.1, "mmol/L", when="2026-02-20", pid="r1"),
              lab("m1", "19123-9", 1.2, "mg/dL", when="2026-02-20", pid="r1")]
    with serve_in_background(first) as one, serve_in_background(second) as two:
        r = httpx.post(f"{one}/cds-services/mini", json=call(rs, "r1", record))
        assert r.status_code == 200, r.text
        cards = {c["extension"]["dev.cdss.provenance"]["rules"][0]: c["uuid"]
                 for c in r.json()["cards"]
                 if c["extension"]["dev.cdss.provenance"]["kind"] == "flag"}
        assert first.state.store.flushed()  # the answer's cards are noted after it is sent
        feedback = {"feedback": [
            {"card": cards["M-LOW-01"], "outcome": "accepted",
             "acceptedSuggestions": [{"id": str(uuid.uuid4())}],
             "outcomeTimestamp": "2026-03-01T10:00:00Z"},
            {"card": cards["M-MG-01"], "outcome": "overridden",
             "outcomeTimestamp": "2026-03-01T10:01:00Z"}]}
        r = httpx.post(f"{two}/cds-services/mini/feedback", json=feedback)
        assert r.status_code == 200, r.text
        assert second.state.store.counts.unknown_cards == 0
    report = {(r["ruleset"], r["rule"]): r for r in feedback_report(location)["rules"]}
    assert (report[("mini@1.0.0", "M-LOW-01")]["shown"],
            report[("mini@1.0.0", "M-LOW-01")]["accepted"]) == (1, 1)
    assert report[("mini@1.0.0", "M-MG-01")]["overridden"] == 1
    assert (None, None) not in report
    result = CliRunner().invoke(cli.app, ["feedback-report", "--store", location, "--json"])
    assert result.exit_code == 0, result.output
    assert {(r["rule"], r["accepted"], r["overridden"])
            for r in orjson.loads(result.output)["rules"]} == \
        {("M-LOW-01", 1, 0), ("M-MG-01", 0, 1)}
    shadow = CliRunner().invoke(cli.app, ["shadow-report", "--store", location, "--json"])
    assert shadow.exit_code == 0 and orjson.loads(shadow.output)["services"] == []


def _at_version_1(location: str) -> None:
    backend = backend_for(location)
    conn = backend.connect()
    try:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in backend.ddl(MIGRATIONS[0][1]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
    finally:
        conn.close()
        backend.close()


def test_an_older_store_is_migrated_only_by_the_command(location: str, tmp_path: Path) -> None:
    _at_version_1(location)
    with pytest.raises(ServiceConfigError, match="cdss store migrate"):
        create_app(rulesets=["plantar-cramps"], insecure_dev=True, store=location)
    with pytest.raises(StoreError, match="schema version 1"):
        feedback_report(location)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["store", "migrate", "--store", location])
    assert result.exit_code == 0, result.output
    assert f"schema version 1 -> {SCHEMA_VERSION}" in result.output
    again = runner.invoke(cli.app, ["store", "migrate"], env={"CDSS_STORE": location})
    assert again.exit_code == 0 and "nothing to do" in again.output
    app = create_app(rulesets=["plantar-cramps"], insecure_dev=True, store=location)
    app.state.store.close()
    assert feedback_report(location)["rules"] == []


def test_a_newer_store_is_refused(location: str) -> None:
    migrate_store(location)
    backend = backend_for(location)
    conn = backend.connect()
    try:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    finally:
        conn.close()
        backend.close()
    with pytest.raises(ServiceConfigError, match=f"version {SCHEMA_VERSION + 1}"):
        create_app(rulesets=["plantar-cramps"], insecure_dev=True, store=location)
    result = CliRunner().invoke(cli.app, ["store", "migrate", "--store", location])
    assert result.exit_code == 2 and f"version {SCHEMA_VERSION + 1}" in result.output


def test_an_unreachable_postgresql_stops_the_service_at_start_in_seconds() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1
    start = time.monotonic()
    with pytest.raises(ServiceConfigError, match=r"127\.0\.0\.1:1") as caught:
        create_app(rulesets=["plantar-cramps"], insecure_dev=True, store=url)
    assert caught.value.field == "store"
    assert time.monotonic() - start < 30
    result = CliRunner().invoke(cli.app, ["feedback-report", "--store", url])
    assert result.exit_code == 2 and "cannot be read" in result.output
    wrong = CliRunner().invoke(cli.app, ["feedback-report", "--store", "mysql://x/y"])
    assert wrong.exit_code == 2 and "postgresql://" in wrong.output


def test_a_password_in_the_url_is_never_shown(pg_schema: str) -> None:
    url = SERVER.replace("postgres@", "postgres:hunter2secret@") + \
        f"?options=-csearch_path%3D{pg_schema}"
    store = Store(url)  # trust authentication ignores the password
    try:
        assert "hunter2secret" not in store.where and "***" in store.where
    finally:
        store.close()
    bad = url.replace(":5432", ":1")
    with pytest.raises(ServiceConfigError) as caught:
        Store(bad)
    assert "hunter2secret" not in str(caught.value)


def test_the_postgresql_schema_is_the_sqlite_one(pg_url: str, tmp_path: Path) -> None:
    file = tmp_path / "s.sqlite3"
    for where in (pg_url, str(file)):
        migrate_store(where)
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(file)) as lite:
        sqlite_columns = {(t, c[1]) for (t,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type='table'") for c in
            lite.execute(f"PRAGMA table_info({t})")}
    schema = pg_url.rsplit("%3D", 1)[1]
    with psycopg.connect(SERVER) as pg:
        pg_columns = set(pg.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s", (schema,)).fetchall())
    assert pg_columns == sqlite_columns
    assert ("replay", "token") in pg_columns


def test_feedback_waits_for_its_commit_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    rs = load_ruleset_file(site_ruleset(tmp_path / "rulesets"))
    app = create_app(rulesets=[rs], clock=lambda: NOW, insecure_dev=True, store=pg_url)
    card = str(uuid.uuid4())
    with serve_in_background(app) as url:
        r = httpx.post(f"{url}/cds-services/mini/feedback", json={"feedback": [
            {"card": card, "outcome": "overridden",
             "outcomeTimestamp": "2026-03-01T10:00:00Z"}]})
        assert r.status_code == 200
        # acknowledged: the row is there for any other connection, at once
        schema = pg_url.rsplit("%3D", 1)[1]
        with psycopg.connect(SERVER) as pg:
            rows = pg.execute(f"SELECT card, outcome FROM {schema}.feedback").fetchall()
        assert rows == [(card, "overridden")]
