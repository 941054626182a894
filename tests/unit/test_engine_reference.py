"""The reference evaluator compiles each test once; the compiled form must mean
exactly what ``Test.holds`` says (the specification both engines follow)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cdss.engine import _compile_test
from cdss.rulesets import Test as RuleTest

VALUES = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
          | st.text(max_size=3))


@settings(max_examples=500, deadline=None)
@given(op=st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge", "in", "exists"]),
       operand=VALUES, actual=VALUES, present=st.booleans())
def test_a_compiled_test_holds_exactly_when_the_test_does(op: str, operand: object,
                                                          actual: object, present: bool) -> None:
    value: object = (operand,) if op == "in" else (bool(operand) if op == "exists" else operand)
    test = RuleTest("value", op, value)
    values = {"value": actual} if present else {}
    assert _compile_test(test)(values) is test.holds(values)
