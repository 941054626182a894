"""Two ``cdss serve`` processes on one PostgreSQL store (a fresh schema)
behave as one service: one runs two workers under its supervisor, the other
one; both answer under one public URL, as replicas behind a load balancer.

A token accepted by one is refused by the other; feedback on a card one
issued, sent to the other, is tied to its rules; killed with SIGKILL in the
middle of a load, one replica takes nothing down with it (every call to the
other succeeds, every feedback acknowledged is in the store), a dead worker
is replaced, and SIGTERM drains (readiness 503), stops and exits 0."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import cdss
from tests.support.builders import lab
from tests.support.postgres import SERVER, pg_schema, url_in
from tests.unit.service.test_security import bearer, hook_body, sign

__all__ = ["pg_schema"]

PUBLIC = "https://cds.example.org"
ISSUER = "https://ehr.example.org"
SERVICE = "/cds-services/plantar-cramps"


def low_k(pid: str) -> list[dict[str, Any]]:
    """Low potassium and magnesium measured today (the service evaluates now)."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    return [lab("k1", "2823-3", 3.1, "mmol/L", when=today, pid=pid),
            lab("m1", "19123-9", 1.2, "mg/dL", when=today, pid=pid)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    lines: list[str] = field(default_factory=list)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def setup(tmp_path: Path, pg_schema: str) -> tuple[Path, str, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "ehr.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = {"public_url": PUBLIC, "intake": "lean",
              "issuers": [{"issuer": ISSUER, "public_key_file": "ehr.pem",
                           "algorithms": ["ES384"], "fhir_servers": []}]}
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "metrics-token").write_text("scrape-token-abcdef0123456789\n")
    store = url_in(pg_schema)
    migrated = subprocess.run([sys.executable, "-m", "cdss.cli", "store", "migrate",
                               "--store", store], capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    return tmp_path, store, key


def start(folder: Path, store: str, name: str, *extra: str) -> Replica:
    port = free_port()
    log = folder / f"{name}.log"
    env = {**os.environ, "CDSS_STORE": store, "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cdss.cli", "serve", "--config",
             str(folder / "service.yaml"), "--port", str(port), "--metrics-token-file",
             str(folder / "metrics-token"), *extra], stdout=out, stderr=subprocess.STDOUT,
            env=env)
    replica = Replica(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, replica.read_log()
        try:
            if httpx.get(f"{replica.url}/readyz", timeout=2).status_code == 200:
                return replica
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{name} did not become ready:\n{replica.read_log()}")


def stop(replica: Replica) -> None:
    if replica.process.poll() is None:
        replica.process.kill()
        replica.process.wait(timeout=30)


def call(url: str, key: Any, pid: str, rs: cdss.Ruleset) -> httpx.Response:
    return httpx.post(f"{url}{SERVICE}", json=hook_body(rs, pid, low_k(pid)),
                      headers=bearer(sign(key, f"{PUBLIC}{SERVICE}", iss=ISSUER, kid=None)),
                      timeout=30)


def feedback(url: str, key: Any, card: str, outcome_at: str) -> httpx.Response:
    return httpx.post(f"{url}{SERVICE}/feedback", json={"feedback": [
        {"card": card, "outcome": "overridden", "outcomeTimestamp": outcome_at}]},
        headers=bearer(sign(key, f"{PUBLIC}{SERVICE}/feedback", iss=ISSUER, kid=None)),
        timeout=30)


def rows(schema: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(SERVER) as conn:
        conn.execute(f"SET search_path = {schema}")
        return conn.execute(sql, args).fetchall()


def test_two_replicas_on_one_postgresql_store(setup: tuple[Path, str, Any],
                                             pg_schema: str) -> None:
    folder, store, key = setup
    rs = cdss.load_ruleset("plantar-cramps")
    a = start(folder, store, "a", "--workers", "2", "--drain-seconds", "1")
    b = start(folder, store, "b")
    try:
        # a token accepted by one replica is refused by the other
        token = sign(key, f"{PUBLIC}{SERVICE}", iss=ISSUER, kid=None)
        first = httpx.post(f"{a.url}{SERVICE}", json=hook_body(rs, "p1", low_k("p1")),
                           headers=bearer(token), timeout=30)
        assert first.status_code == 200, first.text
        again = httpx.post(f"{b.url}{SERVICE}", json=hook_body(rs, "p1", low_k("p1")),
                           headers=bearer(token), timeout=30)
        assert again.status_code == 401
        assert '"error":"authentication: jti replayed"' in b.read_log()

        # feedback on a card replica a issued, sent to replica b, is tied to its rules
        card = first.json()["cards"][0]
        rules = card["extension"]["dev.cdss.provenance"]["rules"]
        deadline = time.monotonic() + 30
        while not rows(pg_schema, "SELECT 1 FROM issued_cards WHERE card = %s", card["uuid"]):
            assert time.monotonic() < deadline, "replica a never noted its cards"
            time.sleep(0.05)
        r = feedback(b.url, key, card["uuid"], "2026-03-01T10:00:00Z")
        assert r.status_code == 200, r.text
        stored = rows(pg_schema, "SELECT rules FROM feedback WHERE card = %s", card["uuid"])
        assert [orjson.loads(x[0]) for x in stored] == [rules]
        report = subprocess.run([sys.executable, "-m", "cdss.cli", "feedback-report", "--json",
                                 "--store", store], capture_output=True, text=True, timeout=60)
        assert report.returncode == 0, report.stderr
        assert {r["rule"] for r in orjson.loads(report.stdout)["rules"]
                if r["overridden"]} == set(rules)

        # load on both; replica b killed in the middle of it
        acknowledged: list[tuple[str, str]] = []
        failures: list[str] = []
        to_a: list[int] = []
        lock = threading.Lock()
        killed = threading.Event()

        def load(url: str, n: int, on_a: bool) -> None:
            for i in range(n):
                try:
                    answer = call(url, key, f"load-{n}-{i}", rs)
                    if on_a:
                        with lock:
                            to_a.append(answer.status_code)
                    at = f"2026-03-01T11:{i // 60:02d}:{i % 60:02d}Z"
                    fed = feedback(url, key, str(uuid.uuid4()), at)
                    if fed.status_code == 200:
                        with lock:
                            acknowledged.append((fed.request.content.decode(), at))
                    elif on_a:
                        failures.append(f"feedback to a: {fed.status_code}")
                except httpx.TransportError as exc:
                    if on_a or not killed.is_set():
                        failures.append(f"{'a' if on_a else 'b'}: {type(exc).__name__}")

        threads = [threading.Thread(target=load, args=(a.url, 60, True)),
                   threading.Thread(target=load, args=(a.url, 60, True)),
                   threading.Thread(target=load, args=(b.url, 1000, False))]
        for t in threads:
            t.start()
        time.sleep(1.5)
        killed.set()
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(timeout=30)
        for t in threads:
            t.join(timeout=300)
        assert failures == []
        assert to_a and set(to_a) == {200}
        cards = {orjson.loads(body)["feedback"][0]["card"] for body, _ in acknowledged}
        stored_cards = {c for (c,) in rows(pg_schema, "SELECT card FROM feedback")}
        assert len(cards) > 60 and cards <= stored_cards

        # a worker of replica a that dies is replaced; the other keeps answering
        pids = [int(p) for p in re.findall(r'"event":"worker started","pid":(\d+)',
                                           a.read_log())]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        statuses = [call(a.url, key, f"after-{i}", rs).status_code for i in range(20)]
        assert set(statuses) == {200}
        deadline = time.monotonic() + 60
        while len(re.findall(r'"event":"worker started"', a.read_log())) < 3:
            assert time.monotonic() < deadline, a.read_log()
            time.sleep(0.2)
        assert '"event":"worker died"' in a.read_log()

        # /metrics sums the workers (dead ones' counters included)
        text = httpx.get(f"{a.url}/metrics",
                         headers=bearer("scrape-token-abcdef0123456789"), timeout=30).text
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("cdss_calls_total{") and 'status="200"' in line
                    and 'hook="patient-view"' in line)
        assert total >= 1 + 120 + 20

        # SIGTERM: readiness first turns false, then the supervisor and workers exit 0
        a.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(f"{a.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["checks"]["draining"] is True
        assert a.process.wait(timeout=90) == 0, a.read_log()
        assert '"event":"supervisor stopped","status":0' in a.read_log()
    finally:
        stop(a)
        stop(b)
