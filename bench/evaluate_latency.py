"""Latency of one ``evaluate`` call, median of many runs.

Usage::

    python bench/evaluate_latency.py [BUNDLE.json ...] [--runs N] [--as-of DATE]

Without files it measures the example patients. For each record it prints the
resource count, the median and p95 of ``evaluate`` (strict intake, rete
engine), the share spent in intake+facts, and the reference engine's median.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import cdss
from cdss.engine import run

HERE = Path(__file__).resolve().parent


def _timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--as-of", default="2026-03-01")
    parser.add_argument("--ruleset", default="plantar-cramps")
    args = parser.parse_args()
    files = args.files or sorted((HERE.parent / "examples" / "patients").glob("*.json"))
    rs = cdss.load_ruleset(args.ruleset)
    print(f"ruleset {rs.spec}; {args.runs} runs per record; times in ms")
    print(f"{'record':42} {'res':>5} {'median':>8} {'p95':>8} {'facts%':>7} {'ref med':>8}")
    medians = []
    for path in files:
        data = path.read_bytes()
        n = len(cdss.intake.read_record(data).resources) + 1
        cdss.evaluate(data, ruleset=rs, as_of=args.as_of)  # warm caches
        total = _timed(partial(cdss.evaluate, data, ruleset=rs, as_of=args.as_of), args.runs)
        facts_t = _timed(partial(cdss.extract_facts, data, ruleset=rs, as_of=args.as_of),
                         args.runs)
        facts = cdss.extract_facts(data, ruleset=rs, as_of=args.as_of)
        ref = _timed(partial(run, rs, facts.items, engine="reference"), args.runs)
        med = statistics.median(total)
        medians.append(med)
        p95 = statistics.quantiles(total, n=20)[-1]
        share = statistics.median(facts_t) / med * 100
        print(f"{path.name[:42]:42} {n:5d} {med * 1e3:8.2f} {p95 * 1e3:8.2f} {share:6.0f}% "
              f"{(statistics.median(ref) + statistics.median(facts_t)) * 1e3:8.2f}")
    print(f"median of medians: {statistics.median(medians) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
