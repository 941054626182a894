"""cdss.testing generates the same records on every run: its seed is the only
thing they depend on.

In words:

1. The string hash seed of the process (``PYTHONHASHSEED``, which orders
   sets and frozensets of strings) changes no byte of what is generated.
2. Neither does the day the records are generated on (``datetime.now``,
   ``date.today`` and ``time.time`` faked to other days): records are dated
   relative to ``as_of``, never to the wall clock.
3. Neither does what the process generated before: a kit built for the same
   instant written in another UTC offset is not reused.

Each check runs the generation in fresh interpreters and compares their
output bytes: what check_ruleset explores for every shipped ruleset, and
records() and from_ruleset().
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: argv[1] fakes "today" (ISO date-time, or "-"),
# argv[2] == "warm" first asks for records dated at the same instant as
# DEFAULT_AS_OF written in UTC-04:00. Writes every generated example to stdout
# and the day it believed it was to stderr.
_GENERATE = r'''
import sys

fake = sys.argv[1]
if fake != "-":
    import datetime as _dt
    import time as _time

    _now = _dt.datetime.fromisoformat(fake)
    _shift = _now.timestamp() - _time.time()
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _shift
    _time.time_ns = lambda: _real_time_ns() + int(_shift * 1e9)

    class _Date(_dt.date):
        @classmethod
        def today(cls):
            return _now.date()

    class _DateTime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _now.astimezone(tz) if tz else _now.astimezone().replace(tzinfo=None)

        @classmethod
        def utcnow(cls):
            return _now.astimezone(_dt.timezone.utc).replace(tzinfo=None)

        @classmethod
        def today(cls):
            return cls.now()

    _dt.date, _dt.datetime = _Date, _DateTime

import datetime
import orjson
import cdss.testing._invariants as inv
from cdss.rulesets import available_rulesets
from cdss.testing import DEFAULT_AS_OF, from_ruleset, records

out = sys.stdout.buffer
real_run = inv._run


def run(strategy, test, **kwargs):
    def recorded(example):
        out.write(orjson.dumps(example) + b"\n")
        return test(example)

    return real_run(strategy, recorded, **kwargs)


inv._run = run
if sys.argv[2] == "warm":
    other = DEFAULT_AS_OF.astimezone(datetime.timezone(datetime.timedelta(hours=-4)))
    for spec in sorted(available_rulesets()):
        from_ruleset(spec, as_of=other)
        records(ruleset=spec, as_of=other)
for spec in sorted(available_rulesets()):
    # what check_ruleset explores, rule by rule (the strategies are the same
    # whatever the properties checked: one cheap property keeps this fast)
    inv.check_ruleset(spec, max_examples=60, seed=0, properties=["determinism"])
    for strategy in (records(ruleset=spec), from_ruleset(spec)):
        inv._run(strategy, lambda record: None, max_examples=20, seed=0, shrink=False)
print(f"today={datetime.date.today().isoformat()}", file=sys.stderr)
'''


def _generate(hash_seed: int, today: str = "-", warm: bool = False) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", _GENERATE, today, "warm" if warm else "cold"],
                          capture_output=True, cwd=ROOT, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    if today != "-":  # the fake clock took
        assert f"today={today[:10]}" in done.stderr.decode()
    assert done.stdout.count(b"\n") > 100
    return done.stdout


@pytest.fixture(scope="module")
def reference() -> bytes:
    return _generate(0)


def _first_difference(a: bytes, b: bytes) -> str:
    for n, (x, y) in enumerate(zip(a.splitlines(), b.splitlines(), strict=False)):
        if x != y:
            return f"example {n} differs:\n{x.decode()[:1500]}\n{y.decode()[:1500]}"
    return f"{len(a.splitlines())} vs {len(b.splitlines())} examples"


def test_generated_records_do_not_depend_on_the_string_hash_seed(reference: bytes) -> None:
    other = _generate(4)
    assert other == reference, _first_difference(reference, other)


@pytest.mark.parametrize("today", ["2027-03-28T01:30:00+00:00", "2031-10-26T23:59:59+00:00"])
def test_generated_records_do_not_depend_on_the_day_they_are_generated(
        reference: bytes, today: str) -> None:
    other = _generate(0, today=today)
    assert other == reference, _first_difference(reference, other)


def test_generated_records_do_not_depend_on_a_kit_cached_for_the_same_instant_in_another_offset(
        reference: bytes) -> None:
    """A kit was cached by as_of, and aware datetimes of one instant compare
    equal whatever their offset: after records dated at 2025-12-31T20:00-04:00,
    check_ruleset at 2026-01-01T00:00Z reused that kit, counted birth dates
    from 31 December and evaluated at the -04:00 as_of."""
    other = _generate(0, warm=True)
    assert other == reference, _first_difference(reference, other)
