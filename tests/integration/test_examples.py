"""The example patients tell the stories they claim to tell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cdss

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STORIES = {
    "01-runner-plantar-fasciitis-night-cramps": {"calf-overload-from-gait",
                                                 "plantar-fasciitis-pattern",
                                                 "posterior-chain-tightness"},
    "02-older-thiazide-low-magnesium": {"diuretic-medication-review", "hypokalemia",
                                        "hypomagnesemia"},
    "03-sciatica-mimicking-foot-pain": {"sciatica-suspected"},
    "04-cauda-equina-red-flags": {"cauda-equina-red-flags", "calf-overload-from-gait",
                                  "plantar-fasciitis-pattern"},
    "05-ckd-stage-4-with-cramps": {"hyperkalemia-risk", "hypomagnesemia"},
}


@pytest.mark.parametrize("name", sorted(STORIES))
def test_example_patient(name: str) -> None:
    a = cdss.evaluate((EXAMPLES / "patients" / f"{name}.json").read_bytes(),
                      ruleset="plantar-cramps@1.1.0", as_of="2026-03-01")
    assert {f.code for f in a.flags} == STORIES[name]


def test_every_example_patient_has_a_story() -> None:
    assert {p.stem for p in (EXAMPLES / "patients").glob("*.json")} == set(STORIES)


def test_the_example_script_prints_every_assessment() -> None:
    out = subprocess.run([sys.executable, str(EXAMPLES / "assess_examples.py")],
                         capture_output=True, text=True, check=True).stdout
    assert out.count("=== ") == len(STORIES)
    assert "CRITICAL Cauda equina red flags" in out
    assert "Suppressed" in out and "Data requests" in out
