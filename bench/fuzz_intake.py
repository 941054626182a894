"""A bigger fuzz run of intake than the test suite's: mutated example records
through ``evaluate`` in strict and lean mode.

Usage::

    python bench/fuzz_intake.py [--mutations 20000] [--seed 0] [--bound 10]

Each mutation (``tests/support/fuzz.py``: deep nesting, lone surrogates,
numbers beyond a double, NaN and infinity, strings of a million characters,
wrong JSON types, deleted fields; one to three per record) is evaluated in
both modes, each case in a thread under a time bound. Prints how many cases
answered, were refused with a CDSSError (by class) or raised anything else
(by class and place), how many exceeded the bound, and the time per case
(median, 99th percentile, maximum). Exits 1 when anything other than a
CDSSError was raised or a case exceeded the bound.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cdss
from cdss.errors import CDSSError
from tests.support.fuzz import Hang, bounded, examples, mutate

AS_OF = "2026-03-01"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mutations", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bound", type=float, default=10.0, help="seconds per case")
    args = parser.parse_args()
    records = examples()
    for mode in ("strict", "lean"):  # imports and caches: not part of any case
        cdss.evaluate(records[0], mode=mode, as_of=AS_OF)
    answered: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    foreign: Counter[str] = Counter()
    hangs = 0
    times: list[float] = []
    start = time.perf_counter()
    for i in range(args.mutations):
        rnd = random.Random(args.seed * 1_000_003 + i)
        record = mutate(records[i % len(records)], rnd, times=1 + i % 3)
        for mode in ("strict", "lean"):
            def run(mode: str = mode, record: object = record) -> str:
                try:
                    cdss.evaluate(record, mode=mode, as_of=AS_OF).to_json()
                except CDSSError as exc:
                    return type(exc).__name__
                return ""

            began = time.perf_counter()
            try:
                kind, result = bounded(run, args.bound)
            except Hang:
                hangs += 1
                print(f"mutation {i} ({mode}): no answer within {args.bound} s", flush=True)
                continue
            times.append(time.perf_counter() - began)
            if kind == "raised":
                where = traceback.extract_tb(result.__traceback__)[-1]
                key = f"{type(result).__name__} in {where.name} ({Path(where.filename).name})"
                if not foreign[key]:
                    print(f"mutation {i} ({mode}): {key}: {str(result)[:120]}", flush=True)
                foreign[key] += 1
            elif result:
                refused[f"{mode} {result}"] += 1
            else:
                answered[mode] += 1
    elapsed = time.perf_counter() - start
    times.sort()
    cases = len(times) + hangs
    print(f"{args.mutations:,} mutations, {cases:,} cases (strict and lean) in {elapsed:.0f} s")
    print(f"answered: {dict(answered)}")
    print(f"refused with a CDSSError: {dict(refused)}")
    print(f"raised something else: {sum(foreign.values())} {dict(foreign)}")
    print(f"over the {args.bound} s bound: {hangs}")
    if times:
        print(f"seconds per case: median {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {times[int(len(times) * 0.99)] * 1000:.1f} ms, max {times[-1]:.3f} s")
    sys.exit(1 if foreign or hangs else 0)


if __name__ == "__main__":
    main()
