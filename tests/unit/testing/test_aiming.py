"""How the strategies choose a field's value for the rule they aim at."""

from __future__ import annotations

from hypothesis import HealthCheck, find, settings

import cdss
from cdss.rulesets import Test as FieldTest
from cdss.testing import from_ruleset
from cdss.testing.strategies import DEFAULT_AS_OF, RecordList, _texts

SITES = ["calf", "thigh", None]


def test_a_field_that_must_be_absent_is_left_out_first() -> None:
    choices, passing = _texts([FieldTest("site", "exists", False)], "site", SITES)
    assert (choices[:passing], passing) == ([None], 1)


def test_a_field_that_must_be_present_is_written_first() -> None:
    choices, passing = _texts([FieldTest("site", "exists", True)], "site", SITES)
    assert (sorted(choices[:passing]), choices[passing:]) == (["calf", "thigh"], [None])


def test_a_value_test_never_passes_on_a_missing_field() -> None:
    choices, passing = _texts([FieldTest("site", "eq", "thigh")], "site", SITES)
    assert (choices[:passing], passing) == (["thigh"], 1)


RULESET = cdss.load_ruleset("plantar-cramps@1.2.0")


def test_records_aimed_at_cramps_without_a_site_can_fire_the_rule() -> None:
    # PC-GAIT-02 needs leg cramps with no recorded site; aiming must be able to write one
    def fires(record: RecordList) -> bool:
        assessment = cdss.evaluate(record, ruleset=RULESET, as_of=DEFAULT_AS_OF)
        return any(t.rule_id == "PC-GAIT-02" for t in assessment.trace)

    found = find(from_ruleset(RULESET, rules=["PC-GAIT-02"]), fires,
                 settings=settings(max_examples=300, database=None, deadline=None,
                                   suppress_health_check=list(HealthCheck)))
    assert fires(found)
