"""The engines on facts already extracted: rete (durable-rules) beside the
reference evaluator, per patient, in one run, interleaved.

Usage::

    python bench/engine_speed.py [--patients 2000] [--rounds 5] [--ruleset plantar-cramps]

A cohort is generated (``cdss generate``'s generator, fixed seed), every patient's
facts are extracted once (lean intake), and then each round runs every patient
through ``rete`` and through ``reference``, alternating which goes first. It
checks that both give the same firings for every patient, and prints the
median per-patient cost of each engine over the rounds and their ratio.

It also times, within the rete rounds, the calls into durable-rules' C engine
(``durable_rules_engine``: asserting facts, running and completing actions),
which the Python side cannot make cheaper: their sum per patient against the
reference evaluator's whole cost is the floor of the rete / reference ratio.
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


class _CTimer:
    """Wraps every function of durable's C module to sum the seconds spent in it."""

    def __init__(self) -> None:
        import durable_rules_engine

        self.module = durable_rules_engine
        self.seconds = 0.0
        self.calls = 0
        self.saved = {name: getattr(durable_rules_engine, name)
                      for name in dir(durable_rules_engine)
                      if not name.startswith("_") and callable(getattr(durable_rules_engine, name))}

    def __enter__(self) -> _CTimer:
        for name, func in self.saved.items():
            setattr(self.module, name, self._timed(func))
        return self

    def _timed(self, func):  # type: ignore[no-untyped-def]
        def timed(*args):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return func(*args)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return timed

    def __exit__(self, *exc: object) -> None:
        for name, func in self.saved.items():
            setattr(self.module, name, func)


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
    with _CTimer() as c_engine:
        for f in facts:
            run(rs, f, engine="rete")
    in_c = c_engine.seconds / len(facts)
    rete, ref = statistics.median(times["rete"]), statistics.median(times["reference"])
    print(f"ruleset {rs.spec}, {len(facts)} patients, {args.rounds} rounds (interleaved)")
    print(f"{'engine':<10} {'median per patient':>20} {'range':>24}")
    for name in ("rete", "reference"):
        lo, hi = min(times[name]), max(times[name])
        print(f"{name:<10} {statistics.median(times[name]) * 1e3:>17.3f} ms "
              f"{lo * 1e3:>10.3f}-{hi * 1e3:.3f} ms")
    print(f"rete / reference = {rete / ref:.2f}x; patients whose firings differ: {disagreements}")
    print(f"inside durable-rules' C engine (one more rete pass, timed per call): "
          f"{in_c * 1e3:.3f} ms per patient, {c_engine.calls / len(facts):.1f} calls; "
          f"= {in_c / ref:.2f}x the reference evaluator's whole cost")


if __name__ == "__main__":
    main()
