"""Property-test a site's own ruleset with cdss.testing.

A site writes a small ruleset of its own next to a copy of the plantar-cramps
value sets, then

1. checks every invariant of cdss.testing on it in one call
   (``check_ruleset``), printing the rule coverage, and
2. runs a property test of its own with hypothesis and the kit's strategies:
   "a potassium below the site's threshold is flagged, and nothing else is".

Run from the project folder after installing cdss with the testing extra
(``pip install ".[testing]"``):

    python examples/property_test_site_ruleset.py
    python examples/property_test_site_ruleset.py --max-examples 300
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings

import cdss
from cdss.rulesets import builtin_folder, load_ruleset_file
from cdss.testing import check_ruleset, observations, patients, records

AS_OF = "2026-03-01T00:00:00Z"  # every generated record is dated relative to it
K_LOW = 3.4  # this site's threshold, lower than the project's 3.5

SITE_RULESET = f"""\
id: site-cramps
version: 1.0.0
status: active
fhir_release: 4.0.1
title: Night cramps clinic protocol
description: A site's own short protocol for leg cramps, on the plantar-cramps value sets.
sources:
  protocol: {{title: Night cramps clinic protocol, publisher: Example site}}
valuesets: [valuesets.yaml, sites.yaml]
thresholds:
  k_low: {{value: {K_LOW}, unit: mmol/L, description: Low potassium at this site}}
  mg_low: {{value: 0.70, unit: mmol/L, description: Low magnesium}}
plan_items:
  - {{code: calf-stretch, category: exercise, text: Stretch the calves before bed.}}
  - {{code: fluids, category: hydration, text: Drink enough through the day.}}
invariants:
  - {{analyte: potassium, direction: lower, keeps_flag: low-potassium}}
  - {{analyte: magnesium, direction: lower, keeps_flag: low-magnesium}}
rules:
  - id: SITE-K-01
    title: Low potassium
    when: {{all: [{{fact: potassium, where: {{value: {{lt: {{threshold: k_low}}}}}}}}]}}
    then: [{{flag: {{code: low-potassium, display: Low potassium, severity: moderate}}}}]
    rationale: Low potassium causes cramps.
    citation: {{source: protocol, section: "2.1"}}
  - id: SITE-MG-01
    title: Low magnesium
    when: {{all: [{{fact: magnesium, where: {{value: {{lt: {{threshold: mg_low}}}}}}}}]}}
    then: [{{flag: {{code: low-magnesium, display: Low magnesium, severity: moderate}}}}]
    rationale: Low magnesium causes cramps.
    citation: {{source: protocol, section: "2.2"}}
  - id: SITE-CRAMP-01
    title: Night cramps advice
    when: {{all: [{{fact: leg_cramps, where: {{nocturnal: true}}}}]}}
    then: [{{plan: calf-stretch}}, {{plan: fluids}}]
    rationale: Stretching before bed prevents night cramps.
    citation: {{source: protocol, section: "3"}}
  - id: SITE-DATA-01
    title: Cramps without a usable potassium
    when:
      all: [{{fact: leg_cramps}}]
      none: [{{fact: potassium, where: {{status: determinate}}}}]
    then: [{{request: {{analyte: potassium, reason: No usable potassium in the last 90 days.}}}}]
    rationale: A cramp work-up needs a potassium.
    citation: {{source: protocol, section: "2"}}
  - id: SITE-RF-01
    title: Red flags first
    when: {{any: [{{fact: saddle_anaesthesia}}, {{fact: foot_drop}}]}}
    then:
      - flag: {{code: spinal-red-flags, display: Spinal red flags, severity: critical}}
      - suppress: {{category: exercise, reason: Urgent assessment before any exercise.}}
    rationale: Saddle anaesthesia or foot drop needs urgent assessment.
    citation: {{source: protocol, section: "1"}}
"""


def write_site_ruleset(folder: Path) -> Path:
    """The site's ruleset in ``folder``/site-cramps/1.0.0.yaml, with a copy of
    the value-set files it names (they must sit in the same folder)."""
    target = folder / "site-cramps"
    target.mkdir(parents=True)
    for name in ("valuesets.yaml", "sites.yaml"):
        shutil.copy(builtin_folder() / "plantar-cramps" / name, target / name)
    path = target / "1.0.0.yaml"
    path.write_text(SITE_RULESET, encoding="utf-8")
    return path


def check_invariants(ruleset: cdss.Ruleset, max_examples: int) -> bool:
    """Every invariant of cdss.testing, and which rules fired how often."""
    report = check_ruleset(ruleset, max_examples=max_examples, as_of=AS_OF)
    for prop in report.properties:
        print(f"  {'ok  ' if prop.passed else 'FAIL'} {prop.name} ({prop.checked} examples)")
    for rule_id, fired in report.coverage.items():
        print(f"  {rule_id:14} fired on {fired} of {report.examples} records")
    for failure in report.failures:
        print(f"FAILED {failure.property}: {failure.message}\nas_of: {failure.as_of}")
        print(failure.record_json())
    if report.ok:
        print("every invariant held")
    return report.ok


def check_custom_property(ruleset: cdss.Ruleset, max_examples: int) -> bool:
    """The site's own properties, in words first:

    * on any record, the low-potassium flag is raised exactly when the
      potassium cdss reads (the latest usable one) is below the site's
      threshold, whatever else the record holds;
    * a potassium result below the threshold is flagged in every unit a lab
      may send it in.
    """
    run = settings(max_examples=max_examples, deadline=None, database=None)

    @run
    @given(record=records(ruleset=ruleset, as_of=AS_OF))
    def flagged_exactly_when_low(record: list[dict[str, Any]]) -> None:
        facts = cdss.extract_facts(record, ruleset=ruleset, as_of=AS_OF)
        potassium = facts.get("potassium")
        low = potassium is not None and potassium.values.get("status") == "determinate" \
            and float(potassium.values["value"]) < K_LOW
        assessment = cdss.evaluate(record, ruleset=ruleset, as_of=AS_OF)
        assert (assessment.flag("low-potassium") is not None) == low

    @run
    @given(patient=patients(as_of=AS_OF),
           result=observations(analyte="potassium", ruleset=ruleset, as_of=AS_OF,
                               max_value=K_LOW - 0.01))
    def low_result_flagged_in_any_unit(patient: dict[str, Any], result: dict[str, Any]) -> None:
        assessment = cdss.evaluate([patient, result], ruleset=ruleset, as_of=AS_OF)
        assert assessment.flag("low-potassium") is not None, result["valueQuantity"]

    try:
        flagged_exactly_when_low()
        low_result_flagged_in_any_unit()
    except AssertionError as failure:
        print(f"custom property FAILED: {failure}")
        return False
    print("custom property held")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ruleset = load_ruleset_file(write_site_ruleset(Path(folder)))
        print(f"== {ruleset.spec}: invariants of cdss.testing")
        ok = check_invariants(ruleset, args.max_examples)
        print(f"== {ruleset.spec}: the site's own property tests")
        ok = check_custom_property(ruleset, args.max_examples) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
