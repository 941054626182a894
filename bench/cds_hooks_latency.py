"""Latency of a CDS Hooks call with ~40 prefetched resources.

Usage::

    python bench/cds_hooks_latency.py [--calls N] [--concurrency C] [--ruleset ID] [--rounds R]
                                      [--hook patient-view|order-select|order-sign]
                                      [--candidate ID@VERSION]

The order hooks are called with two draft orders (a loop diuretic and an ACE
inhibitor); their services need a ruleset with order rules
(``--ruleset plantar-cramps@1.3.0``).

Measures p50 and p99 of the same call three ways: in process
(``handle_hook``: request validation, intake, facts, rules, cards),
over HTTP on loopback one call at a time (the service runs in a child process
on 127.0.0.1, so the client does not compete with it for the GIL; adds JSON,
HTTP, the JWT check and the hop to the evaluation thread), and over HTTP with
C clients at once (calls queue for the one evaluation thread, so latency grows
with C). Each is measured with strict and with lean intake (``create_app(intake=...)``),
alternately, in ``--rounds`` rounds. The HTTP rows are measured again with a shadow
candidate on (``create_app(shadow=...)``: another version of the ruleset, ``--candidate``,
evaluated after each answer on the same thread), so the cost of shadow mode shows.
``calls/s`` is the throughput of a row: with C clients
always waiting, mean latency = C / throughput, so the latency of C clients is set by how many
calls per second the service completes.

The service runs as deployed: it trusts one issuer whose EC P-384 key is made
here, and every HTTP call carries its own ES384 JWT (signed before the clock
starts, so signing is not measured; verifying is).

``--open-loop`` measures ``cdss serve`` itself, as separate processes with
lean intake, authentication and a PostgreSQL store (a fresh schema of
``--postgres``, dropped after), under an open-loop load: calls are sent at a
fixed arrival rate whatever the answers do, over 32 keep-alive connections,
and each latency counts from the moment its call was due (so queueing shows).
It reports, in one run: the throughput at saturation (offered well above
capacity) of 1 and of ``--workers`` workers and their ratio; p50/p99 at half
of one worker's saturation rate; and the store's cost per call (the same rate
without a store).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec

import cdss
from cdss.hooks import HOOK, HOOKS, handle_hook, prefetch_templates
from cdss.rulesets import available_rulesets
from cdss.service import base_url, bind, create_app, load_config, serve_in_background

AS_OF = datetime(2026, 3, 1, tzinfo=timezone.utc)
PID = "bench-1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://cdss.dev/fhir/CodeSystem/findings"
SUBJECT = {"reference": f"Patient/{PID}"}


def _obs(oid: str, system: str, code: str, when: str, **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": system, "code": code}]}, "subject": SUBJECT,
            "effectiveDateTime": when, **value}


def _qty(value: float, unit: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": unit,
                              "system": "http://unitsofmeasure.org", "code": unit}}


def record() -> list[dict[str, Any]]:
    """A busy record: 39 resources besides the Patient, most of them read by the rules."""
    labs: list[tuple[str, str, list[float]]] = [
            ("2823-3", "mmol/L", [3.3, 3.6, 3.9]), ("19123-9", "mg/dL", [1.6, 1.9, 2.0]),
            ("2951-2", "mmol/L", [141, 146]), ("2692-2", "mosm/kg", [290]),
            ("3094-0", "mg/dL", [18, 22]), ("2160-0", "mg/dL", [0.9, 1.0]),
            ("2965-2", "1", [1.020]), ("98979-8", "mL/min/{1.73_m2}", [78, 81])]
    out: list[dict[str, Any]] = []
    for code, unit, values in labs:
        for i, value in enumerate(values):
            out.append(_obs(f"lab-{code}-{i}", LOINC, code, f"2026-02-{10 + i * 5:02d}",
                            **_qty(value, unit)))
    findings = ["heel-pain", "first-step-pain", "leg-cramps", "calf-tightness",
                "high-activity", "low-back-pain-symptom", "radiating-leg-pain",
                "foot-numbness-tingling", "low-fluid-intake"]
    for i, code in enumerate(findings):
        out.append(_obs(f"f-{code}", LOCAL, code, f"2026-02-{1 + i:02d}", valueBoolean=True))
    out.append(_obs("f-cramps-old", LOCAL, "leg-cramps", "2025-11-02", valueBoolean=True))
    active = {"clinicalStatus": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}}
    for cid, system, code in [("c-pf", SNOMED, "202882003"), ("c-dm", ICD10CM, "E11.9"),
                              ("c-htn", SNOMED, "38341003"), ("c-lbp", ICD10CM, "M54.50"),
                              ("c-ckd", SNOMED, "431855005"), ("c-asthma", SNOMED, "195967001")]:
        out.append({"resourceType": "Condition", "id": cid, "subject": SUBJECT,
                    "code": {"coding": [{"system": system, "code": code}]}, **active})
    for mid, code in [("m-hctz", "310798"), ("m-lisinopril", "314076"),
                      ("m-metformin", "860975"), ("m-atorva", "617312")]:
        out.append({"resourceType": "MedicationRequest", "id": mid, "status": "active",
                    "intent": "order", "subject": SUBJECT,
                    "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]}})
    out.append({"resourceType": "MedicationStatement", "id": "ms-mg", "status": "active",
                "subject": SUBJECT, "medicationCodeableConcept": {"text": "magnesium oxide"}})
    for aid, code in [("a-nsaid", "293586001"), ("a-penicillin", "91936005")]:
        out.append({"resourceType": "AllergyIntolerance", "id": aid, "patient": SUBJECT,
                    "code": {"coding": [{"system": SNOMED, "code": code}]}})
    return out


#: The orders an order-select / order-sign call is about: a loop diuretic and an
#: ACE inhibitor (RxNorm clinical drugs), drafts for the bench patient.
DRAFT_ORDERS = [
    {"resourceType": "MedicationRequest", "id": f"draft-{name}", "status": "draft",
     "intent": "order", "subject": SUBJECT,
     "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]}}
    for name, code in (("furosemide", "313988"), ("lisinopril", "314076"))]


def service_id(rs: cdss.Ruleset, hook: str) -> str:
    """The id the service gives the ``hook`` service of ``rs``."""
    return rs.id if hook == HOOK else f"{rs.id}-{hook}"


def body(rs: cdss.Ruleset, hook: str = HOOK) -> dict[str, Any]:
    """A ``hook`` request whose prefetch satisfies every template of ``rs``
    for that hook (for the order hooks, with :data:`DRAFT_ORDERS`)."""
    resources = record()
    templates = prefetch_templates(rs, hook)
    prefetch: dict[str, Any] = {k: None for k in templates}
    prefetch["patient"] = {"resourceType": "Patient", "id": PID, "birthDate": "1968-04-02",
                           "gender": "female"}
    taken: set[str] = set()
    for key, template in templates.items():
        if key == "patient":
            continue
        parts = urlsplit(template)
        codes = parse_qs(parts.query).get("code", [""])[0].split(",")
        found = [r for r in resources if r["resourceType"] == parts.path and r["id"] not in taken
                 and ("code=" not in template or any(
                     f"{c['system']}|{c['code']}" in codes
                     for c in r.get("code", {}).get("coding", [])))]
        taken.update(r["id"] for r in found)
        if found:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset",
                             "entry": [{"resource": r} for r in found]}
    context: dict[str, Any] = {"userId": "Practitioner/bench", "patientId": PID}
    if hook != HOOK:
        context.update(encounterId="bench-encounter", draftOrders={
            "resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in DRAFT_ORDERS]})
        if hook == "order-select":
            context["selections"] = [f"MedicationRequest/{DRAFT_ORDERS[0]['id']}"]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": prefetch}


ISSUER = "https://bench-ehr.example"


def serve(rs: cdss.Ruleset, config_file: str, intake: str, candidate: str | None,
          hook: str) -> None:
    """Child process: serve ``rs`` on loopback with the configuration in
    ``config_file`` (its public URL is the loopback URL), print the URL, stop
    when stdin closes."""
    sock = bind("127.0.0.1")
    url = base_url(sock)
    config = load_config(config_file, public_url=url, environ={})
    app = create_app(rulesets=(rs,), clock=lambda: AS_OF, config=config, intake=intake,
                     shadow={service_id(rs, hook): candidate} if candidate else None)
    with serve_in_background(app, sock=sock) as base:
        print(base, flush=True)
        sys.stdin.read()


def tokens(key: ec.EllipticCurvePrivateKey, aud: str, count: int) -> list[dict[str, str]]:
    """``count`` Authorization headers, each with a fresh ES384 JWT for ``aud``."""
    now = int(time.time())
    return [{"Authorization": "Bearer " + jwt.encode(
        {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 280, "jti": str(uuid.uuid4())},
        key, algorithm="ES384", headers={"kid": "bench", "typ": "JWT"})} for _ in range(count)]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


Row = tuple[str, list[float], float]  # name, latencies, seconds for all of them


def in_process(rs: cdss.Ruleset, request: dict[str, Any], intake: str, calls: int) -> Row:
    """``handle_hook`` ``calls`` times, one after the other."""
    samples = []
    began = time.perf_counter()
    for _ in range(calls):
        start = time.perf_counter()
        handle_hook(request, rs, hook=request["hook"], as_of=AS_OF, mode=intake)
        samples.append(time.perf_counter() - start)
    return f"{intake}: in process", samples, time.perf_counter() - began


def over_http(rs: cdss.Ruleset, request: dict[str, Any], intake: str, calls: int,
              concurrency: int, candidate: str | None = None) -> list[Row]:
    """The service in a child process: ``calls`` calls from one client, then
    ``calls`` from ``concurrency`` clients at once."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid="bench", alg="ES384", use="sig")
    folder = tempfile.TemporaryDirectory()
    config_file = Path(folder.name) / "service.json"
    config_file.write_bytes(orjson.dumps({"issuers": [
        {"issuer": ISSUER, "jwks": {"keys": [jwk]}}]}))
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(config_file),
                              "--ruleset", rs.spec, "--intake", intake,
                              "--hook", request["hook"],
                              *(["--candidate", candidate] if candidate else [])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdin is not None
    base = child.stdout.readline().strip()
    if not base.startswith("http://127.0.0.1:"):
        raise SystemExit(f"the service did not start: {base!r}")
    rows: list[Row] = []
    name = f"{intake} + shadow" if candidate else intake
    try:
        url = f"{base}/cds-services/{service_id(rs, request['hook'])}"
        signed = iter(tokens(key, url, 20 + 2 * calls))
        with httpx.Client(timeout=60) as client:
            for _ in range(20):  # warm the connection and the evaluation thread
                client.post(url, json=request, headers=next(signed)).raise_for_status()
            samples = []
            began = time.perf_counter()
            for _ in range(calls):
                headers = next(signed)
                start = time.perf_counter()
                response = client.post(url, json=request, headers=headers)
                samples.append(time.perf_counter() - start)
                response.raise_for_status()
            rows.append((f"{name}: HTTP, 1 client", samples, time.perf_counter() - began))

        async def clients() -> list[float]:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                gate = asyncio.Semaphore(concurrency)

                async def one(headers: dict[str, str]) -> float:
                    async with gate:
                        start = time.perf_counter()
                        response = await client.post(url, json=request, headers=headers)
                        took = time.perf_counter() - start
                        response.raise_for_status()
                        return took

                return list(await asyncio.gather(*(one(next(signed)) for _ in range(calls))))

        began = time.perf_counter()
        samples = asyncio.run(clients())
        rows.append((f"{name}: HTTP, {concurrency} clients", samples,
                     time.perf_counter() - began))
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        child.wait(timeout=60)
        child.stdout.close()
        folder.cleanup()
    return rows


# --------------------------------------------------------------------------- #
# Open loop: cdss serve as processes, a fixed arrival rate
# --------------------------------------------------------------------------- #
async def _one_connection(host: str, port: int, jobs: asyncio.Queue[Any],
                          done: list[tuple[float, float, int]]) -> None:
    """Send the calls ``jobs`` holds over one keep-alive connection: a small
    HTTP/1.1 client, so that the load generator costs little CPU."""
    reader, writer = await asyncio.open_connection(host, port)
    while True:
        job = await jobs.get()
        if job is None:
            writer.close()
            return
        due, request = job
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        done.append((due, time.perf_counter(), status))


def _requests(port: int, path: str, payload: bytes, headers: list[dict[str, str]]) -> list[bytes]:
    return [(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
             f"Authorization: {h['Authorization']}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload for h in headers]


async def _open_loop(port: int, requests: list[bytes], rate: float,
                     connections: int = 32) -> tuple[list[float], float, int]:
    """Send ``requests`` at ``rate`` per second; the latencies (from when each
    was due), the seconds from the first due time to the last answer, and the
    number of answers other than 200."""
    jobs: asyncio.Queue[Any] = asyncio.Queue()
    done: list[tuple[float, float, int]] = []
    workers = [asyncio.create_task(_one_connection("127.0.0.1", port, jobs, done))
               for _ in range(connections)]
    start = time.perf_counter() + 0.05
    for i, request in enumerate(requests):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.put_nowait((due, request))
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    latencies = [end - due for due, end, _ in done]
    return latencies, max(end for _, end, _ in done) - start, sum(s != 200 for *_, s in done)


def _start_serve(config_file: str, port: int, workers: int, store: str | None) -> Any:
    command = [sys.executable, "-m", "cdss.cli", "serve", "--config", config_file,
               "--port", str(port), "--workers", str(workers), "--intake", "lean",
               "--log-level", "warning"]
    if store:
        command += ["--store", store]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"cdss serve exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                time.sleep(0.5)
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("cdss serve did not become ready")


def open_loop(args: argparse.Namespace) -> None:
    """The ``--open-loop`` measurements (see the module doc)."""
    import secrets
    import socket

    import psycopg

    rs = cdss.load_ruleset(args.ruleset)
    key = ec.generate_private_key(ec.SECP384R1())
    schema = f"cdss_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    store = f"{args.postgres}?options=-csearch_path%3D{schema}"
    payload = orjson.dumps(body(rs))
    path = f"/cds-services/{service_id(rs, HOOK)}"
    results: dict[str, tuple[list[float], float, int, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(folder) / "service.json"

        def measure(name: str, workers: int, with_store: bool, rate: float,
                    seconds: float) -> float:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            config_file.write_text(orjson.dumps({
                "public_url": f"http://127.0.0.1:{port}",
                "issuers": [{"issuer": ISSUER, "jwks": {"keys": [_public_jwk(key)]},
                             "algorithms": ["ES384"], "fhir_servers": []}]}).decode())
            process = _start_serve(str(config_file), port, workers, store if with_store else None)
            try:
                count = max(50, round(rate * seconds))
                warm = _requests(port, path, payload, tokens(
                    key, f"http://127.0.0.1:{port}{path}", min(200, count)))
                asyncio.run(_open_loop(port, warm, min(rate, 100)))
                requests = _requests(port, path, payload, tokens(
                    key, f"http://127.0.0.1:{port}{path}", count))
                latencies, took, failed = asyncio.run(_open_loop(port, requests, rate))
            finally:
                process.terminate()
                process.wait(timeout=120)
            throughput = len(latencies) / took
            results[name] = (latencies, took, failed, rate)
            print(f"{name:44} offered {rate:6.0f}/s  done {throughput:6.0f}/s  "
                  f"p50 {_pct(latencies, 50) * 1e3:7.2f}  p99 {_pct(latencies, 99) * 1e3:8.2f} ms"
                  f"  non-200 {failed}", flush=True)
            return throughput

        try:
            one = measure("1 worker, saturation", 1, True, args.offered, args.seconds)
            many = measure(f"{args.workers} workers, saturation", args.workers, True,
                           args.offered * args.workers, args.seconds)
            half = one / 2
            measure("1 worker, half of its saturation", 1, True, half, args.seconds * 2)
            measure(f"{args.workers} workers, half of 1 worker's saturation", args.workers,
                    True, half, args.seconds * 2)
            measure("1 worker, half, no store", 1, False, half, args.seconds * 2)
        finally:
            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    with_store = results["1 worker, half of its saturation"][0]
    without = results["1 worker, half, no store"][0]
    print(f"throughput {args.workers} workers / 1 worker: {many / one:.2f}x")
    print(f"store's cost per call at half load: p50 "
          f"{(_pct(with_store, 50) - _pct(without, 50)) * 1e3:+.2f} ms, mean "
          f"{(statistics.fmean(with_store) - statistics.fmean(without)) * 1e3:+.2f} ms")


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = orjson.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": "bench", "alg": "ES384", "use": "sig"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ruleset", default=None, help="id[@version] (default: the default)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="strict and lean are measured alternately this many times; "
                             "the row shown is the round with the lowest p99")
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--intake", default="strict", help=argparse.SUPPRESS)
    parser.add_argument("--hook", default=HOOK, choices=HOOKS,
                        help="the hook called (order hooks: with two draft orders)")
    parser.add_argument("--candidate", default=None,
                        help="the shadow candidate (default: another version of the ruleset)")
    parser.add_argument("--open-loop", action="store_true",
                        help="measure cdss serve processes under a fixed arrival rate")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="with --open-loop: the database a fresh store schema is made in")
    parser.add_argument("--workers", type=int, default=2, help="with --open-loop")
    parser.add_argument("--offered", type=float, default=700,
                        help="with --open-loop: calls/s offered per worker at saturation")
    parser.add_argument("--seconds", type=float, default=5, help="with --open-loop")
    args = parser.parse_args()
    if args.open_loop:
        open_loop(args)
        return
    rs = cdss.load_ruleset(args.ruleset)
    if args.serve:
        serve(rs, args.serve, args.intake, args.candidate, args.hook)
        return
    candidate = args.candidate or next(
        (s for s in sorted(available_rulesets(), reverse=True)
         if s.startswith(f"{rs.id}@") and s != rs.spec), None)
    request = body(rs, args.hook)
    count = 1 + sum(len(v.get("entry", [])) for k, v in request["prefetch"].items()
                    if v is not None and k != "patient")
    cards = handle_hook(request, rs, hook=args.hook, as_of=AS_OF)["cards"]  # warm caches
    if len(handle_hook(request, rs, hook=args.hook, as_of=AS_OF, mode="lean")["cards"]) != \
            len(cards):
        raise SystemExit("strict and lean intake give different cards")
    best: dict[str, Row] = {}
    for _ in range(args.rounds):
        for intake in ("strict", "lean"):
            shadowed = over_http(rs, request, intake, args.calls, args.concurrency,
                                 candidate) if candidate else []
            for row in [in_process(rs, request, intake, args.calls),
                        *over_http(rs, request, intake, args.calls, args.concurrency),
                        *shadowed]:
                if row[0] not in best or _pct(row[1], 99) < _pct(best[row[0]][1], 99):
                    best[row[0]] = row

    print(f"ruleset {rs.spec}; {args.hook} with {count} prefetched resources "
          f"({len(cards)} cards); {args.calls} calls per row, best of {args.rounds} "
          "alternated rounds by p99; times in ms")
    print(f"shadow candidate: {candidate or 'none'}")
    print(f"{'':30} {'p50':>8} {'p99':>8} {'mean':>8} {'calls/s':>8}")
    for name in sorted(best, key=lambda n: (n.split(":")[1], n)):
        _, values, seconds = best[name]
        print(f"{name:30} {_pct(values, 50) * 1e3:8.2f} {_pct(values, 99) * 1e3:8.2f} "
              f"{statistics.fmean(values) * 1e3:8.2f} {len(values) / seconds:8.0f}")
    strict, lean = best["strict: in process"], best["lean: in process"]
    print(f"in process, strict / lean p50: {_pct(strict[1], 50) / _pct(lean[1], 50):.2f}x")


if __name__ == "__main__":
    main()
