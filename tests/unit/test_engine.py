"""The engines: strata, negation of derived facts, rete == reference, sessions, errors."""

from __future__ import annotations

import itertools

import pytest

import cdss
from cdss import engine as engine_module
from cdss.errors import EngineError, InvalidArgument
from tests.support.builders import condition, finding, lab, patient

AS_OF = "2026-02-01"


def run(rs: cdss.Ruleset, *resources: dict, engine: str = "rete") -> cdss.Assessment:
    return cdss.evaluate(list(resources), ruleset=rs, as_of=AS_OF, engine=engine)


@pytest.mark.parametrize("engine", ["rete", "reference"])
def test_chaining_through_a_derived_fact(mini: cdss.Ruleset, engine: str) -> None:
    a = run(mini, patient(), finding("c", "leg-cramps"), lab("k", "2823-3", 3.1, "mmol/L"),
            engine=engine)
    assert [f.code for f in a.flags] == ["low-k"]
    assert [p.code for p in a.plan] == ["eat-bananas"]
    assert [(t.stratum, t.rule_id) for t in a.trace] == [(0, "M-LOW-01"), (1, "M-ADV-01")]


@pytest.mark.parametrize("engine", ["rete", "reference"])
def test_negation_of_a_derived_fact(mini: cdss.Ruleset, engine: str) -> None:
    a = run(mini, patient(), finding("c", "leg-cramps"), lab("k", "2823-3", 4.0, "mmol/L"),
            engine=engine)
    assert [p.code for p in a.plan] == ["stretch"]
    assert a.flags == [] and a.data_requests == []


@pytest.mark.parametrize("engine", ["rete", "reference"])
def test_data_request_and_suppression(mini: cdss.Ruleset, engine: str) -> None:
    a = run(mini, patient(), finding("c", "leg-cramps"), condition("d", "709044004"),
            lab("k", "2823-3", 3.0, "furlong"), engine=engine)
    assert [d.analyte for d in a.data_requests] == ["potassium"]
    b = run(mini, patient(), finding("c", "leg-cramps"), condition("d", "709044004"),
            lab("k", "2823-3", 3.0, "mmol/L"), engine=engine)
    assert b.plan == []
    assert [(s.code, s.reason, s.rule_id) for s in b.suppressed] == [
        ("eat-bananas", "CKD.", "M-SUP-01")]


def test_every_order_of_the_facts_gives_the_same_result(mini: cdss.Ruleset) -> None:
    resources = [patient(), finding("c", "leg-cramps"), lab("k", "2823-3", 3.1, "mmol/L"),
                 condition("d", "709044004"), lab("m", "2601-3", 0.5, "mmol/L")]
    results = {run(mini, *perm).to_json() for perm in itertools.permutations(resources)}
    assert len(results) == 1


def test_a_rule_with_only_negations_fires_on_an_empty_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import copy

    from tests.support.rulesets import MINI_RULESET, write_ruleset

    data = copy.deepcopy(MINI_RULESET)
    data["rules"].append({
        "id": "M-NONE-01", "title": "no cramps", "rationale": "r",
        "citation": {"source": "test", "section": "x"},
        "when": {"none": [{"fact": "cramps"}]}, "then": [{"plan": "stretch"}]})
    rs = cdss.rulesets.load_ruleset_file(write_ruleset(tmp_path, data))
    for engine in ("rete", "reference"):
        assert [p.code for p in run(rs, patient(), engine=engine).plan] == ["stretch"]
        assert run(rs, patient(), finding("c", "leg-cramps"), engine=engine).plan[0].code \
            == "stretch"  # M-ADV-02 still adds it (no low K)


def test_sessions_are_deleted(mini: cdss.Ruleset) -> None:
    for _ in range(1100):  # more than the 1,024 live sessions durable-rules allows
        run(mini, patient(), finding("c", "leg-cramps"))
    host = engine_module._host
    assert host is not None
    sid = f"{__import__('os').getpid()}-{next(engine_module._counter) - 1}"
    with pytest.raises(Exception, match="309"):  # durable-rules: no such state
        host.get_state(mini.key, sid)


def test_an_error_inside_an_action_becomes_engine_error(mini: cdss.Ruleset,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(rule_id: str):  # type: ignore[no-untyped-def]
        def action(c):  # type: ignore[no-untyped-def]
            engine_module._errors.append((rule_id, ValueError("boom")))
        return action

    import copy

    clone = copy.copy(mini)
    object.__setattr__(clone, "sha256", "0" * 64)  # registers under a new key
    monkeypatch.setattr(engine_module, "_action", broken)
    with pytest.raises(EngineError) as info:
        run(clone, patient(), finding("c", "leg-cramps"))
    assert info.value.rule_id is not None and "boom" in str(info.value)


def test_unknown_engine(mini: cdss.Ruleset) -> None:
    with pytest.raises(InvalidArgument):
        run(mini, patient(), engine="drools")


def test_regression_any_alternative_after_the_first_with_a_threshold_fires_on_rete() -> None:
    # durable-rules mis-evaluated comparisons inside the second and later
    # alternatives of a nested $any; the rete engine dropped dehydration from
    # osmolality (the second marker of PC-DEHY-01) while the reference fired it.
    record = [patient(), lab("k", "2823-3", 2.0, "mmol/L", when="2026-01-30"),
              lab("o", "2692-2", 296.0, "mosm/kg", when="2026-01-30")]
    rete = cdss.evaluate(record, ruleset="plantar-cramps@1.0.0", as_of=AS_OF, engine="rete")
    assert rete.flag("dehydration-suspected") is not None
    reference = cdss.evaluate(record, ruleset="plantar-cramps@1.0.0", as_of=AS_OF,
                              engine="reference")
    assert rete.to_json(engine=False) == reference.to_json(engine=False)

