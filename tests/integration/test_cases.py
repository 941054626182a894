"""Clinical cases of plantar-cramps, as data next to the ruleset.

Each file in ``rulesets/plantar-cramps/cases/`` holds a FHIR R4 record, the
evaluation time and, per ruleset version, the expected flags (code: severity),
plan (codes in order), suppressed plan items, data requests, referrals and
tailored plan items, or an expected error. Every case runs the code under
test on both engines, the error cases included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict

import cdss
from cdss import errors
from cdss.rulesets import builtin_folder

CASES = sorted((builtin_folder() / "plantar-cramps" / "cases").glob("*.yaml"))


class ExpectedError(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    resource_type: str | None = None
    resource_id: str | None = None
    field: str | None = None


class Expected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flags: dict[str, str] = {}
    plan: list[str] = []
    suppressed: list[str] = []
    data_requests: list[str] = []
    referrals: list[str] = []
    tailored: list[str] = []
    #: resources left out because they cannot be read (the Assessment is incomplete)
    left_out: list[str] = []
    error: ExpectedError | None = None


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str
    as_of: str
    record: Any
    expected: dict[str, Expected]
    note: str | None = None
    #: ``refuse`` runs the case as a caller that refuses a record with an
    #: unreadable resource; by default such a resource is left out.
    on_invalid: str = "leave-out"
    #: Orders being written (CDS Hooks ``draftOrders``: resources with status
    #: draft) and the references of those selected (order-select; none given:
    #: every order is being signed).
    draft_orders: list[Any] = []
    selections: list[str] | None = None


def _params() -> list[Any]:
    params = []
    for path in CASES:
        case = Case.model_validate(yaml.safe_load(path.read_text()))
        for version in case.expected:
            for engine in ("rete", "reference"):
                params.append(pytest.param(path, case, version, engine,
                                           id=f"{path.stem}@{version}-{engine}"))
    return params


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize(("path", "case", "version", "engine"), _params())
def test_case(path: Path, case: Case, version: str, engine: str) -> None:
    expected = case.expected[version]
    ruleset = f"plantar-cramps@{version}"
    if expected.error is not None:
        error_type = getattr(errors, expected.error.type)
        with pytest.raises(error_type) as info:
            cdss.evaluate(case.record, ruleset=ruleset, as_of=case.as_of, engine=engine,
                          on_invalid=case.on_invalid, draft_orders=case.draft_orders,
                          selections=case.selections)
        for name in ("resource_type", "resource_id", "field"):
            if getattr(expected.error, name) is not None:
                assert getattr(info.value, name) == getattr(expected.error, name), name
        return
    a = cdss.evaluate(case.record, ruleset=ruleset, as_of=case.as_of, engine=engine,
                      on_invalid=case.on_invalid, draft_orders=case.draft_orders,
                      selections=case.selections)
    assert [lo.resource for lo in a.left_out] == expected.left_out
    assert a.incomplete == bool(expected.left_out)
    assert {f.code: f.severity for f in a.flags} == expected.flags
    assert [p.code for p in a.plan] == expected.plan
    assert [s.code for s in a.suppressed] == expected.suppressed
    assert sorted(d.analyte for d in a.data_requests) == sorted(expected.data_requests)
    assert [r.code for r in a.referrals] == expected.referrals
    assert [p.code for p in a.plan if p.tailoring] == expected.tailored
    # Red flags win: a critical flag leaves no exercise advice.
    if any(f.severity == "critical" for f in a.flags):
        assert not [p for p in a.plan if p.category == "exercise"]
