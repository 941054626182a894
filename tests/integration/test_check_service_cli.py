"""``cdss check-service`` as users run it: the ``cdss`` command, against a
``cdss serve`` process that requires JWTs, as a 2.0 and as a 3.0 client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from cdss.service import CHECKS
from tests.integration.test_service_processes import Replica, free_port, stop
from tests.support.keys import write_key_pair

ISSUER = "https://ehr.example.org"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Path]]:
    folder = tmp_path_factory.mktemp("check-service")
    write_key_pair(folder)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (folder / "service.yaml").write_text(yaml.safe_dump({
        "public_url": url, "issuers": [{"issuer": ISSUER, "public_key_file": "ehr.pem",
                                        "algorithms": ["ES384"]}]}))
    log = folder / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cdss.cli", "serve", "--config", str(folder / "service.yaml"),
             "--port", str(port), "--ruleset", "plantar-cramps@1.4.0"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    replica = Replica(process, url, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, replica.read_log()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        stop(replica)
        raise AssertionError(f"cdss serve did not become ready:\n{replica.read_log()}")
    try:
        yield replica, folder / "ehr.key"
    finally:
        stop(replica)


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdss.cli", "check-service", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("suffix", "version"), [("", "2.0"), ("/v3", "3.0")])
def test_cdss_serve_passes_every_check(served: tuple[Replica, Path], suffix: str,
                                       version: str) -> None:
    replica, key = served
    done = check(replica.url + suffix, "--version", version, "--key", str(key),
                 "--issuer", ISSUER, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = orjson.loads(done.stdout)
    assert report["passed"] is True
    assert {c["check"]: c["status"] for c in report["checks"]} == dict.fromkeys(CHECKS,
                                                                               "passed")


def test_without_a_key_the_service_refuses_and_the_check_fails(
        served: tuple[Replica, Path]) -> None:
    """Called without a JWT, a service that needs one answers 401: discovery
    fails, and the command exits 1 naming the path."""
    done = check(served[0].url)
    assert done.returncode == 1
    assert "failed          discovery at $: GET /cds-services answered 401" in done.stdout
