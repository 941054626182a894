"""One patient's ``evaluate`` beside the floor of parsing its bytes, in one run.

Usage::

    python bench/intake_speed.py FILE.json [FILE.json ...] [--runs 7] [--as-of DATE]

For each record (a Bundle), interleaved: ``orjson.loads`` of its bytes (the
floor), ``evaluate`` in strict and in lean mode (``engine="auto"``). Prints the
median of each per record, then the median over the records of each ratio to
the floor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

import cdss


def _median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--as-of", default=None, help="default: each bundle's latest date")
    parser.add_argument("--ruleset", default="plantar-cramps")
    args = parser.parse_args()
    rs = cdss.load_ruleset(args.ruleset)
    ratios: dict[str, list[float]] = {"strict": [], "lean": []}
    print(f"{'record':<48} {'resources':>9} {'floor ms':>9} {'strict ms':>10} {'lean ms':>8}")
    for path in args.files:
        data = path.read_bytes()
        doc = orjson.loads(data)
        entries = doc.get("entry") or []
        dates = sorted(str(e["resource"].get("effectiveDateTime", ""))[:10] for e in entries
                       if e["resource"].get("effectiveDateTime"))
        as_of = args.as_of or (dates[-1] if dates else "2026-03-01")
        cdss.evaluate(data, ruleset=rs, as_of=as_of)  # warm: models and registry
        floor = _median(partial(orjson.loads, data), args.runs)
        strict = _median(partial(cdss.evaluate, data, ruleset=rs, as_of=as_of), args.runs)
        lean = _median(partial(cdss.evaluate, data, ruleset=rs, as_of=as_of, mode="lean"),
                       args.runs)
        ratios["strict"].append(strict / floor)
        ratios["lean"].append(lean / floor)
        print(f"{path.name[:48]:<48} {len(entries):>9} {floor * 1e3:>9.2f} {strict * 1e3:>10.2f}"
              f" {lean * 1e3:>8.2f}")
    for mode, values in ratios.items():
        print(f"{mode}: median {statistics.median(values):.1f}x the floor "
              f"(range {min(values):.1f}-{max(values):.1f}x over {len(values)} records)")


if __name__ == "__main__":
    main()
