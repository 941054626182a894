"""Shadow mode: a candidate version evaluated after each answer, its
differences per rule recorded without patient data, over HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

import cdss
from cdss import cli
from cdss.hooks import evaluate_request, validate_request
from cdss.service import ServiceConfigError, create_app, load_config, serve_in_background
from cdss.service._runtime import Worker
from cdss.service._shadow import AfterAnswer
from cdss.service._store import Store, shadow_report
from tests.support.builders import finding, lab
from tests.support.logs import secrets_in
from tests.unit.service.test_service import NAMED, NAMED_VALUES, NOW, call

ACTIVE = "plantar-cramps@1.1.0"
CANDIDATE = "plantar-cramps@1.2.0"
PID = "pq7w3-shadow"


def cramps_beside_plantar_fasciitis(pid: str) -> list[dict[str, Any]]:
    """Cramps with no recorded site beside plantar fasciitis: 1.2.0 links them
    to gait (PC-GAIT-02), 1.1.0 does not."""
    return [finding("cr-pq7w3", "leg-cramps", pid=pid),
            finding("hp-pq7w3", "heel-pain", pid=pid),
            finding("fs-pq7w3", "first-step-pain", pid=pid),
            lab("k-pq7w3", "2823-3", 3.377, "mmol/L", when="2026-02-20", pid=pid)]


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


def dump(db: Path) -> str:
    """Everything the store holds, as SQL text, plus its raw bytes decoded loosely."""
    with contextlib.closing(sqlite3.connect(db)) as conn:  # a with block alone never closes
        text = "\n".join(conn.iterdump())
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    return text + raw.decode("latin-1")


def test_differences_are_recorded_and_the_answer_is_the_active_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss")
    rs = cdss.load_ruleset(ACTIVE)
    db = tmp_path / "store.sqlite3"
    body = call(rs, PID, cramps_beside_plantar_fasciitis(PID))
    body["prefetch"]["patient"].update(NAMED)
    plain = create_app(rulesets=(ACTIVE,), clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(plain) as url:
        expected = httpx.post(f"{url}/cds-services/plantar-cramps", json=body)
    assert expected.status_code == 200
    app = create_app(rulesets=(ACTIVE,), clock=lambda: NOW, insecure_dev=True,
                     shadow={"plantar-cramps": CANDIDATE}, store=db)
    with serve_in_background(app) as url:
        r = httpx.post(f"{url}/cds-services/plantar-cramps", json=body)
        assert r.status_code == 200
        assert r.content == expected.content  # byte for byte, card uuids included
        assert all(c["extension"]["dev.cdss.provenance"]["ruleset"] == ACTIVE
                   for c in r.json()["cards"])
        assert all("overrideReasons" not in c for c in r.json()["cards"])  # none declared
        same = call(rs, "other-pq7w3", [])  # no finding: both versions agree
        assert httpx.post(f"{url}/cds-services/plantar-cramps", json=same).status_code == 200
        wait_for(lambda: app.state.shadow.counts["evaluated"] == 2)
        assert app.state.store.flushed()
    assert app.state.shadow.summary() == {"queued": 2, "evaluated": 2, "differing": 1,
                                          "failed": 0, "dropped": 0}
    report = shadow_report(db)
    [service] = report["services"]
    assert (service["active"], service["candidate"]) == (ACTIVE, CANDIDATE)
    assert (service["calls"], service["differing"], service["patients_differing"],
            service["dropped"], service["failed"]) == (2, 1, 1, 0, 0)
    rules = {r["rule"]: r for r in service["rules"]}
    assert rules["PC-GAIT-02"]["gained"] >= 2  # the flag, and its card
    assert rules["PC-GAIT-02"]["by_item"]["flag"] == {"gained": 1}
    assert rules["PC-GAIT-02"]["by_item"]["card"] == {"gained": 1}
    assert all(r["lost"] + r["gained"] + r["changed"] > 0 for r in rules.values())
    lines = [orjson.loads(rec.getMessage()) for rec in caplog.records
             if rec.name == "cdss.service" and "shadow difference" in rec.getMessage()]
    assert len(lines) == 1 and "PC-GAIT-02" in lines[0]["rules"]
    assert lines[0]["active"] == ACTIVE and lines[0]["candidate"] == CANDIDATE
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    stored = dump(db)
    assert secrets_in(logged, ("pq7w3", "3.377", *NAMED_VALUES)) == []
    secrets = ("pq7w3", "3.377", body["hookInstance"], *NAMED_VALUES)
    assert secrets_in(stored, secrets) == []
    assert secrets_in(orjson.dumps(lines).decode(), secrets) == []

    result = CliRunner().invoke(cli.app, ["shadow-report", "--store", str(db)])
    assert result.exit_code == 0, result.output
    assert "calls 2, differing 1, patients differing 1" in result.output
    assert "PC-GAIT-02" in result.output
    result = CliRunner().invoke(cli.app, ["shadow-report", "--store", str(db), "--json",
                                          "--until", "2000-01-01"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["services"] == []  # nothing that early


def test_a_full_shadow_queue_drops_and_counts(tmp_path: Path) -> None:
    active, candidate = cdss.load_ruleset(ACTIVE), cdss.load_ruleset(CANDIDATE)
    req = validate_request(orjson.dumps(call(active, PID, cramps_beside_plantar_fasciitis(PID))))
    answer = evaluate_request(req, active, as_of=NOW)
    store = Store(tmp_path / "s.sqlite3")
    after = AfterAnswer({"plantar-cramps": candidate}, store, timezone_name="UTC",
                        intake="strict")
    worker = Worker(background_limit=2)
    gate = threading.Event()

    async def calls() -> None:
        busy = worker.submit(gate.wait)  # a call's evaluation holds the thread
        for _ in range(5):
            after("plantar-cramps", active, req, {}, NOW, answer, worker)
        assert after.counts["queued"] == 2 and after.counts["dropped"] == 3
        gate.set()
        await busy

    asyncio.run(calls())
    wait_for(lambda: after.counts["evaluated"] == 2)
    assert store.flushed()
    store.close()
    worker.stop()
    [service] = shadow_report(tmp_path / "s.sqlite3")["services"]
    assert (service["calls"], service["differing"], service["dropped"]) == (2, 2, 3)


def test_a_call_goes_before_waiting_shadow_evaluations() -> None:
    worker = Worker(background_limit=10)
    gate, order = threading.Event(), list[str]()

    def shadow(i: int) -> Any:
        return lambda: order.append(f"shadow {i}")

    async def run() -> None:
        busy = worker.submit(gate.wait)
        for i in range(3):
            assert worker.offer(shadow(i))
        call_job = worker.submit(lambda: order.append("call"))
        gate.set()
        await busy
        await call_job

    asyncio.run(run())
    wait_for(lambda: len(order) == 4)
    worker.stop()
    assert order == ["call", "shadow 0", "shadow 1", "shadow 2"]


def test_shadow_is_configured_and_checked_at_start(tmp_path: Path) -> None:
    config = load_config(data={"public_url": "https://cds.example.org", "issuers": [
        {"issuer": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks"}],
        "shadow": {"plantar-cramps": CANDIDATE}, "store": {"path": str(tmp_path / "c.db")}})
    assert config is not None and config.shadow == {"plantar-cramps": CANDIDATE}
    app = create_app(rulesets=(ACTIVE,), config=config)
    assert set(app.state.shadow.candidates) == {"plantar-cramps"}
    assert app.state.store.path == tmp_path / "c.db"
    app.state.store.close()  # the app is never started, so its lifespan would not close it
    with pytest.raises(ServiceConfigError, match="no service 'nope' to shadow"):
        create_app(rulesets=(ACTIVE,), insecure_dev=True, shadow={"nope": CANDIDATE})
    with pytest.raises(ServiceConfigError, match="is the active version"):
        create_app(rulesets=(ACTIVE,), insecure_dev=True, shadow={"plantar-cramps": ACTIVE})


def test_an_unusable_store_path_stops_the_service_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ServiceConfigError, match="store"):
        create_app(rulesets=(ACTIVE,), insecure_dev=True, store=blocker / "store.sqlite3")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(uuid.uuid4().bytes * 100)
    with pytest.raises(ServiceConfigError, match="cannot be used"):
        create_app(rulesets=(ACTIVE,), insecure_dev=True, store=garbage)
    result = CliRunner().invoke(cli.app, ["shadow-report", "--store", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no store file" in result.output


def test_the_shadow_reuses_the_served_assessment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shadowed call evaluates twice (the active version once, to answer,
    and the candidate once), never the active version again."""
    import cdss.service._runtime as runtime_mod
    import cdss.service._shadow as shadow_mod

    evaluated: list[str] = []
    for module in (runtime_mod, shadow_mod):
        real = module.assess_request

        def counted(req: Any, rs: cdss.Ruleset, *args: Any, _real: Any = real,
                    **kwargs: Any) -> Any:
            evaluated.append(rs.spec)
            return _real(req, rs, *args, **kwargs)

        monkeypatch.setattr(module, "assess_request", counted)
    rs = cdss.load_ruleset(ACTIVE)
    app = create_app(rulesets=(ACTIVE,), clock=lambda: NOW, insecure_dev=True,
                     shadow={"plantar-cramps": CANDIDATE})
    with serve_in_background(app) as url:
        for n in range(3):
            body = call(rs, f"reuse-{n}", cramps_beside_plantar_fasciitis(f"reuse-{n}"))
            assert httpx.post(f"{url}/cds-services/plantar-cramps", json=body).status_code == 200
        wait_for(lambda: app.state.shadow.counts["evaluated"] == 3)
    assert sorted(evaluated) == [ACTIVE] * 3 + [CANDIDATE] * 3
    assert app.state.shadow.summary()["differing"] == 3


def test_an_order_sign_service_can_be_shadowed(tmp_path: Path) -> None:
    """Order services are shadowed like patient-view: here the candidate has no
    order rules, so the order card is lost, per rule; the answer is the active one."""
    from tests.support.builders import PID as ORDER_PID
    from tests.support.orders import ORDERS_SPEC, draft_med, order_request

    active = cdss.load_ruleset(ORDERS_SPEC)
    record = [lab("k1", "2823-3", 3.1, "mmol/L", when="2026-02-20", pid=ORDER_PID)]
    body = order_request(active, "order-sign", record, [draft_med("o1", "313988")])
    sid = f"{active.id}-order-sign"
    plain = create_app(rulesets=(ORDERS_SPEC,), clock=lambda: NOW, insecure_dev=True)
    with serve_in_background(plain) as url:
        expected = httpx.post(f"{url}/cds-services/{sid}", json=body)
    assert expected.status_code == 200 and expected.json()["cards"]
    db = tmp_path / "store.sqlite3"
    app = create_app(rulesets=(ORDERS_SPEC,), clock=lambda: NOW, insecure_dev=True,
                     shadow={sid: "plantar-cramps@1.2.0"}, store=db)
    with serve_in_background(app) as url:
        r = httpx.post(f"{url}/cds-services/{sid}", json=body)
        assert r.content == expected.content
        wait_for(lambda: app.state.shadow.counts["evaluated"] == 1)
        assert app.state.store.flushed()
    [service] = shadow_report(db)["services"]
    assert service["service"] == sid and service["differing"] == 1
    lost = {r["rule"] for r in service["rules"] if r["lost"]}
    assert "PC-ORD-01" in lost
