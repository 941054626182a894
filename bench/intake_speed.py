"""One patient's ``evaluate`` beside the floor of parsing its bytes, in one run.

Usage::

    python bench/intake_speed.py FILE.json [FILE.json ...] [--runs 7] [--as-of DATE]

For each record (a Bundle), interleaved: ``orjson.loads`` of its bytes (the
floor), ``evaluate`` in strict and in lean mode (``engine="auto"``), and with
``--reference`` the same two on the reference path (``CDSS_REFERENCE_PATH=1``:
every resource validated and read, lean in one ``validate_json`` pass). Prints
the median of each per record, then the median over the records of each ratio
to the floor.

Every call is timed the same way: the garbage collector enabled with its
default thresholds and collected before each call, and the call's result kept
alive until its time is taken (so the floor, too, pays for building its
objects but not for freeing them). ``--freeze`` calls ``gc.freeze()`` once
warm, as a screen's workers do, before any of it is timed.
"""

from __future__ import annotations

import argparse
import gc
import os
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
        gc.collect()
        start = time.perf_counter()
        kept = fn()
        times.append(time.perf_counter() - start)
        del kept
    return statistics.median(times)


def _reference(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        os.environ["CDSS_REFERENCE_PATH"] = "1"
        try:
            return fn()
        finally:
            del os.environ["CDSS_REFERENCE_PATH"]
    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--as-of", default=None, help="default: each bundle's latest date")
    parser.add_argument("--ruleset", default="plantar-cramps")
    parser.add_argument("--reference", action="store_true",
                        help="also time the reference path, interleaved")
    parser.add_argument("--freeze", action="store_true",
                        help="gc.freeze() once warm, as a screen's workers do (floor included)")
    args = parser.parse_args()
    rs = cdss.load_ruleset(args.ruleset)
    if args.freeze:
        for path in args.files[:1]:  # warm: models, registry, memo
            cdss.evaluate(path.read_bytes(), ruleset=rs, as_of="2026-03-01")
            cdss.evaluate(path.read_bytes(), ruleset=rs, as_of="2026-03-01", mode="lean")
        gc.collect()
        gc.freeze()
    ratios: dict[str, list[float]] = {"strict": [], "lean": []}
    if args.reference:
        ratios.update({"strict, reference path": [], "lean, reference path": []})
    print(f"{'record':<48} {'resources':>9} {'floor ms':>9} {'strict ms':>10} {'lean ms':>8}"
          + (f" {'ref strict':>10} {'ref lean':>9}" if args.reference else ""))
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
        extra = ""
        if args.reference:
            ref_strict = _median(_reference(partial(cdss.evaluate, data, ruleset=rs,
                                                    as_of=as_of)), args.runs)
            ref_lean = _median(_reference(partial(cdss.evaluate, data, ruleset=rs, as_of=as_of,
                                                  mode="lean")), args.runs)
            ratios["strict, reference path"].append(ref_strict / floor)
            ratios["lean, reference path"].append(ref_lean / floor)
            extra = f" {ref_strict * 1e3:>10.2f} {ref_lean * 1e3:>9.2f}"
        print(f"{path.name[:48]:<48} {len(entries):>9} {floor * 1e3:>9.2f} {strict * 1e3:>10.2f}"
              f" {lean * 1e3:>8.2f}{extra}")
    for mode, values in ratios.items():
        print(f"{mode}: median {statistics.median(values):.1f}x the floor "
              f"(range {min(values):.1f}-{max(values):.1f}x over {len(values)} records)")


if __name__ == "__main__":
    main()
