"""cdss.testing: the strategies generate valid, dated, convertible FHIR
records aimed at a ruleset's thresholds; check_ruleset and `cdss test-ruleset`
catch a broken ruleset and print the shrunk record that shows it.

Invariants of the kit itself, in words:

1. Every generated resource is valid FHIR R4 and the record holds one Patient
   that every resource refers to.
2. Dates are relative to the caller's as_of; a clean record holds only data
   cdss uses (final, in its lookback, convertible).
3. A value asked for between min_value and max_value is read back there, in
   whatever unit it was written.
4. Aiming at a rule reaches its threshold, just below and just above it.
5. A deliberately broken copy of a project ruleset is caught, and the
   printed record reproduces the failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from random import Random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cdss
from cdss.cli import app
from cdss.errors import InvalidArgument
from cdss.rulesets import available_rulesets, load_ruleset, load_ruleset_file
from cdss.rulesets._content import SPELLINGS
from cdss.testing import (
    DEFAULT_AS_OF,
    PROPERTIES,
    allergies,
    check_ruleset,
    clinical_summary,
    conditions,
    findings,
    from_ruleset,
    medications,
    observations,
    patients,
    records,
    unit_factors,
)
from cdss.units import convert
from tests.support.rulesets import MINI_RULESET, write_ruleset

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

RUNNER = CliRunner()
VERSIONS = sorted(spec for spec in available_rulesets() if spec.startswith("plantar-cramps@"))
LATEST = load_ruleset("plantar-cramps")
FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEARCH = settings(max_examples=300, deadline=None, database=None)


def _first(strategy: Any, condition: Callable[[Any], bool] = lambda _: True) -> Any:
    """The minimal example of ``strategy`` meeting ``condition`` (deterministic)."""
    return find(strategy, condition, settings=SEARCH, random=Random(0))


def _some(strategy: Any, condition: Callable[[Any], bool]) -> Any:
    """An example of ``strategy`` meeting ``condition``, not shrunk. The budget is wide
    because what hypothesis generates depends on where cdss is: it also draws the
    constants of modules outside site-packages, so a checkout and the installed wheel
    see different examples (with 300, one threshold was missed from the wheel)."""
    return find(strategy, condition,
                settings=settings(SEARCH, max_examples=2000, phases=[Phase.generate]),
                random=Random(0))


def _validate_fhir(resource: dict[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _facts(record: list[dict[str, Any]], as_of: Any = DEFAULT_AS_OF) -> cdss.Facts:
    return cdss.extract_facts(record, ruleset=LATEST, as_of=as_of)


# --------------------------------------------------------------------------- #
# Optional dependency
# --------------------------------------------------------------------------- #
def test_import_cdss_and_its_command_do_not_import_hypothesis() -> None:
    code = ("import sys, cdss, cdss.cli\n"
            "print('hypothesis' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- #
# Units
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec", VERSIONS)
def test_every_generated_unit_converts_as_cdss_reads_it(spec: str) -> None:
    ruleset = load_ruleset(spec)
    for name, analyte in ruleset.valuesets.analytes.items():
        factors = unit_factors(analyte)
        assert next(iter(factors)) == analyte.canonical_unit
        for unit, factor in factors.items():
            read = convert(1.0, unit, analyte).value
            assert read is not None and read == pytest.approx(factor, rel=1e-9), (name, unit)


def test_potassium_and_magnesium_are_generated_in_the_usual_units() -> None:
    analytes = LATEST.valuesets.analytes
    assert set(unit_factors(analytes["potassium"])) == {"mmol/L", "umol/L", "meq/L", "mg/dL"}
    assert unit_factors(analytes["magnesium"])["meq/L"] == 0.5
    assert unit_factors(analytes["magnesium"])["mg/dL"] == pytest.approx(10 / 24.305)
    assert list(unit_factors(analytes["egfr"])) == ["mL/min/{1.73_m2}"]


def test_every_unit_spelling_generated_is_one_cdss_reads() -> None:
    magnesium = LATEST.valuesets.analytes["magnesium"]
    for unit, spellings in SPELLINGS.items():
        for spelled in spellings:
            if unit in unit_factors(magnesium):
                assert convert(1.0, spelled, magnesium).value == pytest.approx(
                    convert(1.0, unit, magnesium).value), spelled


# --------------------------------------------------------------------------- #
# records()
# --------------------------------------------------------------------------- #
@FAST
@given(record=st.one_of(records(ruleset=LATEST), from_ruleset(LATEST)))
def test_records_are_valid_fhir_with_one_patient(record: list[dict[str, Any]]) -> None:
    patients_found = {r["id"] for r in record if r["resourceType"] == "Patient"}
    assert patients_found == {"p1"}
    for resource in record:
        _validate_fhir(resource)
        subject = resource.get("subject") or resource.get("patient")
        if subject is not None and "reference" in subject:
            assert subject["reference"] == "Patient/p1"
    assessment = cdss.evaluate(record, ruleset=LATEST, as_of=DEFAULT_AS_OF)
    assert assessment.patient == "Patient/p1"


AS_OF = datetime(2031, 7, 15, 9, 30, tzinfo=timezone.utc)


@FAST
@given(record=records(ruleset=LATEST, as_of=AS_OF, mess=False))
def test_clean_records_hold_only_usable_data_dated_before_as_of(
        record: list[dict[str, Any]]) -> None:
    facts = _facts(record, AS_OF)
    allowed = {"no-clinical-status", "medication-by-name", "unit-annotation"}
    assert {note.code for note in facts.data_quality} <= allowed
    for resource in record:
        when = resource.get("effectiveDateTime") or resource.get("onsetDateTime")
        if when:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
            assert AS_OF - timedelta(days=3651) <= moment <= AS_OF
    for fact in facts.items:
        if fact.kind == "lab":
            assert fact.values["status"] == "determinate"


def test_messy_records_hold_the_mess_cdss_must_ignore() -> None:
    def noted(code: str) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda record: any(n.code == code for n in _facts(record).data_quality)

    strategy = records(ruleset=LATEST)
    wide = settings(SEARCH, max_examples=1000, phases=[Phase.generate])
    for code in ("entered-in-error", "not-final", "outside-lookback", "future-dated",
                 "indeterminate"):
        # a future-dated resource comes in about one record of 150
        assert find(strategy, noted(code), settings=wide, random=Random(0)), code
    assert _some(strategy, lambda r: len({x["id"] for x in r}) < len(r))
    assert _some(strategy, lambda r: any(x["resourceType"] in ("Encounter", "Claim")
                                         for x in r))


def test_records_shrink_towards_the_patient_alone() -> None:
    assert _first(records(ruleset=LATEST)) == [
        {"resourceType": "Patient", "id": "p1", "birthDate": "2008-01-01", "gender": "female"}]


# --------------------------------------------------------------------------- #
# One resource at a time
# --------------------------------------------------------------------------- #
@FAST
@given(obs=observations(analyte="magnesium", ruleset=LATEST, min_value=0.4, max_value=0.9))
def test_observations_read_back_within_their_bounds_in_any_unit(obs: dict[str, Any]) -> None:
    _validate_fhir(obs)
    fact = _facts([{"resourceType": "Patient", "id": "p1"}, obs]).get("magnesium")
    assert fact is not None and fact.values["status"] == "determinate"
    assert 0.4 <= fact.values["value"] <= 0.9  # type: ignore[operator]


def test_observations_shrink_towards_min_value_in_the_canonical_unit() -> None:
    obs = _first(observations(analyte="potassium", ruleset=LATEST, min_value=3.0,
                              max_value=4.0))
    assert obs["valueQuantity"] == {"value": 3.0, "unit": "mmol/L",
                                    "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert obs["code"]["coding"][0]["code"] == "2823-3"
    assert obs["status"] == "final"
    assert obs["effectiveDateTime"] == "2026-01-01T00:00:00Z"


def test_observations_honour_the_unit_asked_for() -> None:
    obs = _first(observations(analyte="magnesium", ruleset=LATEST, unit="mg/dL"))
    assert obs["valueQuantity"]["unit"] in ("mg/dL", "mg/dl")
    assert "Mass/volume" in obs["code"]["coding"][0]["display"]


@FAST
@given(cond=conditions(concept="ckd_dx", ruleset=LATEST),
       gone=conditions(concept="dehydration_dx", ruleset=LATEST, active=False),
       med=medications(concept="loop_diuretic", ruleset=LATEST),
       allergy=allergies(concept="nut_allergy", ruleset=LATEST),
       cramps=findings(concept="leg_cramps", ruleset=LATEST, site="calf", nocturnal=True),
       patient=patients(min_age=40, max_age=41))
def test_each_strategy_gives_the_fact_it_names(
        cond: dict[str, Any], gone: dict[str, Any], med: dict[str, Any],
        allergy: dict[str, Any], cramps: dict[str, Any], patient: dict[str, Any]) -> None:
    record = [patient, cond, gone, med, allergy, cramps]
    for resource in record:
        _validate_fhir(resource)
    facts = _facts(record)
    assert facts.get("ckd_dx") is not None
    assert facts.get("dehydration_dx") is None
    assert facts.get("loop_diuretic") is not None
    assert facts.get("nut_allergy") is not None
    leg = facts.get("leg_cramps")
    assert leg is not None
    assert leg.values["status"] == "present" and leg.values["site"] == "calf"
    assert leg.values["nocturnal"] is True
    assert facts.get("patient").values["age"] in (40, 41)  # type: ignore[union-attr,operator]


# --------------------------------------------------------------------------- #
# from_ruleset(): aiming at thresholds
# --------------------------------------------------------------------------- #
def _latest(record: list[dict[str, Any]], analyte: str) -> float | None:
    fact = _facts(record).get(analyte)
    return fact.values.get("value") if fact is not None else None  # type: ignore[return-value]


@pytest.mark.parametrize(("rule_id", "analyte", "threshold"), [
    ("PC-K-01", "potassium", 3.5), ("PC-MG-01", "magnesium", 0.7)])
def test_from_ruleset_aims_at_and_around_each_threshold(rule_id: str, analyte: str,
                                                        threshold: float) -> None:
    strategy = from_ruleset(LATEST, rules=[rule_id])
    near = threshold * 0.999, threshold * 1.001
    at = _some(strategy, lambda r: _latest(r, analyte) == threshold)
    below = _some(strategy, lambda r: near[0] <= (_latest(r, analyte) or 0) < threshold)
    above = _some(strategy, lambda r: threshold < (_latest(r, analyte) or 99) <= near[1])
    assert _latest(at, analyte) == threshold
    assert near[0] <= _latest(below, analyte) < threshold  # type: ignore[operator]
    assert threshold < _latest(above, analyte) <= near[1]  # type: ignore[operator]


@pytest.mark.parametrize("rule_id", [r.id for r in LATEST.rules])
def test_from_ruleset_fires_every_rule_it_aims_at(rule_id: str) -> None:
    def fires(record: list[dict[str, Any]]) -> bool:
        result = cdss.evaluate(record, ruleset=LATEST, as_of=DEFAULT_AS_OF)
        return any(t.rule_id == rule_id for t in result.trace)

    assert fires(_some(from_ruleset(LATEST, rules=[rule_id]), fires))


# --------------------------------------------------------------------------- #
# Bad arguments
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("make", "match"), [
    (lambda: observations(analyte="potasium", ruleset=LATEST), "did you mean 'potassium'"),
    (lambda: observations(analyte="potassium", ruleset=LATEST, min_value=5, max_value=4),
     "min_value <= max_value"),
    (lambda: observations(analyte="potassium", ruleset=LATEST, max_value=99), "plausible"),
    (lambda: observations(analyte="potassium", ruleset=LATEST, min_value="3"),  # type: ignore[arg-type]
     "finite number"),
    (lambda: observations(analyte="egfr", ruleset=LATEST, unit="mmol/L"), "choices"),
    (lambda: observations(analyte="potassium", ruleset=LATEST, max_days_ago=400),
     "max_days_ago"),
    (lambda: conditions(concept="potassium", ruleset=LATEST), "is a lab concept"),
    (lambda: findings(concept="leg_cramps", ruleset=LATEST, site="calff"), "did you mean"),
    (lambda: medications(concept="nut_allergy", ruleset=LATEST), "not a medication"),
    (lambda: records(ruleset=LATEST, as_of=None),  # type: ignore[arg-type]
     "as_of must be given"),
    (lambda: records(ruleset=LATEST, as_of="yesterday"), "ISO"),
    (lambda: records(ruleset=LATEST, mess="yes"), "True or False"),  # type: ignore[arg-type]
    (lambda: records(ruleset=LATEST, max_resources=-1), "max_resources"),
    (lambda: records(ruleset=42), "ruleset must be"),  # type: ignore[arg-type]
    (lambda: patients(min_age=50, max_age=20), "max_age"),
    (lambda: patients(patient_id="no spaces"), "FHIR id"),
    (lambda: from_ruleset(LATEST, rules=["PC-K-1"]), "did you mean 'PC-K-01'"),
    (lambda: from_ruleset(LATEST, rules="PC-K-01"), "list of rule ids"),
    (lambda: check_ruleset(LATEST, max_examples=0), "max_examples"),
    (lambda: check_ruleset(LATEST, seed="0"), "seed"),  # type: ignore[arg-type]
    (lambda: check_ruleset(LATEST, properties=["determinsm"]), "did you mean 'determinism'"),
])
def test_bad_arguments_are_clear_errors_at_the_call(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        make()


# --------------------------------------------------------------------------- #
# check_ruleset() on a small ruleset, and its report
# --------------------------------------------------------------------------- #
def test_check_ruleset_on_a_small_site_ruleset(mini: cdss.Ruleset) -> None:
    report = check_ruleset(mini, max_examples=24)
    assert report.ok, report.failures
    assert report.examples == 24
    assert list(report.coverage) == [r.id for r in mini.rules]
    assert all(report.coverage.values())
    data = json.loads(report.to_json())
    assert data["ok"] is True and data["ruleset"] == "mini@1.0.0"
    assert [p["name"] for p in data["properties"]] == [
        n for n in PROPERTIES if n != "monotonicity"]


def test_without_a_declared_policy_red_flag_dominance_says_so_and_checks_nothing(
        mini: cdss.Ruleset) -> None:
    assert mini.file.policies == []
    report = check_ruleset(mini, max_examples=12, properties=["red-flag-dominance"])
    row = next(p for p in report.properties if p.name == "red-flag-dominance")
    assert row.checked == 0 and row.description.startswith("No policy declared")


def test_a_declared_policy_is_checked_and_its_violation_shrunk(tmp_path: Path) -> None:
    # the mini ruleset plans stretching (category exercise) beside a moderate
    # low-magnesium flag: a policy excluding exercise beside moderate flags fails
    data = {**MINI_RULESET, "policies": [
        {"flag_severity": "moderate", "no_plan_category": "exercise"}]}
    ruleset = load_ruleset_file(write_ruleset(tmp_path, data))
    report = check_ruleset(ruleset, max_examples=40, properties=["red-flag-dominance"])
    assert not report.ok
    row = next(p for p in report.properties if p.name == "red-flag-dominance")
    assert row.checked > 0 and "category 'exercise'" in row.description
    failure = next(f for f in report.failures if f.property == "red-flag-dominance")
    assessment = cdss.evaluate(failure.record, ruleset=ruleset, as_of=failure.as_of)
    assert any(f.severity == "moderate" for f in assessment.flags)
    assert any(p.category == "exercise" for p in assessment.plan)


def test_check_ruleset_is_reproducible_and_can_check_some_invariants(mini: cdss.Ruleset) -> None:
    first = check_ruleset(mini, max_examples=12, seed=7, properties=["engines-agree"])
    again = check_ruleset(mini, max_examples=12, seed=7, properties=["engines-agree"])
    assert [p.name for p in first.properties] == ["engines-agree"]
    assert first.coverage == again.coverage and first.properties == again.properties


def test_clinical_summary_leaves_out_evidence_and_notes() -> None:
    record = [{"resourceType": "Patient", "id": "p1"},
              {"resourceType": "Observation", "id": "k", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
               "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": "2025-12-30", "valueQuantity": {
                   "value": 3.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                   "code": "mmol/L"}}]
    summary = clinical_summary(cdss.evaluate(record, ruleset=LATEST, as_of=DEFAULT_AS_OF))
    assert ["hypokalemia", "high", "PC-K-03"] in summary["flags"] or \
        ["hypokalemia", "moderate", "PC-K-01"] in summary["flags"]
    assert set(summary) == {"flags", "referrals", "plan", "suppressed", "data_requests",
                            "fired"}


# --------------------------------------------------------------------------- #
# Broken copies of the project's rulesets are caught by `cdss test-ruleset`
# --------------------------------------------------------------------------- #
def _conditions(rule: dict[str, Any]) -> list[dict[str, Any]]:
    when = rule["when"]
    return [c for part in ("all", "any", "none") for c in when.get(part, [])]


def _potassium_rule(data: dict[str, Any], threshold: str) -> dict[str, Any]:
    for rule in data["rules"]:
        for cond in _conditions(rule):
            value = cond.get("where", {}).get("value")
            if cond["fact"] == "potassium" and isinstance(value, dict) and \
                    value.get("lt") == {"threshold": threshold}:
                return rule
    raise LookupError(threshold)


def _wrong_way_round(data: dict[str, Any]) -> None:
    """potassium_low compared with gt instead of lt."""
    rule = _potassium_rule(data, "potassium_low")
    for cond in _conditions(rule):
        if cond["fact"] == "potassium":
            cond["where"]["value"] = {"gt": cond["where"]["value"].pop("lt")}


def _red_flag_keeps_exercise(data: dict[str, Any]) -> None:
    """The red-flag rule suppresses diet advice instead of exercise."""
    for rule in data["rules"]:
        for action in rule["then"]:
            if action.get("suppress", {}).get("category") == "exercise":
                action["suppress"]["category"] = "diet"


def _severity_split(data: dict[str, Any]) -> None:
    """Hypokalaemia limited to the moderate range while the severe rule flags
    under a code of its own: a lower potassium loses the hypokalemia flag."""
    moderate = _potassium_rule(data, "potassium_low")
    for cond in _conditions(moderate):
        if cond["fact"] == "potassium":
            cond["where"]["value"]["ge"] = {"threshold": "potassium_severe"}
    severe = _potassium_rule(data, "potassium_severe")
    for action in severe["then"]:
        if "flag" in action:
            action["flag"]["code"] = "hypokalemia-severe"


def _review_after_self_care(data: dict[str, Any]) -> None:
    """The urgent assessment and the prompt review moved to the end of the plan
    catalogue: a severe value's review comes after the self-care advice."""
    items = data["plan_items"]
    moved = [i for i in items if i["category"] in ("escalation", "clinical_review")]
    data["plan_items"] = [i for i in items if i not in moved] + moved


def _contradiction(data: dict[str, Any]) -> None:
    """A threshold name copied from the potassium rule into the magnesium
    rule: magnesium below 0.7 and above 3.5, which no patient has."""
    for rule in data["rules"]:
        for cond in rule["when"].get("all", []):
            value = cond.get("where", {}).get("value")
            if cond["fact"] == "magnesium" and isinstance(value, dict) and \
                    value.get("lt") == {"threshold": "magnesium_low"}:
                value["gt"] = {"threshold": "potassium_low"}
                return
    raise LookupError("magnesium_low")


def _broken_copy(folder: Path, spec: str, breakage: Callable[[dict[str, Any]], None]) -> Path:
    """Write a broken copy of ``spec`` (and its value-set files) under
    ``folder``/<id>/<version>.yaml."""
    original = load_ruleset(spec)
    data = yaml.safe_load(original.path.read_text(encoding="utf-8"))
    breakage(data)
    target = folder / original.id
    target.mkdir(parents=True)
    for name in original.file.valuesets:
        shutil.copy(original.path.parent / name, target / name)
    path = target / original.path.name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _record_printed(output: str) -> list[dict[str, Any]]:
    start = output.index("record:\n") + len("record:\n")
    text = output[start:]
    depth = 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth == 0 and char == "]":
            return json.loads(text[:i + 1])
    raise AssertionError("no record printed")


def _breakages() -> list[Any]:
    """Each breakage on every version it applies to (the severity split needs a
    version with a severe potassium threshold)."""
    cases = [
        (_wrong_way_round, "monotonicity[potassium lower keeps hypokalemia]", "gt-instead-of-lt"),
        (_red_flag_keeps_exercise, "red-flag-dominance", "red-flag-keeps-exercise"),
        (_severity_split, "monotonicity[potassium lower keeps hypokalemia]", "severity-split"),
    ]
    params = []
    for spec in VERSIONS:
        has_severe = "potassium_severe" in load_ruleset(spec).file.thresholds
        leads = any(p.plan_leads_with for p in load_ruleset(spec).file.policies)
        for breakage, failed, name in [*cases, (_review_after_self_care, "red-flag-dominance",
                                                "review-after-self-care")]:
            if breakage is _severity_split and not has_severe:
                continue
            if breakage is _review_after_self_care and not leads:
                continue
            params.append(pytest.param(spec, breakage, failed, id=f"{spec}-{name}"))
    return params


@pytest.mark.parametrize(("spec", "breakage", "property_failed"), _breakages())
def test_test_ruleset_catches_a_broken_copy_and_prints_the_shrunk_record(
        tmp_path: Path, spec: str, breakage: Callable[[dict[str, Any]], None],
        property_failed: str) -> None:
    path = _broken_copy(tmp_path / "rulesets", spec, breakage)
    report_file = tmp_path / "report.json"
    result = RUNNER.invoke(app, ["test-ruleset", str(path), "--max-examples", "60",
                                 "--json", str(report_file)])
    assert result.exit_code == 1, result.output
    assert f"FAILED {property_failed}" in result.output
    assert "as_of: 2026-01-01T00:00:00+00:00" in result.output
    report = json.loads(report_file.read_text())
    assert report["ok"] is False
    failure = next(f for f in report["failures"] if f["property"] == property_failed)
    assert failure["shrunk"] is True

    # the printed record, pasted into a case, shows the failure on the broken copy
    record = _record_printed(result.output)
    assert record == failure["record"]
    broken = load_ruleset_file(path)
    assessment = cdss.evaluate(record, ruleset=broken, as_of=failure["as_of"])
    if property_failed == "red-flag-dominance" and breakage is _review_after_self_care:
        assert any(f.severity in ("high", "critical") for f in assessment.flags)
        assert assessment.plan[0].category not in ("escalation", "clinical_review")
        assert "leads with" in failure["message"]
    elif property_failed == "red-flag-dominance":
        assert any(f.severity == "critical" for f in assessment.flags)
        assert any(p.category == "exercise" for p in assessment.plan)
    else:
        moved = cdss.evaluate(failure["variant"], ruleset=broken, as_of=failure["as_of"])
        assert assessment.flag("hypokalemia") is not None
        assert moved.flag("hypokalemia") is None


@pytest.mark.parametrize("spec", VERSIONS)
def test_test_ruleset_reports_a_contradictory_rule_as_dead(tmp_path: Path, spec: str) -> None:
    path = _broken_copy(tmp_path / "rulesets", spec, _contradiction)
    result = RUNNER.invoke(app, ["test-ruleset", str(path), "--max-examples", "30"])
    assert result.exit_code == 1, result.output
    assert "PC-MG-01" in result.output.split("Dead rules")[1]


def test_test_ruleset_passes_a_project_ruleset_and_writes_coverage(tmp_path: Path) -> None:
    report_file = tmp_path / "out" / "report.json"
    result = RUNNER.invoke(app, ["test-ruleset", "plantar-cramps@1.0.0", "--max-examples", "30",
                                 "--json", str(report_file)])
    assert result.exit_code == 0, result.output
    assert "Rule coverage" in result.output and "PC-RF-02" in result.output
    assert "monotonicity[sodium higher keeps dehydration-suspected]" in result.output
    report = json.loads(report_file.read_text())
    assert report["ok"] is True
    assert list(report["coverage"]) == [r.id for r in load_ruleset("plantar-cramps@1.0.0").rules]


def test_test_ruleset_finds_a_site_ruleset_by_id_in_its_folder(tmp_path: Path,
                                                               mini_path: Path) -> None:
    result = RUNNER.invoke(app, ["test-ruleset", "mini", "--rulesets", str(mini_path.parents[1]),
                                 "--max-examples", "12", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "mini@1.0.0" in result.output and "seed 3" in result.output


@pytest.mark.parametrize("argument", ["no-such-ruleset", "missing/1.0.0.yaml"])
def test_test_ruleset_unknown_ruleset_is_a_clear_error(argument: str) -> None:
    result = RUNNER.invoke(app, ["test-ruleset", argument])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_the_site_example_runs(tmp_path: Path) -> None:
    script = Path(__file__).parents[2] / "examples" / "property_test_site_ruleset.py"
    out = subprocess.run([sys.executable, str(script), "--max-examples", "20"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every invariant held" in out.stdout
    assert "custom property held" in out.stdout



def test_time_zone_invariance_catches_an_offset_read_as_utc(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    import cdss.facts

    original = cdss.facts.parse_time

    def ignores_offset(text: str) -> dt.datetime:
        return original(text).replace(tzinfo=dt.timezone.utc)

    monkeypatch.setattr(cdss.facts, "parse_time", ignores_offset)
    report = check_ruleset(LATEST, max_examples=150, properties=["time-zone-invariance"])
    assert not report.ok
    assert [f.property for f in report.failures] == ["time-zone-invariance"]
