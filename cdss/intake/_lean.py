"""Lean intake: pydantic schemas of only the FHIR fields the facts read.

Strict intake validates every resource with the full fhir.resources models
(about 9k Observations per second, measured). A cohort screen reads millions
of resources, and the facts read only a few fields of each, so ``lean`` mode
validates just those fields, in pydantic-core's Rust code: each resource the
facts can use is one ``validate_python`` call on the record orjson parsed once
(the reference path validates the whole record in one ``validate_json`` call
from its bytes; measured slower, it also validated the resources no rule reads).

The schemas are ``TypedDict`` types validated by pydantic ``TypeAdapter``\\ s
rather than ``BaseModel`` classes because the facts read plain JSON mappings:
a TypedDict validates straight into a dict holding only the declared keys
(unknown keys are dropped), while a model would need a ``model_dump`` copy
that halved the throughput when measured. Keys absent in the input stay
absent (every TypedDict here is ``total=False`` with only the keys FHIR and
the facts require marked ``Required``), so "a field was not sent" still reads
as missing, exactly as in strict mode.

The fields and their types follow what :mod:`cdss.facts` and
:mod:`cdss.intake._strict` read; a test checks that both modes give the same facts on
generated valid records. Values keep their JSON types where the facts look at
them (a quantity's value stays a JSON number, dates stay text and are checked
against the FHIR regular expressions). JSON that FHIR does not allow (a
number sent as text, ``"true"`` as a boolean, ``null``) is refused. Resource
types the facts do not use are checked against the list of R4 and R4B
resource types and otherwise skipped, as in strict mode.

Errors are :class:`~cdss.errors.InputError` naming the resource type, id and
field. On any validation failure the record is read again the slow way
(orjson, then each resource on its own, in input order) so that the error
names the first bad resource, as strict mode does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, Field, StrictBool, TypeAdapter, ValidationError
from typing_extensions import Required, TypedDict

from cdss.errors import InputError
from cdss.intake._shapes import record_entries

__all__ = [
    "RESOURCE_TYPES",
    "AllergyIntolerance",
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Patient",
    "entries",
    "is_resource_type",
    "validate_resource",
]

_NAMES = """
Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance
Appointment AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure
Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Citation
Claim ClaimResponse ClinicalImpression ClinicalUseDefinition CodeSystem Communication
CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent Contract
Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device
DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest
DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest EnrollmentResponse
EpisodeOfCare EventDefinition Evidence EvidenceReport EvidenceVariable ExampleScenario
ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse
HealthcareService ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation
ImplementationGuide Ingredient InsurancePlan Invoice Library Linkage List Location
ManufacturedItemDefinition Measure MeasureReport Media Medication MedicationAdministration
MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductDefinition
MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction
MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
MedicinalProductUndesirableEffect MessageDefinition MessageHeader MolecularSequence NamingSystem
NutritionOrder NutritionProduct Observation ObservationDefinition OperationDefinition
OperationOutcome Organization OrganizationAffiliation PackagedProductDefinition Parameters Patient
PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson RequestGroup
ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
StructureDefinition StructureMap Subscription SubscriptionStatus SubscriptionTopic Substance
SubstanceDefinition SubstanceNucleicAcid SubstancePolymer SubstanceProtein
SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery
SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
VisionPrescription
"""
#: Resource types of FHIR R4 (4.0.1) and R4B (4.3.0): a type outside this set
#: is not a resource, and a record holding one is refused.
RESOURCE_TYPES = frozenset(_NAMES.split())

# FHIR R4 primitive regular expressions (https://hl7.org/fhir/R4/datatypes.html).
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE_RE = rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
_DATETIME_RE = (rf"^{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
                rf"(T{_TIME}{_ZONE})?)?)?$")
_INSTANT_RE = rf"^{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{_TIME}{_ZONE}$"
_ID_RE = r"^[A-Za-z0-9\-.]{1,64}$"


def _calendar_date(text: str) -> str:
    """Refuse a date the regular expression lets through but the calendar does
    not have (``1970-02-30``): the facts would otherwise fail on it later."""
    if len(text) >= 10:
        date.fromisoformat(text[:10])
    return text


_Str = Annotated[str, Field(min_length=1)]
_Id = Annotated[str, Field(pattern=_ID_RE)]
_Date = Annotated[str, Field(pattern=_DATE_RE), AfterValidator(_calendar_date)]
_BirthDate = _Date
_DateTime = Annotated[str, Field(pattern=_DATETIME_RE), AfterValidator(_calendar_date)]
_Instant = Annotated[str, Field(pattern=_INSTANT_RE), AfterValidator(_calendar_date)]
_Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Coding(TypedDict, total=False):
    """A code in a code system (``display`` kept for text fall-backs)."""

    system: _Str
    code: _Str
    display: _Str


class CodeableConcept(TypedDict, total=False):
    """Codings plus text."""

    coding: list[Coding]
    text: _Str


class Reference(TypedDict, total=False):
    """A reference; only ``reference`` says which patient."""

    reference: _Str


class Quantity(TypedDict, total=False):
    """A measured value and its unit (UCUM ``code`` when ``system`` is UCUM)."""

    value: _Number
    comparator: _Str
    unit: _Str
    system: _Str
    code: _Str


class Period(TypedDict, total=False):
    start: _DateTime
    end: _DateTime


class ObservationComponent(TypedDict, total=False):
    """A component; the facts read boolean qualifiers such as ``nocturnal``."""

    code: Required[CodeableConcept]
    valueBoolean: StrictBool


class Patient(TypedDict, total=False):
    """Patient: age and sex."""

    resourceType: Required[Literal["Patient"]]
    id: _Id
    birthDate: _BirthDate
    gender: _Str


class Observation(TypedDict, total=False):
    """Observation: a lab value or a finding."""

    resourceType: Required[Literal["Observation"]]
    id: _Id
    status: Required[_Str]
    code: Required[CodeableConcept]
    subject: Reference
    effectiveDateTime: _DateTime
    effectiveInstant: _Instant
    effectivePeriod: Period
    issued: _Instant
    valueQuantity: Quantity
    valueBoolean: StrictBool
    valueCodeableConcept: CodeableConcept
    dataAbsentReason: CodeableConcept
    bodySite: CodeableConcept
    component: list[ObservationComponent]


class Condition(TypedDict, total=False):
    """Condition: a diagnosis, or a finding coded as a problem."""

    resourceType: Required[Literal["Condition"]]
    id: _Id
    code: CodeableConcept
    subject: Required[Reference]
    clinicalStatus: CodeableConcept
    verificationStatus: CodeableConcept
    bodySite: list[CodeableConcept]
    onsetDateTime: _DateTime
    recordedDate: _DateTime


class MedicationRequest(TypedDict, total=False):
    """MedicationRequest: a medication class when active."""

    resourceType: Required[Literal["MedicationRequest"]]
    id: _Id
    status: Required[_Str]
    medicationCodeableConcept: CodeableConcept
    subject: Required[Reference]


class MedicationStatement(TypedDict, total=False):
    """MedicationStatement: a medication class when active."""

    resourceType: Required[Literal["MedicationStatement"]]
    id: _Id
    status: Required[_Str]
    medicationCodeableConcept: CodeableConcept
    subject: Required[Reference]


class AllergyReaction(TypedDict, total=False):
    substance: CodeableConcept


class AllergyIntolerance(TypedDict, total=False):
    """AllergyIntolerance: an allergy class when active."""

    resourceType: Required[Literal["AllergyIntolerance"]]
    id: _Id
    code: CodeableConcept
    patient: Required[Reference]
    clinicalStatus: CodeableConcept
    verificationStatus: CodeableConcept
    reaction: list[AllergyReaction]


#: The other resource types: only the type is kept (they are counted, not read).
_OtherType = Literal[tuple(sorted(RESOURCE_TYPES - {  # type: ignore[valid-type]
    "Patient", "Observation", "Condition", "MedicationRequest", "MedicationStatement",
    "AllergyIntolerance", "Bundle"}))]


class _Other(TypedDict, total=False):
    resourceType: Required[_OtherType]  # type: ignore[valid-type]


_USED: dict[str, Any] = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
    "AllergyIntolerance": AllergyIntolerance,
}
_ADAPTERS = {name: TypeAdapter(schema) for name, schema in _USED.items()}

_Resource = Annotated[
    Patient | Observation | Condition | MedicationRequest | MedicationStatement
    | AllergyIntolerance | _Other,
    Field(discriminator="resourceType"),
]


class _Entry(TypedDict, total=False):
    fullUrl: str
    resource: Required[_Resource]


class _Bundle(TypedDict, total=False):
    resourceType: Required[Literal["Bundle"]]
    type: Required[Literal["collection", "searchset", "transaction", "batch", "document"]]
    entry: list[_Entry]


# A whole record in one call: a Bundle, one resource, or a list of resources.
_DOCUMENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[
        _Bundle | Patient | Observation | Condition | MedicationRequest | MedicationStatement
        | AllergyIntolerance | _Other,
        Field(discriminator="resourceType"),
    ]
    | list[_Resource]
)

_TAG = re.compile(r"^[A-Za-z]+\[.*\]$|^function-")


def is_resource_type(name: str) -> bool:
    """True for a FHIR R4/R4B resource type name."""
    return name in RESOURCE_TYPES


def validate_resource(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one resource of a type the facts use; return the lean dict.

    Raises :class:`InputError` naming the resource type, id and field.
    """
    rtype = str(resource.get("resourceType"))
    try:
        return dict(_ADAPTERS[rtype].validate_python(resource))
    except ValidationError as exc:
        raise _input_error(exc, resource, rtype) from None


_PATTERN_NAMES = {_DATE_RE: "date", _DATETIME_RE: "dateTime", _INSTANT_RE: "instant",
                  _ID_RE: "id"}


def _input_error(exc: ValidationError, resource: Mapping[str, Any], rtype: str) -> InputError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and _TAG.match(p)))
    message = err["msg"]
    if err["type"] == "string_pattern_mismatch":
        kind = _PATTERN_NAMES.get(str((err.get("ctx") or {}).get("pattern")), "value")
        message = f"{err['input']!r} is not a valid FHIR {kind}"
    rid = resource.get("id")
    return InputError(
        message,
        resource_type=rtype,
        resource_id=rid if isinstance(rid, str) or rid is None else str(rid),
        field=loc or None,
    )


def entries(record: Any, *, whole: bool = True) -> Iterator[tuple[int, Any, str | None, bool]]:
    """Yield ``(position, resource, fullUrl, validated)`` of a record.

    The whole record is validated in one pass (JSON text or bytes straight
    from the bytes); then every resource of a type the facts use arrives as a
    lean dict (``validated``). If anything is wrong, the record is read again
    resource by resource, unvalidated, so that intake validates each alone:
    its error names the resource, and one bad resource can be left out
    (malformed JSON is reported as such). ``whole=False`` goes that way at
    once (a record known to hold a resource that breaks intake's bounds).
    """
    if not whole:
        yield from _slow_entries(record)
        return
    try:
        if isinstance(record, (bytes, bytearray, memoryview, str)):
            doc = _DOCUMENT.validate_json(record if not isinstance(record, memoryview)
                                          else bytes(record))
        elif isinstance(record, (Mapping, list)):
            doc = _DOCUMENT.validate_python(record)
        else:
            doc = None
    except ValidationError:
        doc = None
    if doc is None:
        yield from _slow_entries(record)
        return
    if isinstance(doc, list):
        for i, resource in enumerate(doc):
            yield i, resource, None, True
    elif doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc.get("entry") or ()):
            yield i, entry["resource"], entry.get("fullUrl"), True
    else:
        yield 0, doc, None, True


def _slow_entries(record: Any) -> Iterator[tuple[int, Any, str | None, bool]]:
    if isinstance(record, memoryview):
        record = bytes(record)
    if isinstance(record, (bytes, bytearray, str)):
        try:
            record = orjson.loads(record)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc}") from None
    check_bundle_type(record)
    for pos, resource, full_url in record_entries(record):
        yield pos, resource, full_url, False


def check_bundle_type(record: Any) -> None:
    """Refuse a Bundle whose type is a JSON array or object (strict intake's
    own look at the type fails on it otherwise)."""
    if (isinstance(record, Mapping) and record.get("resourceType") == "Bundle"
            and not isinstance(record.get("type"), (str, type(None)))):
        rid = record.get("id")
        raise InputError(f"Bundle type {record.get('type')!r} is not a code",
                         resource_type="Bundle", resource_id=rid if isinstance(rid, str) else None,
                         field="type")
