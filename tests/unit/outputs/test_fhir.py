"""FHIR R4 output: the Bundle of an Assessment validates and is self-consistent."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

import cdss
from cdss.assessment import Assessment
from cdss.errors import CDSSError, FhirOutputError, InvalidArgument
from cdss.outputs.fhir import (
    RULESET_IDENTIFIER_SYSTEM,
    RULESET_SHA256_SYSTEM,
    to_fhir_bundle,
    validate_bundle,
)
from tests.support.builders import bundle, condition, finding, lab, patient
from tests.support.paths import ROOT

AS_OF = "2026-03-01"
SPEC = "plantar-cramps@1.0.0"
CANONICAL = "https://cdss.dev/fhir/Library/plantar-cramps"


@pytest.fixture(scope="module")
def rs() -> cdss.Ruleset:
    return cdss.load_ruleset(SPEC)


def healthy() -> list[dict[str, Any]]:
    return [patient("h1"),
            lab("k1", "2823-3", 4.2, "mmol/L", when="2026-02-20", pid="h1"),
            lab("m1", "19123-9", 2.1, "mg/dL", when="2026-02-20", pid="h1")]


def red_flags() -> list[dict[str, Any]]:
    return [patient("r1"),
            finding("s1", "saddle-anaesthesia", pid="r1"),
            finding("c1", "leg-cramps", site="calf", nocturnal=True, pid="r1"),
            lab("k1", "2823-3", 3.0, "mmol/L", when="2026-02-20", pid="r1"),
            # future-dated: ignored and noted, so the Bundle carries an OperationOutcome
            lab("k2", "2823-3", 3.1, "mmol/L", when="2026-03-05", pid="r1")]


def data_requests() -> list[dict[str, Any]]:
    return [patient("c2"), finding("c1", "leg-cramps", site="calf", pid="c2")]


def sciatica_and_pf() -> list[dict[str, Any]]:
    return [patient("s2"), finding("r", "radiating-leg-pain", pid="s2"),
            condition("lbp", "279039007", pid="s2"),
            finding("c1", "leg-cramps", site="calf", pid="s2"),
            condition("pf", "202882003", pid="s2")]


SCENARIOS = {"healthy": healthy, "red-flags": red_flags, "data-requests": data_requests,
             "sciatica-and-pf": sciatica_and_pf}


def assess(rs: cdss.Ruleset, record: list[dict[str, Any]]) -> Assessment:
    return cdss.evaluate(bundle(*record), ruleset=rs, as_of=AS_OF)


def entries(b: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == rtype]


def references(node: Any) -> list[str]:
    """Every Reference.reference inside ``node`` (a resource's own ``reference``
    uri, as in DetectedIssue.reference, is not a Reference)."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str) and "resourceType" not in node:
            found.append(node["reference"])
        for value in node.values():
            found += references(value)
    elif isinstance(node, list):
        for value in node:
            found += references(value)
    return found


def input_refs(record: list[dict[str, Any]]) -> set[str]:
    return {f"{r['resourceType']}/{r['id']}" for r in record}


# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_bundle_validates_and_references_resolve(rs: cdss.Ruleset, name: str) -> None:
    record = SCENARIOS[name]()
    b = to_fhir_bundle(assess(rs, record), ruleset=rs)
    # the whole Bundle, and each resource on its own, with the R4B models
    get_fhir_model_class("Bundle").model_validate(b)
    assert b["type"] == "collection"
    full_urls = [e["fullUrl"] for e in b["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    for entry in b["entry"]:
        res = entry["resource"]
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        assert entry["fullUrl"] == f"urn:uuid:{res['id']}"
        assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-"
                            r"[0-9a-f]{12}", entry["fullUrl"])
        for ref in references(res):
            if ref.startswith("urn:uuid:"):
                assert ref in full_urls, f"{ref} in {res['resourceType']} does not resolve"
            else:
                assert ref in input_refs(record), f"{ref} is not one of the patient's resources"
    # the library's own checker agrees, also when told the patient's resources
    validate_bundle(b, external=input_refs(record))


def test_healthy_patient_has_guidance_and_provenance_only(rs: cdss.Ruleset) -> None:
    a = assess(rs, healthy())
    b = to_fhir_bundle(a, ruleset=rs)
    kinds = [e["resource"]["resourceType"] for e in b["entry"]]
    assert kinds == ["GuidanceResponse", "Parameters", "Provenance"]
    guidance = entries(b, "GuidanceResponse")[0]
    assert guidance["status"] == "success"
    assert guidance["moduleCanonical"] == f"{CANONICAL}|1.0.0"
    assert guidance["subject"] == {"reference": "Patient/h1"}
    assert guidance["occurrenceDateTime"] == "2026-03-01T00:00:00Z"
    assert "dataRequirement" not in guidance and "result" not in guidance


def test_red_flags_map_to_issues_referral_plan(rs: cdss.Ruleset) -> None:
    a = assess(rs, red_flags())
    b = to_fhir_bundle(a, ruleset=rs)
    urls = {e["fullUrl"]: e["resource"] for e in b["entry"]}

    issues = {i["code"]["coding"][0]["code"]: i for i in entries(b, "DetectedIssue")}
    assert set(issues) == {f.code for f in a.flags}
    cauda = issues["cauda-equina-red-flags"]
    assert cauda["severity"] == "high"  # critical maps to high
    flag = a.flag("cauda-equina-red-flags")
    assert flag is not None
    assert cauda["detail"] == " ".join(flag.rationale.split())
    assert cauda["patient"] == {"reference": "Patient/r1"}
    assert {"reference": "Observation/s1"} in cauda["implicated"]
    assert cauda["evidence"][0]["detail"] == [{"reference": "Observation/s1"}]
    assert issues["hypokalemia"]["severity"] == "moderate"
    assert issues["hypokalemia"]["evidence"][0]["detail"] == [{"reference": "Observation/k1"}]

    (referral,) = entries(b, "ServiceRequest")
    assert (referral["status"], referral["intent"], referral["priority"]) == \
        ("draft", "proposal", "urgent")
    assert referral["code"]["coding"][0]["code"] == "urgent-spinal-assessment"
    assert referral["subject"] == {"reference": "Patient/r1"}
    # the referral points at the DetectedIssue of the rule that made it
    linked = [urls[r["reference"]] for r in referral["supportingInfo"]
              if r["reference"].startswith("urn:uuid:")]
    assert [r["code"]["coding"][0]["code"] for r in linked] == ["cauda-equina-red-flags"]

    (plan,) = entries(b, "CarePlan")
    assert (plan["status"], plan["intent"]) == ("draft", "proposal")
    assert [act["detail"]["description"] for act in plan["activity"]] == \
        [" ".join(item.text.split()) for item in a.plan]
    # withheld exercise advice is never an activity
    codes = [act["detail"]["code"]["coding"][0]["code"] for act in plan["activity"]]
    assert not {s.code for s in a.suppressed} & set(codes)
    assert len(plan["note"]) == len(a.suppressed) > 0

    guidance = entries(b, "GuidanceResponse")[0]
    assert urls[guidance["result"]["reference"]] is plan
    outcome = urls[guidance["evaluationMessage"][0]["reference"]]
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Observation/k2" in outcome["issue"][0]["diagnostics"]


def test_data_requests_make_guidance_data_required(rs: cdss.Ruleset) -> None:
    a = assess(rs, data_requests())
    b = to_fhir_bundle(a, ruleset=rs)
    guidance = entries(b, "GuidanceResponse")[0]
    assert guidance["status"] == "data-required"
    wanted = {(f["code"][0]["system"], f["code"][0]["code"])
              for req in guidance["dataRequirement"] for f in req["codeFilter"]}
    assert wanted == {("http://loinc.org", d.loinc) for d in a.data_requests}
    assert ("http://loinc.org", "2823-3") in wanted
    assert all(req["type"] == "Observation" for req in guidance["dataRequirement"])
    lookbacks = {req["dateFilter"][0]["valueDuration"]["value"]
                 for req in guidance["dataRequirement"]}
    assert lookbacks == {90}


def test_output_parameters_carry_the_whole_assessment(rs: cdss.Ruleset) -> None:
    a = assess(rs, red_flags())
    b = to_fhir_bundle(a, ruleset=rs)
    urls = {e["fullUrl"]: e["resource"] for e in b["entry"]}
    params = urls[entries(b, "GuidanceResponse")[0]["outputParameters"]["reference"]]
    assert params["resourceType"] == "Parameters"
    by_name: dict[str, list[dict[str, Any]]] = {}
    for p in params["parameter"]:
        by_name.setdefault(p["name"], []).append(p)
    assert by_name["ruleset"][0]["valueString"] == SPEC
    assert by_name["rulesetSha256"][0]["valueString"] == rs.sha256
    assert len(by_name["flag"]) == len(a.flags)
    attached = by_name["assessment"][0]["valueAttachment"]
    assert base64.b64decode(attached["data"]) == a.to_json()


def test_provenance_names_the_ruleset_identity(rs: cdss.Ruleset) -> None:
    a = assess(rs, red_flags())
    b = to_fhir_bundle(a, ruleset=rs)
    (prov,) = entries(b, "Provenance")
    who = prov["agent"][0]["who"]
    assert who["identifier"] == {"system": RULESET_IDENTIFIER_SYSTEM, "value": SPEC}
    assert rs.sha256 in who["display"]
    hashes = [e["what"]["identifier"]["value"] for e in prov["entity"]
              if "identifier" in e["what"]]
    assert hashes == [rs.sha256]
    assert prov["entity"][0]["what"]["identifier"]["system"] == RULESET_SHA256_SYSTEM
    sources = {e["what"]["reference"] for e in prov["entity"] if "reference" in e["what"]}
    assert {"Observation/s1", "Observation/k1"} <= sources
    others = {e["fullUrl"] for e in b["entry"] if e["resource"] is not prov}
    assert {t["reference"] for t in prov["target"]} == others
    assert prov["recorded"] == "2026-03-01T00:00:00Z"
    assert prov["policy"] == [f"{CANONICAL}|1.0.0"]


@pytest.mark.parametrize(("severity", "expected"),
                         [("critical", "high"), ("high", "high"), ("moderate", "moderate"),
                          ("low", "low")])
def test_severity_mapping(rs: cdss.Ruleset, severity: str, expected: str) -> None:
    a = assess(rs, red_flags())
    flag = a.flags[0].model_copy(update={"severity": severity})
    b = to_fhir_bundle(a.model_copy(update={"flags": [flag]}), ruleset=rs)
    (issue,) = entries(b, "DetectedIssue")
    assert issue["severity"] == expected


def test_deterministic(rs: cdss.Ruleset) -> None:
    first = to_fhir_bundle(assess(rs, red_flags()), ruleset=rs)
    again = to_fhir_bundle(assess(rs, red_flags()), ruleset=rs)
    assert orjson.dumps(first) == orjson.dumps(again)
    other = to_fhir_bundle(assess(rs, data_requests()), ruleset=rs)
    assert not {e["fullUrl"] for e in first["entry"]} & {e["fullUrl"] for e in other["entry"]}


def test_builtin_ruleset_found_when_not_given(rs: cdss.Ruleset) -> None:
    a = assess(rs, healthy())
    assert to_fhir_bundle(a) == to_fhir_bundle(a, ruleset=rs)


def test_ruleset_without_canonical_url(mini: cdss.Ruleset) -> None:
    record = [patient(), finding("c1", "leg-cramps"),
              lab("k1", "2823-3", 3.0, "mmol/L", when="2026-02-20")]
    a = cdss.evaluate(record, ruleset=mini, as_of=AS_OF)
    b = to_fhir_bundle(a, ruleset=mini)
    validate_bundle(b, external=input_refs(record))
    guidance = entries(b, "GuidanceResponse")[0]
    assert "moduleCanonical" not in guidance
    assert guidance["moduleCodeableConcept"]["coding"][0]["code"] == "mini@1.0.0"
    assert "policy" not in entries(b, "Provenance")[0]


def test_ruleset_that_did_not_make_the_assessment_is_refused(
        rs: cdss.Ruleset, mini: cdss.Ruleset) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(SPEC)):
        to_fhir_bundle(assess(rs, healthy()), ruleset=mini)
    with pytest.raises(InvalidArgument):
        to_fhir_bundle({"not": "an assessment"})  # type: ignore[arg-type]


def test_validate_bundle_catches_what_it_should(rs: cdss.Ruleset) -> None:
    b = to_fhir_bundle(assess(rs, red_flags()), ruleset=rs)
    dangling = json.loads(json.dumps(b))
    dangling["entry"][0]["resource"]["outputParameters"]["reference"] = \
        "urn:uuid:00000000-0000-5000-8000-000000000000"
    with pytest.raises(FhirOutputError, match="names no entry"):
        validate_bundle(dangling)
    invalid = json.loads(json.dumps(b))
    # fhir.resources checks cardinality, types and dates (not code values): drop a 1..1
    del invalid["entry"][0]["resource"]["status"]
    with pytest.raises(FhirOutputError, match="not valid FHIR R4") as caught:
        validate_bundle(invalid)
    assert isinstance(caught.value, CDSSError)
    with pytest.raises(FhirOutputError, match="not one of the patient's resources"):
        validate_bundle(b, external={"Patient/r1"})


def test_example_patient(rs: cdss.Ruleset) -> None:
    path = ROOT / "examples" / "patients"
    for file in sorted(path.glob("*.json")):
        a = cdss.evaluate(file.read_bytes(), ruleset=rs, as_of=AS_OF)
        validate_bundle(to_fhir_bundle(a, ruleset=rs))


def test_a_site_copy_of_a_ruleset_keeps_its_canonical_url(tmp_path: Path) -> None:
    """The Bundle names the module by the canonical URL of the ruleset that made
    the Assessment, even when that ruleset is not the built-in one (a site's
    copy with other content once gave a thinner Bundle, silently)."""
    import shutil

    from cdss.rulesets import builtin_folder, load_ruleset_file

    folder = tmp_path / "site" / "plantar-cramps"
    shutil.copytree(builtin_folder() / "plantar-cramps", folder,
                    ignore=shutil.ignore_patterns("cases"))
    text = (folder / "1.0.0.yaml").read_text(encoding="utf-8")
    (folder / "1.0.0.yaml").write_text(text.replace("title:", "title: Site", 1), encoding="utf-8")
    site = load_ruleset_file(folder / "1.0.0.yaml")
    assert site.sha256 != cdss.load_ruleset(SPEC).sha256
    a = assess(site, data_requests())
    guidance = entries(to_fhir_bundle(a), "GuidanceResponse")[0]
    assert guidance["moduleCanonical"] == f"{CANONICAL}|1.0.0"
    assert guidance["dataRequirement"][0]["dateFilter"]
