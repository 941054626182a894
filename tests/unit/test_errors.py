from __future__ import annotations

import pytest

from cdss.errors import (
    CDSSError,
    EngineError,
    InputError,
    InvalidArgument,
    RulesetError,
    RulesetNotFoundError,
)


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [(InputError, ValueError), (RulesetError, ValueError), (RulesetNotFoundError, LookupError),
     (InvalidArgument, TypeError), (EngineError, RuntimeError)],
)
def test_each_error_is_a_cdss_error_and_its_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, CDSSError)
    assert issubclass(cls, builtin)


def test_input_error_names_resource_and_field() -> None:
    err = InputError("not a number", resource_type="Observation", resource_id="o1",
                     field="valueQuantity.value")
    assert str(err) == "Observation/o1 field 'valueQuantity.value': not a number"
    assert (err.resource_type, err.resource_id, err.field) == ("Observation", "o1",
                                                               "valueQuantity.value")


def test_ruleset_error_names_file_rule_field_and_suggestion() -> None:
    err = RulesetError("unknown fact 'potasium'", path="r/1.0.0.yaml", rule_id="X-1",
                       field="when.all.0.fact", suggestion="potassium")
    assert str(err) == ("r/1.0.0.yaml: rule X-1: field 'when.all.0.fact': unknown fact "
                        "'potasium' (did you mean 'potassium'?)")
