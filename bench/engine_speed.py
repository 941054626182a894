"""The engines on facts already extracted: rete (durable-rules) beside the
reference evaluator, per patient, in one run, interleaved.

Usage::

    python bench/engine_speed.py [--patients 2000] [--rounds 5] [--ruleset plantar-cramps]

A cohort is generated (``cdss generate``'s generator, fixed seed), every patient's
facts are extracted once (lean intake), and then each round runs every patient
through ``rete`` and through ``reference``, alternating which goes first. It
checks that both give the same firings for every patient, and prints the
median per-patient cost of each engine over the rounds and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson

import cdss
from cdss.cohort import generate_cohort
from cdss.engine import run


def _patients(count: int, as_of: str) -> list[list[dict[str, object]]]:
    with tempfile.TemporaryDirectory() as tmp:
        cohort = generate_cohort(count, seed=1, out=Path(tmp), as_of=as_of)
        by_patient: dict[str, list[dict[str, object]]] = defaultdict(list)
        for path in cohort.files:
            for line in path.read_bytes().splitlines():
                resource = orjson.loads(line)
                if resource["resourceType"] == "Patient":
                    key = f"Patient/{resource['id']}"
                else:
                    subject = resource.get("subject") or resource.get("patient") or {}
                    key = subject.get("reference", "?")
                by_patient[key].append(resource)
    return [by_patient[k] for k in sorted(by_patient)]


def _signature(firings: list[object]) -> list[tuple[str, tuple[str, ...]]]:
    return [(f.rule.id, f.matched) for f in firings]  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ruleset", default="plantar-cramps")
    parser.add_argument("--as-of", default="2026-03-01")
    args = parser.parse_args()
    rs = cdss.load_ruleset(args.ruleset)
    records = _patients(args.patients, args.as_of)
    facts = [cdss.extract_facts(r, ruleset=rs, as_of=args.as_of, mode="lean").items
             for r in records]
    run(rs, facts[0], engine="rete")  # register the ruleset once, outside the timings
    times: dict[str, list[float]] = {"rete": [], "reference": []}
    disagreements = 0
    for round_ in range(args.rounds):
        order = ("rete", "reference") if round_ % 2 == 0 else ("reference", "rete")
        results: dict[str, list[object]] = {}
        for engine in order:
            start = time.perf_counter()
            results[engine] = [_signature(run(rs, f, engine=engine)[0]) for f in facts]
            times[engine].append((time.perf_counter() - start) / len(facts))
        disagreements += sum(a != b for a, b in zip(results["rete"], results["reference"],
                                                     strict=True))
    rete, ref = statistics.median(times["rete"]), statistics.median(times["reference"])
    print(f"ruleset {rs.spec}, {len(facts)} patients, {args.rounds} rounds (interleaved)")
    print(f"{'engine':<10} {'median per patient':>20} {'range':>24}")
    for name in ("rete", "reference"):
        lo, hi = min(times[name]), max(times[name])
        print(f"{name:<10} {statistics.median(times[name]) * 1e3:>17.3f} ms "
              f"{lo * 1e3:>10.3f}-{hi * 1e3:.3f} ms")
    print(f"rete / reference = {rete / ref:.2f}x; patients whose firings differ: {disagreements}")


if __name__ == "__main__":
    main()
