"""Version diff, rule by rule: each changed patient is tied to the rules whose
items changed, and the per-rule counts survive the trip across worker
processes and through the partitions' done markers.

plantar-cramps 1.1.0 -> 1.2.0 over a generated cohort (made with 1.2.0's
codes): 1.2.0 adds PC-GAIT-02 (cramps with no recorded site beside plantar
fasciitis) among others. The expected attribution is computed by evaluating
every patient directly under both versions.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import cdss
from cdss.cohort import DiffReport, GeneratedCohort, diff, generate_cohort
from cdss.cohort._worker import DIFF_TALLIES, PartitionCounts
from tests.support.cohort import AS_OF, group_by_patient

BEFORE, AFTER = "plantar-cramps@1.1.0", "plantar-cramps@1.2.0"
_CACHE: dict[str, Any] = {}


def diff_cohort(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCohort:
    """120 patients with the codes plantar-cramps 1.2.0 reads (made once)."""
    if "cohort" not in _CACHE:
        _CACHE["cohort"] = generate_cohort(120, seed=5, out=tmp_path_factory.mktemp("gate"),
                                           ruleset=cdss.load_ruleset(AFTER))
    return _CACHE["cohort"]


def diff_report(tmp_path_factory: pytest.TempPathFactory, workers: int = 2) -> DiffReport:
    """The diff of the cohort, made once per number of workers."""
    key = f"report-{workers}"
    if key not in _CACHE:
        _CACHE[key] = diff(diff_cohort(tmp_path_factory).out, from_ruleset=BEFORE,
                           to_ruleset=AFTER, as_of=AS_OF, workers=workers)
    return _CACHE[key]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> DiffReport:
    return diff_report(tmp_path_factory)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """Every patient's two Assessments, evaluated without the screen."""
    cohort = diff_cohort(tmp_path_factory)
    groups = group_by_patient(sorted(cohort.out.glob("*.ndjson")))
    before, after = cdss.load_ruleset(BEFORE), cdss.load_ruleset(AFTER)
    return {ref: (cdss.evaluate(res, ruleset=before, as_of=AS_OF),
                  cdss.evaluate(res, ruleset=after, as_of=AS_OF))
            for ref, res in groups.items()}


def _rules_of(item: Any) -> set[str]:
    ids = getattr(item, "rule_ids", None)
    return set(ids) if ids is not None else {item.rule_id}


def test_pc_gait_02_patients_are_those_gaining_its_flag(report: DiffReport,
                                                        direct: dict[str, tuple[Any, Any]]
                                                        ) -> None:
    """Independently of the diff's own attribution: a patient gains from
    PC-GAIT-02 when 1.2.0 raises a flag of that rule the patient did not
    have under 1.1.0."""
    expected = set()
    for ref, (old, new) in direct.items():
        had = {f.code for f in old.flags}
        if any("PC-GAIT-02" in _rules_of(f) and f.code not in had for f in new.flags):
            expected.add(ref)
    assert expected, "the cohort should hold a patient PC-GAIT-02 reaches"
    attributed = {c["patient"] for c in report.changes
                  if any(r["rule"] == "PC-GAIT-02" and r["change"] == "gained"
                         and r["item"] == "flag" for r in c.get("rules", ()))}
    assert attributed == expected
    assert report.tallies["rules_gained"]["PC-GAIT-02"] == len(expected)
    assert report.tallies["rule_items"][
        "PC-GAIT-02 gained flag calf-overload-from-gait"] == len(expected)


def test_every_rule_count_matches_direct_evaluation(report: DiffReport,
                                                   direct: dict[str, tuple[Any, Any]]) -> None:
    """Per rule and kind of change, the patients the diff counts are those
    whose two Assessments differ in an item of that rule."""
    expected: dict[str, dict[str, set[str]]] = {h: defaultdict(set)
                                                for h in ("gained", "lost", "changed")}
    for ref, (old, new) in direct.items():
        for attr, key, fields in (("flags", "code", ("severity",)),
                                  ("referrals", "code", ("urgency",)),
                                  ("plan", "code", ("text", "emphasis", "tailoring")),
                                  ("suppressed", "code", ()),
                                  ("data_requests", "analyte", ())):
            a = {getattr(x, key): x for x in getattr(old, attr)}
            b = {getattr(x, key): x for x in getattr(new, attr)}
            for code in b.keys() - a.keys():
                for rule in _rules_of(b[code]):
                    expected["gained"][rule].add(ref)
            for code in a.keys() - b.keys():
                for rule in _rules_of(a[code]):
                    expected["lost"][rule].add(ref)
            for code in a.keys() & b.keys():
                if any(getattr(a[code], f) != getattr(b[code], f) for f in fields):
                    for rule in _rules_of(a[code]) | _rules_of(b[code]):
                        expected["changed"][rule].add(ref)
    for how, per_rule in expected.items():
        assert report.tallies[f"rules_{how}"] == {r: len(p) for r, p in sorted(per_rule.items())}
    assert report.errors == 0
    assert report.changed == sum(1 for old, new in direct.values()
                                 if cdss.cohort._worker.compare(old, new))


def test_rule_tallies_do_not_depend_on_the_worker_processes(
        report: DiffReport, tmp_path_factory: pytest.TempPathFactory) -> None:
    in_process = diff_report(tmp_path_factory, workers=0)
    assert in_process.tallies == report.tallies
    assert in_process.changes == report.changes


def test_the_report_lists_rules_with_their_titles(report: DiffReport) -> None:
    rules = report.rules()
    titles = {r.id: r.title for r in cdss.load_ruleset(AFTER).file.rules}
    assert rules["PC-GAIT-02"]["title"] == titles["PC-GAIT-02"]
    assert {"change": "gained", "item": "flag", "code": "calf-overload-from-gait",
            "patients": rules["PC-GAIT-02"]["gained"]} in rules["PC-GAIT-02"]["items"]
    assert set(rules) == {rule for how in ("gained", "lost", "changed")
                          for rule in report.tallies[f"rules_{how}"]}
    assert report.to_dict()["rules"] == rules


def test_done_markers_keep_rule_tallies_and_older_ones_still_read() -> None:
    counts = PartitionCounts(kind="diff", patients=3, errors=0, changed=2, unchanged=1,
                             tallies={"rules_gained": {"PC-GAIT-02": 2},
                                      "rule_items": {"PC-GAIT-02 gained flag x": 2}})
    assert PartitionCounts.from_json(counts.to_json()).tallies == counts.tallies
    older = PartitionCounts(kind="diff", patients=1, errors=0, unchanged=1,
                            tallies={"flags_added": {"a": 1}})
    assert PartitionCounts.from_json(older.to_json()).tally("rules_gained") == {}
    assert {"rules_gained", "rules_lost", "rules_changed", "rule_items"} <= set(DIFF_TALLIES)
    unknown = PartitionCounts(kind="diff", patients=1, errors=0, tallies={"nope": {"a": 1}})
    with pytest.raises(ValueError, match="not a partition's counts"):
        PartitionCounts.from_json(unknown.to_json())


def test_the_json_report_carries_rules(report: DiffReport, tmp_path: Path) -> None:
    import orjson

    data = orjson.loads(report.to_json())
    assert data["rules"]["PC-GAIT-02"]["gained"] >= 1
    assert all("rules" in c for c in data["changes"])
