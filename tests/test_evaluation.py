"""evaluate(): identity, determinism, as_of, explanation, what escapes."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from builders import bundle, condition, finding, lab, patient

import cdss
from cdss.errors import InputError, InvalidArgument

AS_OF = "2026-02-01"


def test_result_carries_ruleset_identity_and_as_of(mini: cdss.Ruleset) -> None:
    a = cdss.evaluate([patient()], ruleset=mini, as_of=AS_OF)
    assert (a.ruleset.id, a.ruleset.version, a.ruleset.sha256) == ("mini", "1.0.0", mini.sha256)
    assert a.as_of == datetime(2026, 2, 1, tzinfo=timezone.utc)
    assert a.patient == "Patient/p1"


def test_same_input_gives_byte_identical_json(mini: cdss.Ruleset) -> None:
    record = bundle(patient(), finding("c", "leg-cramps"), lab("k", "2823-3", 3.1, "mmol/L"))
    first = cdss.evaluate(record, ruleset=mini, as_of=AS_OF).to_json()
    for _ in range(3):
        assert cdss.evaluate(json.dumps(record), ruleset=mini, as_of=AS_OF).to_json() == first


def test_flags_carry_rationale_citation_and_evidence(mini: cdss.Ruleset) -> None:
    a = cdss.evaluate([patient(), lab("k", "2823-3", 3.1, "mmol/L")], ruleset=mini, as_of=AS_OF)
    flag = a.flag("low-k")
    assert flag is not None and flag.rule_id == "M-LOW-01" and flag.rationale == "K low."
    assert (flag.citation.source, flag.citation.title) == ("test", "Test source")
    assert flag.evidence[0].fact == "potassium"
    assert flag.evidence[0].sources == ["Observation/k"]
    assert flag.evidence[0].values["value"] == 3.1


def test_as_of_moves_the_windows(mini: cdss.Ruleset) -> None:
    record = [patient(), lab("k", "2823-3", 3.1, "mmol/L", when="2026-01-10")]
    assert cdss.evaluate(record, ruleset=mini, as_of="2026-02-01").flags
    assert not cdss.evaluate(record, ruleset=mini, as_of="2026-06-01").flags
    assert cdss.evaluate(record, ruleset=mini, as_of=date(2026, 2, 1)).flags
    assert cdss.evaluate(record, ruleset=mini,
                         as_of=datetime(2026, 2, 1, 12, 0)).as_of.tzinfo is not None


@pytest.mark.parametrize("as_of", ["yesterday", 20260201])
def test_bad_as_of(mini: cdss.Ruleset, as_of: object) -> None:
    with pytest.raises(InvalidArgument):
        cdss.evaluate([patient()], ruleset=mini, as_of=as_of)  # type: ignore[arg-type]


def test_bad_ruleset_argument() -> None:
    with pytest.raises(InvalidArgument):
        cdss.evaluate([patient()], ruleset=42)  # type: ignore[arg-type]


def test_pinned_and_default_versions_by_name() -> None:
    a = cdss.evaluate([patient()], ruleset="plantar-cramps@1.0.0", as_of=AS_OF)
    assert a.ruleset.version == "1.0.0"
    latest = cdss.load_ruleset("plantar-cramps")
    assert cdss.evaluate([patient()], as_of=AS_OF).ruleset.version == latest.version


def test_bad_input_is_an_input_error_naming_the_resource(mini: cdss.Ruleset) -> None:
    with pytest.raises(InputError) as info:
        cdss.evaluate([patient(), lab("k9", "2823-3", "x", "mmol/L")], ruleset=mini)
    assert (info.value.resource_type, info.value.resource_id) == ("Observation", "k9")


def test_unknown_code_changes_nothing(mini: cdss.Ruleset) -> None:
    base = cdss.evaluate([patient(), condition("d", "709044004")], ruleset=mini, as_of=AS_OF)
    more = cdss.evaluate([patient(), condition("d", "709044004"), condition("x", "999999")],
                         ruleset=mini, as_of=AS_OF)
    assert base.to_json() == more.to_json()
