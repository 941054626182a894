"""evaluate(): identity, determinism, as_of, explanation, what escapes."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

import pytest

import cdss
from cdss.errors import InputError, InvalidArgument
from tests.support.builders import bundle, condition, finding, lab, patient

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
        cdss.evaluate([patient(), lab("k9", "2823-3", "x", "mmol/L")], ruleset=mini,
                      on_invalid="refuse")
    assert (info.value.resource_type, info.value.resource_id) == ("Observation", "k9")


@pytest.mark.parametrize("mode", ["strict", "lean"])
@pytest.mark.parametrize("bad", [
    {"valueQuantity": {"value": "x", "unit": "mmol/L"}},     # not a number
    {"effectiveDateTime": "yesterday"},                      # not a date
    {"valueQuantity": {"value": 4500, "unit": "mmol/L"}},    # impossible
    {"status": 7},                                           # schema
])
def test_an_unreadable_resource_is_left_out_and_the_patient_still_assessed(
        mini: cdss.Ruleset, mode: str, bad: dict[str, Any]) -> None:
    good = condition("d", "709044004")
    a = cdss.evaluate([patient(), good, {**lab("k9", "2823-3", 3.2, "mmol/L"), **bad}],
                      ruleset=mini, as_of=AS_OF, mode=mode)
    assert a.incomplete
    assert [lo.resource for lo in a.left_out] == ["Observation/k9"]
    assert a.left_out[0].reason
    assert any(n.code == "left-out" and n.resource == "Observation/k9" for n in a.data_quality)
    alone = cdss.evaluate([patient(), good], ruleset=mini, as_of=AS_OF, mode=mode)
    assert [f.code for f in a.flags] == [f.code for f in alone.flags]


@pytest.mark.parametrize("mode", ["strict", "lean"])
def test_an_unreadable_patient_still_refuses_the_record(mini: cdss.Ruleset, mode: str) -> None:
    with pytest.raises(InputError) as info:
        cdss.evaluate([{**patient(), "birthDate": "soon"}, condition("d", "709044004")],
                      ruleset=mini, as_of=AS_OF, mode=mode)
    assert info.value.resource_type == "Patient"
    with pytest.raises(InputError):
        cdss.evaluate([patient(), patient("p2")], ruleset=mini, as_of=AS_OF, mode=mode)


@pytest.mark.parametrize("mode", ["strict", "lean"])
@pytest.mark.parametrize(("zone", "instant"), [
    ("UTC", "2026-02-27T23:30:00+00:00"), ("Europe/Berlin", "2026-02-27T23:30:00+01:00")])
def test_a_time_without_a_zone_is_read_in_the_configured_zone(
        mini: cdss.Ruleset, mode: str, zone: str, instant: str) -> None:
    obs = lab("k9", "2823-3", 3.2, "mmol/L", when="2026-02-27T23:30:00")
    facts = cdss.extract_facts([patient(), obs], ruleset=mini, as_of=AS_OF, mode=mode,
                               timezone=zone)
    assert not facts.left_out
    notes = [n for n in facts.data_quality if n.code == "no-time-zone"]
    assert len(notes) == 1 and notes[0].resource == "Observation/k9"
    assert instant in notes[0].message and zone in notes[0].message


def test_unknown_code_changes_nothing(mini: cdss.Ruleset) -> None:
    base = cdss.evaluate([patient(), condition("d", "709044004")], ruleset=mini, as_of=AS_OF)
    more = cdss.evaluate([patient(), condition("d", "709044004"), condition("x", "999999")],
                         ruleset=mini, as_of=AS_OF)
    unmapped = [n for n in more.data_quality if n.code == "unmapped-code"]
    assert [n.resource for n in unmapped] == ["Condition/x"]  # said, not dropped in silence
    assert "http://snomed.info/sct|999999" in unmapped[0].message
    assert unmapped[0].display is None  # the record gives the code no display
    strip = {"data_quality"}
    assert base.model_dump(exclude=strip) == more.model_dump(exclude=strip)


def test_an_unmapped_codes_note_carries_the_display_the_records_give_it() -> None:
    def charted(cid: str, display: str) -> dict[str, Any]:
        res = lab(cid, "8867-4", 70, "/min", when="2026-02-20")
        res["code"]["coding"][0]["display"] = display
        return res

    a = cdss.evaluate([patient(), charted("hr1", "Pulse rate"), charted("hr2", " Heart rate "),
                       charted("hr3", "  ")], ruleset="plantar-cramps", as_of=AS_OF)
    [note] = [n for n in a.data_quality if n.code == "unmapped-code"]
    assert (note.coding, note.display) == ("http://loinc.org|8867-4", "Heart rate")


@pytest.mark.parametrize("mode", ["strict", "lean"])
def test_only_resources_that_can_become_facts_are_validated(mode: str) -> None:
    # A vital sign no value set maps is noted by its code, not validated: a flaw in
    # it costs nothing; the same flaw in a potassium leaves that potassium out.
    flaw = {"issued": "soon"}
    vital = {**lab("hr", "8867-4", 70, "/min", when="2026-02-20"), **flaw}
    potassium = {**lab("k", "2823-3", 3.1, "mmol/L", when="2026-02-20"), **flaw}
    a = cdss.evaluate([patient(), vital], ruleset="plantar-cramps", as_of=AS_OF, mode=mode)
    assert not a.incomplete
    assert [n.coding for n in a.data_quality if n.code == "unmapped-code"] == [
        "http://loinc.org|8867-4"]
    b = cdss.evaluate([patient(), potassium], ruleset="plantar-cramps", as_of=AS_OF, mode=mode)
    assert [lo.resource for lo in b.left_out] == ["Observation/k"]
