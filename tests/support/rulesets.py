"""A small ruleset exercising every engine feature, and a writer for ruleset files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MINI_VALUESETS: dict[str, Any] = {
    "systems": {"loinc": "http://loinc.org", "sct": "http://snomed.info/sct",
                "local": "https://cdss.dev/fhir/CodeSystem/findings"},
    "concepts": {
        "potassium": {"kind": "lab", "display": "Potassium", "codes": [
            {"system": "loinc", "code": "2823-3", "verified": True},
            {"system": "loinc", "code": "6298-4", "verified": True}]},
        "magnesium": {"kind": "lab", "display": "Magnesium", "codes": [
            {"system": "loinc", "code": "19123-9", "verified": True},
            {"system": "loinc", "code": "2601-3", "verified": True}]},
        "cramps": {"kind": "finding", "display": "Leg cramps", "codes": [
            {"system": "local", "code": "leg-cramps", "verified": True}]},
        "ckd": {"kind": "condition", "display": "CKD", "codes": [
            {"system": "sct", "code": "709044004", "verified": True}]},
        "calf": {"kind": "body_site", "display": "Calf", "codes": [
            {"system": "local", "code": "calf", "verified": True}]},
    },
    "analytes": {
        "potassium": {"canonical_unit": "mmol/L", "valence": 1, "lookback_days": 90,
                      "plausible": [0.5, 15]},
        "magnesium": {"canonical_unit": "mmol/L", "valence": 2, "molar_mass_g_per_mol": 24.305,
                      "lookback_days": 90, "plausible": [0.05, 10]},
    },
}

MINI_RULESET: dict[str, Any] = {
    "id": "mini",
    "version": "1.0.0",
    "status": "active",
    "fhir_release": "4.0.1",
    "title": "Mini ruleset exercising every engine feature",
    "description": "Test ruleset.",
    "sources": {"test": {"title": "Test source"}},
    "valuesets": ["valuesets.yaml"],
    "thresholds": {"k_low": {"value": 3.5, "unit": "mmol/L"},
                   "mg_low": {"value": 0.7, "unit": "mmol/L"}},
    "plan_items": [
        {"code": "eat-bananas", "category": "diet", "text": "Eat bananas."},
        {"code": "stretch", "category": "exercise", "text": "Stretch."},
    ],
    "rules": [
        {"id": "M-LOW-01", "title": "Low potassium",
         "when": {"all": [{"fact": "potassium",
                           "where": {"value": {"lt": {"threshold": "k_low"}}}}]},
         "then": [{"derive": "low_k"},
                  {"flag": {"code": "low-k", "display": "Low K", "severity": "moderate"}}],
         "rationale": "K low.", "citation": {"source": "test", "section": "1"}},
        {"id": "M-MG-01", "title": "Low magnesium",
         "when": {"all": [{"fact": "magnesium",
                           "where": {"value": {"lt": {"threshold": "mg_low"}}}}]},
         "then": [{"flag": {"code": "low-mg", "display": "Low Mg", "severity": "moderate"}}],
         "rationale": "Mg low.", "citation": {"source": "test", "section": "1"}},
        {"id": "M-ADV-01", "title": "Bananas for cramps with low K",
         "when": {"all": [{"fact": "cramps"}, {"fact": "low_k"}]},
         "then": [{"plan": "eat-bananas"}],
         "rationale": "Chaining.", "citation": {"source": "test", "section": "2"}},
        {"id": "M-ADV-02", "title": "Stretch for cramps without low K",
         "when": {"all": [{"fact": "cramps"}], "none": [{"fact": "low_k"}]},
         "then": [{"plan": "stretch"}],
         "rationale": "Negation of a derived fact.",
         "citation": {"source": "test", "section": "2"}},
        {"id": "M-REQ-01", "title": "Cramps without potassium",
         "when": {"all": [{"fact": "cramps"}],
                  "none": [{"fact": "potassium", "where": {"status": "determinate"}}]},
         "then": [{"request": {"analyte": "potassium", "reason": "No K."}}],
         "rationale": "Missing data.", "citation": {"source": "test", "section": "3"}},
        {"id": "M-SUP-01", "title": "CKD suppresses bananas",
         "when": {"all": [{"fact": "ckd"}]},
         "then": [{"suppress": {"plan": "eat-bananas", "reason": "CKD."}}],
         "rationale": "Suppression.", "citation": {"source": "test", "section": "4"}},
    ],
}


def write_ruleset(folder: Path, ruleset: dict[str, Any] | str,
                  valuesets: dict[str, Any] | None = None) -> Path:
    """Write a ruleset (dict or raw YAML text) and its value sets; return the file."""
    rid = ruleset["id"] if isinstance(ruleset, dict) else "mini"
    version = ruleset["version"] if isinstance(ruleset, dict) else "1.0.0"
    rdir = folder / rid
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "valuesets.yaml").write_text(yaml.safe_dump(valuesets or MINI_VALUESETS))
    path = rdir / f"{version}.yaml"
    path.write_text(ruleset if isinstance(ruleset, str) else yaml.safe_dump(ruleset,
                                                                           sort_keys=False))
    return path

