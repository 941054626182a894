"""An Assessment as FHIR R4 resources, for systems that store decision support.

:func:`to_fhir_bundle` turns one :class:`~cdss.assessment.Assessment` into a
Bundle of type ``collection`` (plain JSON, R4; every resource validates with
fhir.resources R4B):

``GuidanceResponse``
    the evaluation itself: ``moduleCanonical`` is the ruleset's canonical URL
    with ``|version``; ``status`` is ``success``, or ``data-required`` when the
    ruleset asked for labs, which are then listed in ``dataRequirement`` with
    their LOINC code and lookback; ``outputParameters`` points at a
    ``Parameters`` resource summarising the outputs (and carrying the full
    Assessment JSON, so nothing of the explanation is lost); ``result`` points
    at the CarePlan; data-quality notes become an ``OperationOutcome`` in
    ``evaluationMessage``.
``DetectedIssue``
    one per flag: code, severity (critical and high map to ``high``; the
    flag's own severity and rule are extensions: :data:`SEVERITY_EXTENSION`,
    :data:`RULE_EXTENSION`), the
    rationale as ``detail``, and the evidence as references to the patient's
    own resources (``Observation/o1``).
``ServiceRequest``
    one per referral: a draft ``proposal``, priority ``urgent`` or ``routine``,
    its rule as an extension.
``CarePlan``
    a draft ``proposal`` holding the plan items as activities, in plan order
    (each with its rules as extensions).
    Suppressed items are listed in ``note`` and never as activities, so that a
    system that ignores ``doNotPerform`` cannot show withheld advice.
``Provenance``
    the ruleset identity (``id@version`` and sha256) as agent and entity, the
    patient data as entities, and every other resource as target.

Output is deterministic: resource ids and ``urn:uuid:`` fullUrls are uuid5 of
the Assessment's canonical JSON and the resource's role, timestamps are the
Assessment's ``as_of``, so the same Assessment gives the same Bundle. Every
reference inside the Bundle is either a ``urn:uuid:`` of one of its entries or
a relative reference to the patient's own resources (``Patient/p1``,
``Observation/o1``); :func:`validate_bundle` checks both properties.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

from cdss.assessment import Assessment, DataRequest, Evidence, Flag, PlanItem, Referral
from cdss.errors import FhirOutputError, InvalidArgument
from cdss.rulesets import Ruleset
from cdss.terminology import LOINC, SNOMED, UCUM

__all__ = [
    "CODE_SYSTEM_BASE",
    "NAMESPACE",
    "RULESET_IDENTIFIER_SYSTEM",
    "RULESET_SHA256_SYSTEM",
    "RULE_EXTENSION",
    "SEVERITY_EXTENSION",
    "care_plan",
    "code_system",
    "fhir_instant",
    "lab_order_request",
    "patient_reference",
    "referral_request",
    "source_references",
    "to_fhir_bundle",
    "validate_bundle",
]

#: Namespace of every uuid5 cdss derives (resource ids, card and suggestion uuids).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cdss.dev/fhir")
#: Base of the code systems of a ruleset's own codes (flags, referrals, plan items).
CODE_SYSTEM_BASE = "https://cdss.dev/fhir/CodeSystem"
#: Identifier system of a ruleset's ``id@version``.
RULESET_IDENTIFIER_SYSTEM = "https://cdss.dev/fhir/NamingSystem/ruleset"
#: Identifier system of a ruleset's content hash (sha256, hex).
RULESET_SHA256_SYSTEM = "https://cdss.dev/fhir/NamingSystem/ruleset-sha256"

#: Extension (valueString) naming the ruleset rule behind a DetectedIssue, a
#: referral's ServiceRequest or a CarePlan activity (one per rule).
RULE_EXTENSION = "https://cdss.dev/fhir/StructureDefinition/rule"
#: Extension (valueCode) of a DetectedIssue: the flag's own severity
#: (``critical``, ``high``, ``moderate``, ``low``), which FHIR's three levels
#: cannot all hold.
SEVERITY_EXTENSION = "https://cdss.dev/fhir/StructureDefinition/flag-severity"

_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
#: SNOMED CT 108252007 |Laboratory procedure|, the usual ServiceRequest category of a lab order.
_LAB_CATEGORY = {"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}
_DETECTED_ISSUE_SEVERITY = {"critical": "high", "high": "high", "moderate": "moderate",
                            "low": "low"}
#: A relative literal reference ``Type/id`` (FHIR id syntax).
_RELATIVE_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


# --------------------------------------------------------------------------- #
# Small helpers shared with cdss.outputs.cds_hooks
# --------------------------------------------------------------------------- #
def fhir_instant(when: datetime) -> str:
    """``when`` as a FHIR instant in UTC (``2026-03-01T00:00:00Z``; microseconds kept)."""
    aware = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    text = aware.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def code_system(ruleset_id: str, kind: str) -> str:
    """The code system of a ruleset's own codes of one ``kind`` (``flag``,
    ``referral``, ``plan-item``): codes are scoped to their ruleset, so two
    rulesets may use the same code with different meanings."""
    return f"{CODE_SYSTEM_BASE}/{ruleset_id}/{kind}"


def patient_reference(assessment: Assessment) -> dict[str, Any]:
    """The Reference to the assessed patient; a display-only Reference when the
    record named no patient (FHIR requires a subject on several resources)."""
    if assessment.patient and _RELATIVE_REF.match(assessment.patient):
        return {"reference": assessment.patient}
    return {"display": assessment.patient or "unidentified patient"}


def source_references(evidence: Iterable[Evidence]) -> list[dict[str, str]]:
    """References to the patient's resources behind ``evidence``, unique, in
    order. Sources without a usable id (``Observation/?``) are left out: a
    reference must point at something."""
    seen: list[str] = []
    for ev in evidence:
        for src in ev.sources:
            if _RELATIVE_REF.match(src) and src not in seen:
                seen.append(src)
    return [{"reference": s} for s in seen]


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _text(value: str) -> str:
    """Folded YAML text with its line breaks and runs of spaces collapsed."""
    return " ".join(value.split())


def _module_canonical(url: str | None, assessment: Assessment) -> str | None:
    return f"{url}|{assessment.ruleset.version}" if url else None


# --------------------------------------------------------------------------- #
# Resource builders (no ids: the Bundle assigns them, CDS Hooks cards create them)
# --------------------------------------------------------------------------- #
def referral_request(referral: Referral, assessment: Assessment) -> dict[str, Any]:
    """A draft ServiceRequest proposing ``referral`` for the assessed patient."""
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": referral.urgency,
        "code": {
            "coding": [_coding(code_system(assessment.ruleset.id, "referral"), referral.code,
                               referral.display)],
            "text": referral.display,
        },
        "subject": patient_reference(assessment),
        "authoredOn": fhir_instant(assessment.as_of),
        "reasonCode": [{"text": _text(referral.rationale)}],
        "note": [{"text": f"{assessment.ruleset.spec} rule {referral.rule_id}; "
                          f"{referral.citation.title}, section "
                          f"\"{referral.citation.section}\""}],
    }
    support = source_references(referral.evidence)
    if support:
        out["supportingInfo"] = support
    return out


def lab_order_request(request: DataRequest, assessment: Assessment) -> dict[str, Any] | None:
    """A draft ServiceRequest proposing the lab a data request asks for;
    ``None`` when the ruleset names no LOINC code to order."""
    if not request.loinc:
        return None
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": "routine",
        "category": [{"coding": [dict(_LAB_CATEGORY)]}],
        "code": {"coding": [_coding(LOINC, request.loinc, request.display)],
                 "text": request.display},
        "subject": patient_reference(assessment),
        "authoredOn": fhir_instant(assessment.as_of),
        "reasonCode": [{"text": _text(request.reason)}],
    }


def _rule_extensions(rule_ids: Iterable[str]) -> list[dict[str, str]]:
    return [{"url": RULE_EXTENSION, "valueString": rule} for rule in rule_ids]


def _activity(item: PlanItem, ruleset_id: str) -> dict[str, Any]:
    reasons = [{"text": _text(item.why)}] + [{"text": _text(e)} for e in item.emphasis]
    out: dict[str, Any] = {"extension": _rule_extensions(item.rule_ids)} if item.rule_ids \
        else {}
    return {
        **out,
        "detail": {
            "code": {"coding": [_coding(code_system(ruleset_id, "plan-item"), item.code)]},
            "reasonCode": reasons,
            "status": "not-started",
            "description": _text(item.text),
        }
    }


def care_plan(assessment: Assessment) -> dict[str, Any] | None:
    """A draft CarePlan proposal holding the plan items as activities, in
    order; suppressed items go in ``note``. ``None`` when the plan is empty."""
    if not assessment.plan:
        return None
    out: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": "draft",
        "intent": "proposal",
        "title": "Prevention plan",
        "description": f"Tailored prevention plan from ruleset {assessment.ruleset.spec} "
                       f"({_text(assessment.ruleset.title)}).",
        "subject": patient_reference(assessment),
        "created": fhir_instant(assessment.as_of),
        "activity": [_activity(item, assessment.ruleset.id) for item in assessment.plan],
    }
    if assessment.suppressed:
        out["note"] = [{"text": f"Not advised now: {_text(s.text)} Reason: {_text(s.reason)} "
                                f"(rule {s.rule_id})"} for s in assessment.suppressed]
    return out


# --------------------------------------------------------------------------- #
# The Bundle
# --------------------------------------------------------------------------- #
class _Ids:
    """Deterministic ids: uuid5 of the Assessment's content and a role."""

    def __init__(self, assessment: Assessment) -> None:
        self.seed = hashlib.sha256(assessment.to_json()).hexdigest()

    def __call__(self, role: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.seed}/{role}"))


def _urn(rid: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{rid}"}


def _detected_issue(flag: Flag, assessment: Assessment, rid: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "id": rid,
        "extension": [*_rule_extensions([flag.rule_id]),
                      {"url": SEVERITY_EXTENSION, "valueCode": flag.severity}],
        "status": "preliminary",
        "code": {"coding": [_coding(code_system(assessment.ruleset.id, "flag"), flag.code,
                                    flag.display)],
                 "text": flag.display},
        "severity": _DETECTED_ISSUE_SEVERITY[flag.severity],
        "patient": patient_reference(assessment),
        "identifiedDateTime": fhir_instant(assessment.as_of),
        "detail": _text(flag.rationale),
    }
    implicated = source_references(flag.evidence)
    if implicated:
        out["implicated"] = implicated
    evidence = []
    for ev in flag.evidence:
        item: dict[str, Any] = {"code": [{"text": _evidence_text(ev)}]}
        refs = source_references([ev])
        if refs:
            item["detail"] = refs
        evidence.append(item)
    if evidence:
        out["evidence"] = evidence
    if flag.citation.url:
        out["reference"] = flag.citation.url
    return out


def _evidence_text(ev: Evidence) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in sorted(ev.values.items()))
    return f"{ev.fact} ({ev.kind}{': ' + shown if shown else ''})"


def _data_requirement(request: DataRequest, lookback: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Observation"}
    if request.loinc:
        out["codeFilter"] = [{"path": "code",
                              "code": [_coding(LOINC, request.loinc, request.display)]}]
    if lookback:
        # A Duration means "within this long before now" (DataRequirement.dateFilter).
        out["dateFilter"] = [{"path": "effective", "valueDuration": {
            "value": lookback, "unit": "days", "system": UCUM, "code": "d"}}]
    return out


def _operation_outcome(assessment: Assessment, rid: str) -> dict[str, Any]:
    issues = []
    for note in assessment.data_quality:
        where = f" ({note.resource})" if note.resource else ""
        issues.append({"severity": "information", "code": "informational",
                       "details": {"text": note.message},
                       "diagnostics": f"{note.code}{where}"})
    return {"resourceType": "OperationOutcome", "id": rid, "issue": issues}


def _parameters(assessment: Assessment, rid: str, refs: Mapping[str, str],
                care_plan_id: str | None) -> dict[str, Any]:
    rs = assessment.ruleset
    params: list[dict[str, Any]] = [
        {"name": "ruleset", "valueString": rs.spec},
        {"name": "rulesetSha256", "valueString": rs.sha256},
        {"name": "engine", "valueString": assessment.engine},
        {"name": "asOf", "valueDateTime": fhir_instant(assessment.as_of)},
    ]
    for flag in assessment.flags:
        params.append({"name": "flag", "part": [
            {"name": "code", "valueCoding": _coding(code_system(rs.id, "flag"), flag.code,
                                                    flag.display)},
            {"name": "severity", "valueCode": flag.severity},
            {"name": "rule", "valueString": flag.rule_id},
            {"name": "detectedIssue", "valueReference": _urn(refs[f"flag/{flag.code}"])},
        ]})
    for ref in assessment.referrals:
        params.append({"name": "referral", "part": [
            {"name": "code", "valueCoding": _coding(code_system(rs.id, "referral"), ref.code,
                                                    ref.display)},
            {"name": "urgency", "valueCode": ref.urgency},
            {"name": "rule", "valueString": ref.rule_id},
            {"name": "serviceRequest", "valueReference": _urn(refs[f"referral/{ref.code}"])},
        ]})
    for req in assessment.data_requests:
        part: list[dict[str, Any]] = [{"name": "analyte", "valueString": req.analyte}]
        if req.loinc:
            part.append({"name": "code", "valueCoding": _coding(LOINC, req.loinc, req.display)})
        part += [{"name": "reason", "valueString": _text(req.reason)},
                 {"name": "rule", "valueString": req.rule_id}]
        params.append({"name": "dataRequest", "part": part})
    if care_plan_id:
        params.append({"name": "carePlan", "valueReference": _urn(care_plan_id)})
    params.append({"name": "assessment", "valueAttachment": {
        "contentType": "application/json",
        "data": base64.b64encode(assessment.to_json()).decode("ascii"),
        "title": "The complete cdss Assessment (explanations and trace)",
    }})
    return {"resourceType": "Parameters", "id": rid, "parameter": params}


def _check_ruleset(assessment: Assessment, ruleset: Ruleset | None) -> None:
    rs = assessment.ruleset
    if ruleset is None:
        return
    if not isinstance(ruleset, Ruleset):
        raise InvalidArgument(f"ruleset must be a loaded Ruleset, not {ruleset!r}")
    if (ruleset.id, ruleset.version, ruleset.sha256) != (rs.id, rs.version, rs.sha256):
        raise InvalidArgument(
            f"the assessment was made with {rs.spec} (sha256 {rs.sha256[:12]}), not with "
            f"{ruleset.spec} (sha256 {ruleset.sha256[:12]})")


def _lookback(request: DataRequest, ruleset: Ruleset | None) -> int | None:
    if ruleset is None:
        return request.lookback_days
    analyte = ruleset.valuesets.analytes.get(request.analyte)
    return analyte.lookback_days if analyte else None


def to_fhir_bundle(assessment: Assessment, *, ruleset: Ruleset | None = None) -> dict[str, Any]:
    """``assessment`` as an R4 Bundle (type ``collection``) of plain JSON.

    The canonical URL and the lookbacks of data requirements come from the
    Assessment (``assessment.ruleset.url``, ``DataRequest.lookback_days``),
    set where it was made; ``ruleset``, the loaded ruleset the assessment was
    made with, may supply them instead (an Assessment read back from JSON
    lacks them) and must then be that ruleset. Without a canonical URL the
    GuidanceResponse names the module by ``id@version`` only. Deterministic:
    the same Assessment gives the same Bundle.
    """
    if not isinstance(assessment, Assessment):
        raise InvalidArgument(f"assessment must be an Assessment, not {type(assessment).__name__}")
    _check_ruleset(assessment, ruleset)
    url = ruleset.file.canonical_url if ruleset is not None else assessment.ruleset.url
    ids = _Ids(assessment)
    subject = patient_reference(assessment)
    when = fhir_instant(assessment.as_of)
    rs = assessment.ruleset

    refs: dict[str, str] = {f"flag/{f.code}": ids(f"DetectedIssue/{f.code}")
                            for f in assessment.flags}
    refs.update({f"referral/{r.code}": ids(f"ServiceRequest/{r.code}")
                 for r in assessment.referrals})
    resources: list[dict[str, Any]] = []

    guidance_id, params_id = ids("GuidanceResponse"), ids("Parameters")
    plan = care_plan(assessment)
    plan_id = ids("CarePlan") if plan else None
    outcome_id = ids("OperationOutcome") if assessment.data_quality else None
    guidance: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": guidance_id,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{guidance_id}"}],
        "status": "data-required" if assessment.data_requests else "success",
        "subject": subject,
        "occurrenceDateTime": when,
        "outputParameters": _urn(params_id),
    }
    module = _module_canonical(url, assessment)
    if module:
        guidance["moduleCanonical"] = module
    else:
        guidance["moduleCodeableConcept"] = {
            "coding": [_coding(RULESET_IDENTIFIER_SYSTEM, rs.spec, _text(rs.title))],
            "text": rs.spec}
    if plan_id:
        guidance["result"] = _urn(plan_id)
    if outcome_id:
        guidance["evaluationMessage"] = [_urn(outcome_id)]
    if assessment.data_requests:
        guidance["dataRequirement"] = [_data_requirement(d, _lookback(d, ruleset))
                                       for d in assessment.data_requests]
    resources.append(guidance)
    resources.append(_parameters(assessment, params_id, refs, plan_id))
    if outcome_id:
        resources.append(_operation_outcome(assessment, outcome_id))

    for flag in assessment.flags:
        resources.append(_detected_issue(flag, assessment, refs[f"flag/{flag.code}"]))
    for ref in assessment.referrals:
        request = referral_request(ref, assessment)
        request = {"resourceType": "ServiceRequest", "id": refs[f"referral/{ref.code}"],
                   "extension": _rule_extensions([ref.rule_id]),
                   **{k: v for k, v in request.items() if k != "resourceType"}}
        issues = [_urn(refs[f"flag/{f.code}"]) for f in assessment.flags
                  if f.rule_id == ref.rule_id]
        if issues:
            request["supportingInfo"] = issues + request.get("supportingInfo", [])
        resources.append(request)
    if plan is not None and plan_id is not None:
        plan = {"resourceType": "CarePlan", "id": plan_id,
                **{k: v for k, v in plan.items() if k != "resourceType"}}
        if assessment.flags:
            plan["supportingInfo"] = [_urn(refs[f"flag/{f.code}"]) for f in assessment.flags]
        resources.append(plan)

    provenance_id = ids("Provenance")
    entities: list[dict[str, Any]] = [{
        "role": "source",
        "what": {"identifier": {"system": RULESET_SHA256_SYSTEM, "value": rs.sha256},
                 "display": f"ruleset {rs.spec} sha256 {rs.sha256}"},
    }]
    for src in _all_sources(assessment):
        entities.append({"role": "derivation", "what": src})
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [_urn(r["id"]) for r in resources],
        "occurredDateTime": when,
        "recorded": when,
        "activity": {"coding": [_coding(_DATA_OPERATION, "CREATE", "create")]},
        "agent": [{
            "type": {"coding": [_coding(_PARTICIPANT_TYPE, "assembler", "Assembler")]},
            "who": {"type": "Device",
                    "identifier": {"system": RULESET_IDENTIFIER_SYSTEM, "value": rs.spec},
                    "display": f"cdss ruleset {rs.spec} (sha256 {rs.sha256}), "
                               f"{assessment.engine} engine"},
        }],
        "entity": entities,
    }
    if module:
        provenance["policy"] = [module]
    resources.append(provenance)

    return {
        "resourceType": "Bundle",
        "id": ids("Bundle"),
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def _all_sources(assessment: Assessment) -> list[dict[str, str]]:
    evidence: list[Evidence] = []
    for flag in assessment.flags:
        evidence += flag.evidence
    for ref in assessment.referrals:
        evidence += ref.evidence
    return source_references(evidence)


# --------------------------------------------------------------------------- #
# Checking a Bundle
# --------------------------------------------------------------------------- #
def _references(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        ref = node.get("reference")
        # A resource's own ``reference`` (DetectedIssue.reference) is a uri, not a Reference.
        if isinstance(ref, str) and "resourceType" not in node:
            yield ref
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def validate_bundle(bundle: Mapping[str, Any], *,
                    external: Iterable[str] | None = None) -> None:
    """Check ``bundle`` as FHIR R4 (fhir.resources R4B models): the Bundle and
    every entry validate, every ``urn:uuid:`` reference names an entry's
    fullUrl, and every other reference is a relative ``Type/id`` (listed in
    ``external`` when given). Raises :class:`FhirOutputError`."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    def check(resource: Mapping[str, Any], where: str) -> None:
        try:
            get_fhir_model_class(str(resource.get("resourceType"))).model_validate(resource)
        except (KeyError, ValueError, ValidationError) as exc:
            raise FhirOutputError(f"not valid FHIR R4: {exc}", resource=where) from None

    check(bundle, f"Bundle/{bundle.get('id')}")
    entries = bundle.get("entry") or []
    full_urls = {e.get("fullUrl") for e in entries}
    allowed = set(external) if external is not None else None
    for entry in entries:
        res = entry.get("resource") or {}
        where = f"{res.get('resourceType')}/{res.get('id')}"
        check(res, where)
        for ref in _references(res):
            if ref.startswith("urn:uuid:"):
                if ref not in full_urls:
                    raise FhirOutputError(f"reference {ref} names no entry", resource=where)
            elif not _RELATIVE_REF.match(ref):
                raise FhirOutputError(f"reference {ref!r} is neither urn:uuid nor Type/id",
                                      resource=where)
            elif allowed is not None and ref not in allowed:
                raise FhirOutputError(f"reference {ref} is not one of the patient's resources",
                                      resource=where)
