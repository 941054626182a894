"""Ruleset files: validation at load time with errors naming file, rule and field."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

import cdss
from cdss.errors import InvalidArgument, RulesetError, RulesetNotFoundError
from cdss.rulesets import (
    _registry as registry,
)
from cdss.rulesets import (
    available_rulesets,
    builtin_folder,
    default_ruleset_id,
    load_ruleset,
    load_ruleset_file,
    ruleset_json_schema,
)
from tests.support.rulesets import MINI_RULESET, write_ruleset


def mutate(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINI_RULESET)
    change(data)
    return data


def rule(data: dict[str, Any], rid: str) -> dict[str, Any]:
    return next(r for r in data["rules"] if r["id"] == rid)


def _set(path: list[Any], value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = rule(target, key) if isinstance(key, str) and key.startswith("M-") \
                else target[key]
        target[path[-1]] = value
    return change


def _misspell_fact(data: dict[str, Any]) -> None:
    rule(data, "M-LOW-01")["when"]["all"][0]["fact"] = "potasium"


def _cycle(data: dict[str, Any]) -> None:
    data["rules"].append({
        "id": "M-CYC-01", "title": "cycle", "rationale": "r",
        "citation": {"source": "test", "section": "x"},
        "when": {"all": [{"fact": "cramps"}], "none": [{"fact": "b_fact"}]},
        "then": [{"derive": "a_fact"}]})
    data["rules"].append({
        "id": "M-CYC-02", "title": "cycle", "rationale": "r",
        "citation": {"source": "test", "section": "x"},
        "when": {"all": [{"fact": "a_fact"}]}, "then": [{"derive": "b_fact"}]})


def _duplicate_id(data: dict[str, Any]) -> None:
    data["rules"].append(copy.deepcopy(data["rules"][0]))


# (case name, mutation, expected rule id, expected field, fragment of message, suggestion)
CASES = [
    ("unknown fact, misspelt", _misspell_fact, "M-LOW-01", "when.all.0.fact", "unknown fact",
     "potassium"),
    ("unknown field", _set(["M-LOW-01", "when"], {"all": [
        {"fact": "potassium", "where": {"valeu": {"lt": 3.5}}}]}), "M-LOW-01",
     "when.all.0.where.valeu", "no field", "value"),
    ("unknown key in a rule", _set(["M-LOW-01", "rationnale"], "x"), "M-LOW-01", "rationnale",
     "unknown key", "rationale"),
    ("bad severity", _set(["M-LOW-01", "then"], [
        {"flag": {"code": "x", "display": "x", "severity": "severe"}}]), "M-LOW-01",
     "then.0.flag.severity", "", None),
    ("two actions in one", _set(["M-LOW-01", "then"], [{"derive": "a", "plan": "stretch"}]),
     "M-LOW-01", "then.0", "exactly one", None),
    ("unknown threshold", _set(["M-LOW-01", "when"], {"all": [
        {"fact": "potassium", "where": {"value": {"lt": {"threshold": "k_lo"}}}}]}), "M-LOW-01",
     "when.all.0.where.value.lt", "unknown threshold", "k_low"),
    ("unknown plan item", _set(["M-ADV-01", "then"], [{"plan": "eat-banana"}]), "M-ADV-01",
     "then.0.plan", "unknown plan item", "eat-bananas"),
    ("unknown suppressed category", _set(["M-SUP-01", "then"], [
        {"suppress": {"category": "diets", "reason": "x"}}]), "M-SUP-01",
     "then.0.suppress.category", "unknown plan category", "diet"),
    ("unknown analyte requested", _set(["M-REQ-01", "then"], [
        {"request": {"analyte": "potasium", "reason": "x"}}]), "M-REQ-01",
     "then.0.request.analyte", "unknown analyte", "potassium"),
    ("ordering a text field", _set(["M-LOW-01", "when"], {"all": [
        {"fact": "potassium", "where": {"status": {"lt": "x"}}}]}), "M-LOW-01",
     "when.all.0.where.status.lt", "does not fit", None),
    ("boolean compared to a number", _set(["M-ADV-02", "when"], {"all": [
        {"fact": "cramps", "where": {"nocturnal": 1}}]}), "M-ADV-02",
     "when.all.0.where.nocturnal.eq", "does not fit", None),
    ("unknown citation source", _set(["M-LOW-01", "citation"], {"source": "tset",
                                                                 "section": "1"}),
     "M-LOW-01", "citation.source", "not in sources", "test"),
    ("derived fact used but never derived", _set(["M-ADV-01", "when"], {"all": [
        {"fact": "cramps"}, {"fact": "low_mg"}]}), "M-ADV-01", "when.all.1.fact",
     "unknown fact", "low_k"),
    ("duplicate rule id", _duplicate_id, "M-LOW-01", "id", "used twice", None),
    ("cyclic negation", _cycle, None, "when", "cyclic negation", None),
    ("rule id shape", _set(["M-LOW-01", "id"], "low one"), "low one", "id", "", None),
    ("empty when", _set(["M-LOW-01", "when"], {}), "M-LOW-01", "when", "at least one", None),
    ("bad version", _set(["version"], "1.0"), None, "version", "", None),
]


@pytest.mark.parametrize(("name", "change", "rule_id", "field", "message", "suggestion"),
                         CASES, ids=[c[0] for c in CASES])
def test_malformed_ruleset_gives_the_right_error(
    tmp_path: Path, name: str, change: Any, rule_id: str | None, field: str, message: str,
    suggestion: str | None,
) -> None:
    path = _write_raw(tmp_path, mutate(change))
    with pytest.raises(RulesetError) as info:
        load_ruleset_file(path)
    err = info.value
    assert err.path == str(path)
    if rule_id is not None:
        assert err.rule_id == rule_id
    assert err.field == field
    assert message in str(err)
    assert err.suggestion == suggestion


def _write_raw(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = write_ruleset(tmp_path, copy.deepcopy(MINI_RULESET))
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: mini\nid: mini\n", "duplicate key"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping at its top level"),
        ("id: [unclosed\n", "not valid YAML"),
    ],
)
def test_unsafe_or_broken_yaml_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = write_ruleset(tmp_path, copy.deepcopy(MINI_RULESET))
    path.write_text(text)
    with pytest.raises(RulesetError, match=message):
        load_ruleset_file(path)


def test_file_name_must_match_version(tmp_path: Path) -> None:
    path = write_ruleset(tmp_path, copy.deepcopy(MINI_RULESET))
    other = path.with_name("2.0.0.yaml")
    path.rename(other)
    with pytest.raises(RulesetError, match=r"file name says 2\.0\.0"):
        load_ruleset_file(other)


def test_strata_follow_dependencies(mini: cdss.Ruleset) -> None:
    stratum = {r.id: r.stratum for r in mini.rules}
    assert stratum["M-LOW-01"] == 0
    assert stratum["M-ADV-01"] == stratum["M-ADV-02"] == 1  # they read low_k


def test_identity_hash_is_stable_and_follows_content(tmp_path: Path) -> None:
    a = load_ruleset_file(write_ruleset(tmp_path / "a", copy.deepcopy(MINI_RULESET)))
    b = load_ruleset_file(write_ruleset(tmp_path / "b", copy.deepcopy(MINI_RULESET)))
    assert a.sha256 == b.sha256 and len(a.sha256) == 64
    changed = mutate(_set(["thresholds"], {"k_low": {"value": 3.4, "unit": "mmol/L"},
                                           "mg_low": {"value": 0.7, "unit": "mmol/L"}}))
    c = load_ruleset_file(write_ruleset(tmp_path / "c", changed))
    assert c.sha256 != a.sha256


def test_versions_side_by_side_and_latest_active(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    write_ruleset(folder, copy.deepcopy(MINI_RULESET))
    newer = mutate(_set(["version"], "1.1.0"))
    write_ruleset(folder, newer)
    draft = mutate(_set(["version"], "2.0.0"))
    draft["status"] = "draft"
    write_ruleset(folder, draft)
    assert load_ruleset("mini", paths=[folder]).version == "1.1.0"
    old = load_ruleset("mini@1.0.0", paths=[folder])
    assert old.version == "1.0.0" and old.key != load_ruleset("mini@1.1.0", paths=[folder]).key
    assert load_ruleset("mini@2.0.0", paths=[folder]).file.status == "draft"
    assert {"mini@1.0.0", "mini@1.1.0", "mini@2.0.0"} <= set(available_rulesets(paths=[folder]))


def test_not_found_errors_suggest(tmp_path: Path) -> None:
    with pytest.raises(RulesetNotFoundError) as info:
        load_ruleset("plantar-cramp")
    assert info.value.suggestion == "plantar-cramps"
    with pytest.raises(RulesetNotFoundError, match="available"):
        load_ruleset("plantar-cramps@9.9.9")
    with pytest.raises(RulesetNotFoundError):
        load_ruleset("x", paths=[tmp_path / "missing"])
    with pytest.raises(InvalidArgument):
        load_ruleset("plantar-cramps", paths=str(tmp_path))


def test_concept_map_adds_site_codes_and_changes_identity(tmp_path: Path, mini_path: Path) -> None:
    cmap = tmp_path / "site-map.yaml"
    cmap.write_text(yaml.safe_dump({"ruleset": "mini", "maps": [
        {"system": "http://hospital.example/codes", "code": "LC1", "concept": "cramps"}]}))
    mapped = load_ruleset_file(mini_path, concept_maps=[cmap])
    plain = load_ruleset_file(mini_path)
    assert mapped.sha256 != plain.sha256
    obs = {"resourceType": "Observation", "id": "o", "status": "final",
           "code": {"coding": [{"system": "http://hospital.example/codes", "code": "LC1"}]},
           "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-01-01"}
    assert cdss.extract_facts([obs], ruleset=mapped, as_of="2026-01-02").get("cramps")
    assert cdss.extract_facts([obs], ruleset=plain, as_of="2026-01-02").get("cramps") is None
    bad = tmp_path / "bad-map.yaml"
    bad.write_text(yaml.safe_dump({"ruleset": "mini", "maps": [
        {"system": "s", "code": "c", "concept": "crampz"}]}))
    with pytest.raises(RulesetError) as info:
        load_ruleset_file(mini_path, concept_maps=[bad])
    assert info.value.suggestion == "cramps" and info.value.field == "maps.0.concept"


def test_json_schema_is_exported_from_the_models() -> None:
    schema = ruleset_json_schema()
    assert schema["title"] == "RulesetFile"
    assert {"id", "version", "rules", "sources"} <= set(schema["required"])


def test_shipped_rulesets_load() -> None:
    specs = [s for s in available_rulesets() if s.startswith("plantar-cramps@")]
    assert "plantar-cramps@1.0.0" in specs
    for spec in specs:
        rs = load_ruleset(spec)
        assert rs.spec == spec and rs.rules
        for compiled in rs.rules:
            assert compiled.rule.citation.source in rs.file.sources


def test_a_policy_naming_no_plan_category_is_refused(tmp_path: Path) -> None:
    data = {**MINI_RULESET, "policies": [{"flag_severity": "critical",
                                          "no_plan_category": "excercise"}]}
    with pytest.raises(RulesetError) as caught:
        load_ruleset_file(write_ruleset(tmp_path, data))
    assert caught.value.field == "policies.0.no_plan_category"
    assert caught.value.suggestion == "exercise"


def test_declaring_a_policy_leaves_the_content_hash_as_it_was(tmp_path: Path) -> None:
    plain = load_ruleset_file(write_ruleset(tmp_path / "a", MINI_RULESET))
    declared = load_ruleset_file(write_ruleset(tmp_path / "b", {**MINI_RULESET, "policies": [
        {"flag_severity": "critical", "no_plan_category": "exercise"}]}))
    assert declared.file.policies and not plain.file.policies
    assert plain.sha256 == declared.sha256
    changed = copy.deepcopy(MINI_RULESET)
    changed["thresholds"]["k_low"]["value"] = 3.4
    assert load_ruleset_file(write_ruleset(tmp_path / "c", changed)).sha256 != plain.sha256


def test_the_default_ruleset_is_the_one_the_shipped_index_names() -> None:
    index = yaml.safe_load((builtin_folder() / "index.yaml").read_text(encoding="utf-8"))
    assert default_ruleset_id() == index["default"]
    default = load_ruleset()
    assert default.id == index["default"] and default.file.status == "active"
    assert default is load_ruleset(index["default"])


@pytest.mark.parametrize(("index", "error"), [
    (None, "no index naming the default ruleset"),
    ("default: [plantar-cramps]\n", "must name the default ruleset"),
    ("other: plantar-cramps\n", "must name the default ruleset"),
])
def test_a_missing_or_malformed_index_is_a_ruleset_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index: str | None, error: str) -> None:
    shutil.copytree(builtin_folder() / "plantar-cramps", tmp_path / "plantar-cramps")
    if index is not None:
        (tmp_path / "index.yaml").write_text(index, encoding="utf-8")
    monkeypatch.setattr(registry, "builtin_folder", lambda: tmp_path)
    with pytest.raises(RulesetError, match=error) as caught:
        load_ruleset()
    assert caught.value.path == str(tmp_path / "index.yaml")
    assert load_ruleset("plantar-cramps").id == "plantar-cramps"  # naming one still works


def test_an_index_naming_another_ruleset_changes_the_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ruleset(tmp_path, MINI_RULESET)
    (tmp_path / "index.yaml").write_text("default: mini\n", encoding="utf-8")
    monkeypatch.setattr(registry, "builtin_folder", lambda: tmp_path)
    assert load_ruleset().spec == "mini@1.0.0"
    assert cdss.evaluate([{"resourceType": "Patient", "id": "p1"}],
                         as_of="2026-01-01").ruleset.id == "mini"


#: The content hashes of the pinned versions: a pinned version never changes.
PINNED = {
    "plantar-cramps@1.0.0": "3cd38bab1c22d367680bdbea569e8f895e288136832c85698a7a44ca41f09ccd",
    "plantar-cramps@1.1.0": "a5fb0c88168fa5f506f515eb4a86b7f505299622cae324644cbbe424b0e8e14f",
    "plantar-cramps@1.2.0": "3b3309f0647cd1f685401d005652bea19eb2115b6127d988a00ee4361903f57d",
    "plantar-cramps@1.3.0": "459d6ffc9c145ee0c96ccaaedf0f71695bdbd3856c205f0ca2a3e6d6c3604278",
    # released 2026-12-05 (the default): pinned like the others
    "plantar-cramps@1.4.0": "71ca2d0bedbba427c91962f0504d32afd86bc6ec84dc7b9249a8b997ca89716e",
}


@pytest.mark.parametrize(("spec", "sha256"), sorted(PINNED.items()))
def test_pinned_versions_keep_their_content_hash(spec: str, sha256: str) -> None:
    assert load_ruleset(spec).sha256 == sha256


def test_the_default_version_is_the_newest_active_one() -> None:
    assert load_ruleset("plantar-cramps").version == "1.4.0"
    assert load_ruleset("plantar-cramps").sha256 == PINNED["plantar-cramps@1.4.0"]
    # 1.3.0 is a draft: newer than 1.2.0, yet never the default
    assert load_ruleset("plantar-cramps@1.3.0").file.status == "draft"
