"""Every ICD-10-CM code in the value sets is a real code with its official display.

The value-set files under ``rulesets/`` are read directly as YAML (not through
the loader), so this checks the files as shipped:

1. each ICD-10-CM code exists in the official ICD-10-CM tabular list; a code
   that is not a prefix must be a billable (leaf) code, a prefix must be an
   existing category or subcategory;
2. its ``display`` is the official description (compared case-insensitively,
   ignoring punctuation and spacing); a frozen file that disagrees may only be
   excused by an explicit entry in ``FROZEN_DISPLAY_EXCEPTIONS``;
3. the ``laterality`` and ``site`` fields hold allowed values, name a body
   site of the ruleset, and agree with what the official description says;
4. ``extends`` only extends concepts that exist.

The table is the one shipped by the ``simple-icd-10-cm`` package;
``ICD10CM_RELEASE`` names its release, as stated in
docs/terminology-verification.md.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

with warnings.catch_warnings():
    # the package loads its tables with importlib.resources.read_text, deprecated on 3.11/3.12
    warnings.simplefilter("ignore", DeprecationWarning)
    import simple_icd_10_cm as cm

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
RULESETS = Path(__file__).resolve().parents[2] / "rulesets"

#: ICD-10-CM release (fiscal year) of the table the package ships; the docs name it.
ICD10CM_RELEASE = "2026"

#: Files hashed into pinned ruleset versions: never edited, so a display that
#: disagrees with the official text can only be listed here.
FROZEN_FILES = frozenset({"plantar-cramps/valuesets.yaml", "plantar-cramps/sites.yaml"})

#: (file, code, display in the file) -> (official description, reason).
#: Empty: every display of the frozen files matches the official table.
FROZEN_DISPLAY_EXCEPTIONS: dict[tuple[str, str, str], tuple[str, str]] = {}

LATERALITIES = frozenset({"right", "left", "bilateral"})
_SIDE_WORD = re.compile(r"\b(right|left|bilateral)\b")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _value_set_files() -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(RULESETS.rglob("*.y*ml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "systems" in data and (
                "concepts" in data or "extends" in data):
            files[path.relative_to(RULESETS).as_posix()] = data
    return files


FILES = _value_set_files()


def _entries(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for section in ("concepts", "extends"):
        for concept, body in (data.get(section) or {}).items():
            for entry in (body or {}).get("codes") or []:
                out.append((concept, entry))
    return out


def _system(data: dict[str, Any], entry: dict[str, Any]) -> str:
    return str((data.get("systems") or {}).get(entry["system"], entry["system"]))


ICD_ENTRIES = [
    pytest.param(name, concept, entry, id=f"{name}:{concept}:{entry['code']}")
    for name, data in FILES.items()
    for concept, entry in _entries(data)
    if _system(data, entry) == ICD10CM
]

SITED_ENTRIES = [
    pytest.param(name, concept, entry, id=f"{name}:{concept}:{entry['code']}")
    for name, data in FILES.items()
    for concept, entry in _entries(data)
    if "laterality" in entry or "site" in entry
]


def _official(code: str) -> str:
    assert cm.is_valid_item(code), f"{code} is not an ICD-10-CM code"
    return str(cm.get_description(code))


def test_value_set_files_are_found() -> None:
    assert {"plantar-cramps/valuesets.yaml", "plantar-cramps/sites.yaml",
            "plantar-cramps/valuesets-ehr.yaml"} <= set(FILES)
    assert len(ICD_ENTRIES) > 50


def test_package_ships_the_documented_release() -> None:
    from importlib import resources
    tabular = [p for p in resources.files("simple_icd_10_cm.data").iterdir()
               if p.name.startswith("icd10") and p.name.endswith(".xml")]
    assert len(tabular) == 1, [p.name for p in tabular]
    head = tabular[0].read_text(encoding="utf-8")[:2000]
    found = re.search(r"<version>\s*(\d{4})\s*</version>", head)
    assert found, "release year not found in the packaged tabular list"
    assert found.group(1) == ICD10CM_RELEASE, (
        f"the package now ships ICD-10-CM {found.group(1)}: re-check the displays, then "
        "update ICD10CM_RELEASE and docs/terminology-verification.md")


@pytest.mark.parametrize(("name", "concept", "entry"), ICD_ENTRIES)
def test_code_exists_with_official_display(name: str, concept: str, entry: dict[str, Any]) -> None:
    code = str(entry["code"])
    official = _official(code)
    if entry.get("prefix"):
        assert not cm.is_leaf(code), f"{code} is a leaf code: it should not be a prefix"
    else:
        assert cm.is_leaf(code), (
            f"{code} ({official}) is not billable: mark it prefix: true or list its children")
    display = str(entry.get("display", ""))
    if _norm(display) == _norm(official):
        return
    excuse = FROZEN_DISPLAY_EXCEPTIONS.get((name, code, display))
    assert excuse is not None and name in FROZEN_FILES and _norm(excuse[0]) == _norm(official), (
        f"{name} {concept} {code}: display {display!r}, official {official!r}")


def test_frozen_exceptions_are_all_still_needed() -> None:
    for (name, code, display), (official, reason) in FROZEN_DISPLAY_EXCEPTIONS.items():
        assert name in FROZEN_FILES, name
        assert reason
        assert any(str(e["code"]) == code and e.get("display") == display
                   for _, e in _entries(FILES[name])), (name, code, display)
        assert _norm(display) != _norm(_official(code)), f"{code}: exception no longer needed"
        assert _norm(official) == _norm(_official(code)), f"{code}: official text changed"


def _sites_of(name: str) -> dict[str, Any]:
    sites_file = f"{name.rsplit('/', 1)[0]}/sites.yaml"
    assert sites_file in FILES, f"no {sites_file} next to {name}"
    return {k: v for k, v in (FILES[sites_file].get("concepts") or {}).items()
            if v.get("kind") == "body_site"}


@pytest.mark.parametrize(("name", "concept", "entry"), SITED_ENTRIES)
def test_laterality_and_site_values(name: str, concept: str, entry: dict[str, Any]) -> None:
    if "laterality" in entry:
        assert entry["laterality"] in LATERALITIES, entry
    if "site" in entry:
        assert entry["site"] in _sites_of(name), f"{entry['site']!r} is not a body site"
    data = FILES[name]
    if _system(data, entry) != ICD10CM:
        return
    official = _norm(_official(str(entry["code"])))
    if "laterality" in entry:
        assert entry["laterality"] in _SIDE_WORD.findall(official), (entry, official)
    if "site" in entry:
        assert re.search(rf"\b{re.escape(entry['site'])}\b", official), (entry, official)


@pytest.mark.parametrize("name", sorted(set(FILES) - FROZEN_FILES))
def test_sided_icd10cm_codes_state_their_side(name: str) -> None:
    data = FILES[name]
    missing = [
        f"{concept}:{entry['code']}" for concept, entry in _entries(data)
        if _system(data, entry) == ICD10CM and "laterality" not in entry
        and _SIDE_WORD.search(_norm(_official(str(entry["code"]))))]
    assert not missing, f"official text states a side, entry has no laterality: {missing}"


@pytest.mark.parametrize("name", sorted(n for n, d in FILES.items() if "extends" in d))
def test_extends_names_existing_concepts(name: str) -> None:
    folder = name.rsplit("/", 1)[0]
    existing: set[str] = set()
    for other, data in FILES.items():
        if other.rsplit("/", 1)[0] == folder and "extends" not in data:
            existing |= set(data.get("concepts") or {})
    extended = set(FILES[name]["extends"] or {})
    assert extended <= existing, f"unknown concepts: {sorted(extended - existing)}"
    new = set(FILES[name].get("concepts") or {})
    assert not new & existing, f"new concepts clash with existing ones: {sorted(new & existing)}"
