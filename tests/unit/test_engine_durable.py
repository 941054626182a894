"""How durable-rules is wrapped: numbers it can read, no timer threads, no
deprecated calls, and a clear error where it is not installed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import warnings
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cdss
from cdss import engine as cdss_engine
from cdss.errors import DependencyError
from tests.support.builders import condition, finding, lab, patient
from tests.support.paths import ROOT

AS_OF = "2026-03-01"

# Every JSON form of a float that Python or orjson writes in exponent notation
# without a decimal point in the mantissa: the forms that crashed durable-rules.
BARE_EXPONENT_FLOATS = [1e-05, 5e-324, 2e-07, 1e-320, 1e16, -1e16, 1e300, 1e22, -1e-05]


@pytest.mark.parametrize("value", BARE_EXPONENT_FLOATS)
def test_numbers_are_written_with_a_decimal_mantissa(value: float) -> None:
    text = cdss_engine._dumps({"v": value, "s": "1e5 and 2E-7 stay as text"})
    number = text.split('"v":')[1].split(",")[0]
    mantissa = number.lower().split("e")[0]
    assert "." in mantissa, text
    assert json.loads(text) == {"v": value, "s": "1e5 and 2E-7 stay as text"}


def test_strings_that_look_like_numbers_are_not_rewritten() -> None:
    payload = {"id": "lab:1e5", "x": ['a"1e5', "\\\\", "2e3"], "n": 3, "f": 1.5e-05}
    assert json.loads(cdss_engine._dumps(payload)) == payload


def _egfr_record(value: float) -> list[dict[str, Any]]:
    return [patient(), lab("e", "98979-8", value, "mL/min/{1.73_m2}", when="2026-02-01"),
            finding("c", "leg-cramps", when="2026-02-01")]


def _in_a_fresh_process(code: str) -> str:
    """Run ``code`` in a new interpreter (so that a crash fails the test, not the
    run, and no earlier session warms durable-rules up); return what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_regression_an_egfr_of_1e_05_does_not_crash_the_process() -> None:
    # durable-rules' C parser segfaulted on 1e-05 (a plausible eGFR of almost 0)
    printed = _in_a_fresh_process(
        "import cdss; from tests.unit.test_engine_durable import _egfr_record;"
        "a = cdss.evaluate(_egfr_record(1e-05), ruleset='plantar-cramps', as_of='2026-03-01',"
        " engine='rete'); print(sorted(f.code for f in a.flags))")
    assert "hyperkalemia-risk" in printed


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.sampled_from([*BARE_EXPONENT_FLOATS[:4], 0.0, 1e-4, 29.9, 30.0,
                                         44.99, 45.0, 59.99]),
                       st.floats(min_value=0, max_value=300, allow_subnormal=True)))
def test_engines_agree_on_every_number_form(value: float) -> None:
    record = _egfr_record(value)
    rete = cdss.evaluate(record, ruleset="plantar-cramps", as_of=AS_OF, engine="rete")
    reference = cdss.evaluate(record, ruleset="plantar-cramps", as_of=AS_OF, engine="reference")
    assert rete.to_json(engine=False) == reference.to_json(engine=False)


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_durable_compares_every_finite_float_as_python_does(value: float) -> None:
    # The raw wrapped path: a fact with any finite float against fixed thresholds.
    host_class = cdss_engine._durable()
    name = "cdss-test-numbers"
    if not hasattr(test_durable_compares_every_finite_float_as_python_does, "host"):
        host = host_class()
        fired: list[tuple[str, float]] = []
        rules: dict[str, Any] = {"$catch-all": {"all": [{"m": {"$ex": {"t": 1}}}],
                                                "run": lambda c: None}}
        for i, threshold in enumerate([0.0, 0.0001, 3.5, 1.5e16, -2.0]):
            for op in ("$lt", "$gt"):
                rules[f"r{i}{op}"] = {
                    "all": [{"m": {"$and": [{"t": "x"}, {op: {"v": threshold}}]}}],
                    "run": (lambda o, t: lambda c: fired.append((o, t)))(op, threshold),
                    "dist": 0}
        host.register_rulesets({name: rules})
        test_durable_compares_every_finite_float_as_python_does.host = (host, fired)  # type: ignore[attr-defined]
    host, fired = test_durable_compares_every_finite_float_as_python_does.host  # type: ignore[attr-defined]
    fired.clear()
    with cdss_engine._HOST_LOCK:
        host.assert_facts(name, [{"sid": "s", "id": "f", "t": "x", "v": value}])
        host.delete_state(name, "s")
    expected = {(op, t) for t in [0.0, 0.0001, 3.5, 1.5e16, -2.0] for op in ("$lt", "$gt")
                if (value < t if op == "$lt" else value > t)}
    assert set(fired) == expected


def _durable_timers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def test_no_durable_thread_runs_during_or_after_evaluations() -> None:
    before = set(threading.enumerate())
    record = [patient(), lab("k", "2823-3", 2.8, "mmol/L", when="2026-02-01"),
              finding("c", "leg-cramps", when="2026-02-01")]
    for _ in range(20):
        cdss.evaluate(record, ruleset="plantar-cramps", as_of=AS_OF, engine="rete")
        assert _durable_timers() == []
    assert cdss_engine._host is not None  # the host exists, with no threads of its own
    assert set(threading.enumerate()) <= before


def test_rete_raises_no_warning_on_any_python() -> None:
    # durable-rules calls datetime.utcfromtimestamp (deprecated from 3.12) on firing
    record = [patient(), condition("pf", "202882003"), finding("c", "leg-cramps")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assessment = cdss.evaluate(record, ruleset="plantar-cramps", as_of=AS_OF,
                                   engine="rete")
    assert assessment.trace


def test_the_replaced_durable_clock_is_monotonic_and_used_by_durable() -> None:
    import time

    from durable import engine as durable_engine

    cdss_engine._durable()
    assert durable_engine._unix_now is cdss_engine._unix_now
    first = cdss_engine._unix_now()
    assert math.isclose(first, time.monotonic(), abs_tol=5.0)
    assert cdss_engine._unix_now() >= first


@pytest.fixture
def without_durable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "durable", None)
    monkeypatch.setitem(sys.modules, "durable.engine", None)
    monkeypatch.setattr(cdss_engine, "_host_class", None)
    monkeypatch.setattr(cdss_engine, "_host", None)


@pytest.mark.usefixtures("without_durable")
def test_without_durable_rules_auto_runs_the_reference_evaluator() -> None:
    record = [patient(), lab("k", "2823-3", 3.2, "mmol/L", when="2026-02-01"),
              finding("c", "leg-cramps", when="2026-02-01")]
    assessment = cdss.evaluate(record, ruleset="plantar-cramps", as_of=AS_OF)
    assert assessment.engine == "reference"
    assert assessment.flag("hypokalemia") is not None
    assert orjson.loads(assessment.to_json())["engine"] == "reference"


@pytest.mark.usefixtures("without_durable")
def test_without_durable_rules_asking_for_rete_says_how_to_install_it() -> None:
    with pytest.raises(DependencyError) as info:
        cdss.evaluate([patient()], ruleset="plantar-cramps", as_of=AS_OF, engine="rete")
    message = str(info.value)
    assert "durable-rules" in message and "CPPFLAGS" in message and "pip install" in message
    assert info.value.package == "durable-rules"
    assert isinstance(info.value, cdss.CDSSError)


def test_with_durable_rules_auto_runs_rete() -> None:
    assessment = cdss.evaluate([patient()], ruleset="plantar-cramps", as_of=AS_OF)
    assert assessment.engine == "rete"


def test_regression_a_patient_on_whom_no_rule_fires_does_not_crash_a_fresh_process() -> None:
    # Without a catch-all rule, a session in which no action ran made delete_state
    # crash the process (SIGSEGV); seen first in a screen worker's first patient.
    printed = _in_a_fresh_process(
        "import cdss; from tests.support.builders import lab, patient;"
        "record = [patient(), lab('k', '2823-3', 4.2, 'mmol/L', when='2026-02-20')];"
        "a = cdss.evaluate(record, ruleset='plantar-cramps@1.0.0', as_of='2026-03-01',"
        " engine='rete'); print(len(a.trace))")
    assert printed == "0"


def test_sessions_on_which_no_rule_fires_are_deleted_too() -> None:
    record = [patient(), lab("k", "2823-3", 4.2, "mmol/L", when="2026-02-20")]
    facts = cdss.extract_facts(record, ruleset="plantar-cramps@1.0.0", as_of=AS_OF)
    rs = cdss.load_ruleset("plantar-cramps@1.0.0")
    for _ in range(1100):  # more than the 1,024 live sessions durable-rules allows
        firings, _ = cdss_engine.run(rs, facts.items, engine="rete")
        assert firings == []
