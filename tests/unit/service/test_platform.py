"""What the platform sees of the service: /healthz, /readyz, /metrics (behind
its bearer token), and the replay cache in a store shared by two replicas,
failing closed (503) when the store stops answering."""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

import cdss
from cdss.service import bind, create_app, load_config
from cdss.service._server import base_url, serve_in_background
from tests.support.postgres import drop_schema, url_in
from tests.unit.service.test_security import (  # fixtures, and how tokens are made
    NOW,
    SERVICE,
    SPEC,
    Keys,
    bearer,
    config_file,
    fhir_a,
    fhir_b,
    hook_body,
    jwks_server,
    keys,
    low_k,
    rs,
    sign,
)

__all__ = ["config_file", "fhir_a", "fhir_b", "jwks_server", "keys", "rs"]

TOKEN = "metrics-token-0123456789abcdef"


def started(config_file: Path, stack: contextlib.ExitStack, **options: Any) -> tuple[str, Any]:
    sock = bind("127.0.0.1")
    url = base_url(sock)
    config = load_config(config_file, public_url=url, environ={})
    app = create_app(rulesets=(SPEC,), clock=lambda: NOW, config=config, **options)
    stack.enter_context(serve_in_background(app, sock=sock))
    return url, app


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_readiness_and_metrics(config_file: Path, keys: Keys, rs: cdss.Ruleset,
                                      tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        url, app = started(config_file, stack, metrics_token=TOKEN,
                           store=tmp_path / "store.sqlite3")
        assert httpx.get(f"{url}/healthz").json() == {"status": "alive"}
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"rulesets": True, "draining": False, "store": True,
                                          "evaluation": True}
        # /metrics: the token, and nothing else, lets a scraper in
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers=bearer("x" + TOKEN)).status_code == 401
        token = sign(keys.a, f"{url}{SERVICE}")
        assert httpx.get(f"{url}/metrics", headers=bearer(token)).status_code == 401
        # a call, a replay, feedback
        r = httpx.post(f"{url}{SERVICE}", json=hook_body(rs, "pt-secret-77", low_k("pt-secret-77")),
                       headers=bearer(token))
        assert r.status_code == 200, r.text
        card = r.json()["cards"][0]
        again = httpx.post(f"{url}{SERVICE}", json=hook_body(rs, "pt-secret-77"),
                           headers=bearer(token))
        assert again.status_code == 401
        assert app.state.store.flushed()
        fb = httpx.post(f"{url}{SERVICE}/feedback", headers=bearer(sign(
            keys.a, f"{url}{SERVICE}/feedback")), json={"feedback": [
                {"card": card["uuid"], "outcome": "overridden",
                 "outcomeTimestamp": "2026-03-01T10:00:00Z"}]})
        assert fb.status_code == 200, fb.text
        scraped = httpx.get(f"{url}/metrics", headers=bearer(TOKEN))
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        text = scraped.text
    service = "plantar-cramps"
    assert metric(text, "cdss_calls_total", service=service, hook="patient-view",
                  status="200") == 1
    assert metric(text, "cdss_calls_total", service=service, hook="patient-view",
                  status="401") == 1
    assert metric(text, "cdss_call_duration_seconds_count", service=service,
                  hook="patient-view") == 2
    assert metric(text, "cdss_auth_failures_total", reason="jti replayed") == 1
    assert metric(text, "cdss_auth_failures_total", reason="metrics token") == 3
    rule = card["extension"]["dev.cdss.provenance"]["rules"][0]
    assert metric(text, "cdss_cards_issued_total", service=service, rule=rule) >= 1
    assert metric(text, "cdss_feedback_total", service=service, rule=rule,
                  outcome="overridden") == 1
    assert "cdss_store_errors_total" in text and "cdss_shadow_jobs_dropped_total" in text
    # bounded labels: no patient, token or card in any of them
    assert "pt-secret-77" not in text and token not in text and card["uuid"] not in text


def test_metrics_are_off_without_a_token_and_unknown_services_share_a_label(
        config_file: Path, keys: Keys, rs: cdss.Ruleset) -> None:
    with contextlib.ExitStack() as stack:
        url, app = started(config_file, stack)
        assert httpx.get(f"{url}/metrics", headers=bearer(TOKEN)).status_code == 404
        for n in range(3):
            path = f"/cds-services/made-up-{n}"
            r = httpx.post(f"{url}{path}", json=hook_body(rs, "p"),
                           headers=bearer(sign(keys.a, f"{url}{path}")))
            assert r.status_code == 404
        text, _ = app.state.metrics.exposition()
    assert metric(text.decode(), "cdss_calls_total", service="unknown",
                  status="404") == 3
    assert "made-up" not in text.decode()
    with pytest.raises(cdss.CDSSError, match="16 characters"):
        create_app(rulesets=(SPEC,), insecure_dev=True, metrics_token="short")


def test_a_token_accepted_by_one_replica_is_refused_by_the_other(
        config_file: Path, keys: Keys, rs: cdss.Ruleset, pg_url: str) -> None:
    with contextlib.ExitStack() as stack:
        # both replicas answer under one public URL, as behind a load balancer
        sock_a, sock_b = bind("127.0.0.1"), bind("127.0.0.1")
        public = "https://cds.example.org"
        config = load_config(config_file, public_url=public, environ={})
        apps = [create_app(rulesets=(SPEC,), clock=lambda: NOW, config=config, store=pg_url)
                for _ in range(2)]
        urls = [stack.enter_context(serve_in_background(app, sock=sock))
                for app, sock in zip(apps, (sock_a, sock_b), strict=True)]
        token = sign(keys.a, f"{public}{SERVICE}")
        first = httpx.post(f"{urls[0]}{SERVICE}", json=hook_body(rs, "p1", low_k("p1")),
                           headers=bearer(token))
        assert first.status_code == 200, first.text
        replayed = httpx.post(f"{urls[1]}{SERVICE}", json=hook_body(rs, "p1"),
                              headers=bearer(token))
        assert replayed.status_code == 401
        fresh = httpx.post(f"{urls[1]}{SERVICE}", json=hook_body(rs, "p1", low_k("p1")),
                           headers=bearer(sign(keys.a, f"{public}{SERVICE}")))
        assert fresh.status_code == 200


def test_a_store_that_stops_answering_fails_calls_closed(
        config_file: Path, keys: Keys, rs: cdss.Ruleset, pg_schema: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cdss")
    with contextlib.ExitStack() as stack:
        url, _ = started(config_file, stack, store=url_in(pg_schema), metrics_token=TOKEN)
        ok = httpx.post(f"{url}{SERVICE}", json=hook_body(rs, "p2", low_k("p2")),
                        headers=bearer(sign(keys.a, f"{url}{SERVICE}")))
        assert ok.status_code == 200
        drop_schema(pg_schema)  # the store's tables are gone: no replay check can be made
        token = sign(keys.a, f"{url}{SERVICE}")
        refused = httpx.post(f"{url}{SERVICE}", json=hook_body(rs, "p2", low_k("p2")),
                             headers=bearer(token))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "cards" not in refused.json()
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200  # the server answers SELECT 1: reachable
        text = httpx.get(f"{url}/metrics", headers=bearer(TOKEN)).text
    assert metric(text, "cdss_store_errors_total", operation="replay") == 1
    assert metric(text, "cdss_calls_total", service="plantar-cramps", hook="patient-view",
                  status="503") == 1
    assert metric(text, "cdss_auth_failures_total", reason="store unavailable") == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any('"store unreachable"' in line and '"replay"' in line for line in lines)
    assert any('"store unavailable"' in line and '"status":503' in line for line in lines)


def test_readiness_fails_when_the_store_is_unreachable_or_the_worker_drains(
        config_file: Path, pg_schema: str) -> None:
    with contextlib.ExitStack() as stack:
        url, app = started(config_file, stack, store=url_in(pg_schema))
        assert httpx.get(f"{url}/readyz").status_code == 200
        app.state.service.draining = True
        draining = httpx.get(f"{url}/readyz")
        assert draining.status_code == 503
        assert draining.json()["checks"]["draining"] is True
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive all the same
        app.state.service.draining = False
        store = app.state.store
        store.backend.close()  # its pool closed: the store cannot be reached
        gone = httpx.get(f"{url}/readyz")
        assert gone.status_code == 503
        assert gone.json()["checks"]["store"] is False
