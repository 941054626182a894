"""Detection figures of ``cdss monitor`` at its default settings, on simulated
store histories (``cdss.monitor.simulate``: weekly seasonality in calls,
binomial firings): the share of injected faults detected, the days to
detection, and the false alarms per rule-year on fault-free data.

    python bench/monitor_detection.py [--trials 40]

Each trial writes a 120-day SQLite store and runs ``monitor_store`` day by day
over the 30 days from the onset (as a daily cron would), recording the first
alarm of the fault's rule from the onset on.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import date, timedelta
from pathlib import Path

from cdss.monitor import Fault, MonitorSettings, monitor_store, simulate, write_store

START = date(2026, 1, 5)
DAYS = 120
ONSET = 90
#: Rules by share of calls, at 300 calls a weekday (a clinic-sized service).
RATES = {"R-20": 0.20, "R-05": 0.05, "R-02": 0.02, "R-01": 0.01}


def first_alarm(path: Path, kinds: set[str], rule: str | None) -> int | None:
    """Days from the onset to the first daily run that raises such an alarm."""
    onset = (START + timedelta(days=ONSET)).isoformat()
    for day in range(ONSET, DAYS):
        until = START + timedelta(days=day + 1)
        report = monitor_store(path, until=until)  # the default settings
        if any(a["kind"] in kinds and (rule is None or a.get("rule") == rule)
               and a["period"] >= onset for a in report["alarms"]):
            return day - ONSET
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    results: dict[str, list[int | None]] = {}
    false_alarms, rule_days = 0, 0
    for trial in range(args.trials):
        for rule in RATES:
            for name, fault in ((f"silenced {rule}", Fault("silence", ONSET, rule)),
                                (f"halved {rule}", Fault("scale", ONSET, rule, 0.5))):
                path = folder / f"{trial}-{name.replace(' ', '-')}.sqlite3"
                write_store(path, simulate(rates=RATES, days=DAYS, calls_per_day=300,
                                           start=START, faults=[fault], seed=trial))
                kinds = {"silent", "drop"} if "silenced" in name else {"drop"}
                results.setdefault(name, []).append(first_alarm(path, kinds, rule))
        path = folder / f"{trial}-clean.sqlite3"
        write_store(path, simulate(rates=RATES, days=DAYS, calls_per_day=300, start=START,
                                   seed=10_000 + trial))
        settings = MonitorSettings(window=DAYS - ONSET, baseline=28)
        report = monitor_store(path, until=START + timedelta(days=DAYS), settings=settings)
        false_alarms += len({(a["kind"], a["rule"]) for a in report["alarms"]})
        rule_days += len(RATES) * (DAYS - ONSET)
    print(f"{args.trials} trials per fault; 300 calls a weekday; baseline 28 days")
    print(f"{'fault':<16} {'detected':>9} {'<=7 days':>9} {'median days':>12}")
    for name, days in results.items():
        found = [d for d in days if d is not None]
        within = sum(d <= 7 for d in found)
        median = statistics.median(found) if found else float("nan")
        print(f"{name:<16} {len(found) / len(days):>9.0%} {within / len(days):>9.0%} "
              f"{median:>12}")
    print(f"false alarms (fault-free, any kind, counted once per rule and kind): "
          f"{false_alarms} in {rule_days} rule-days = "
          f"{false_alarms / rule_days * 365:.2f} per rule-year")


if __name__ == "__main__":
    main()
