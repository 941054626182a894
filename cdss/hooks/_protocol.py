"""The CDS Hooks protocol, 2.0 and 3.0, as pure functions: no HTTP server here (see
:mod:`cdss.service`); the only network access is the optional fetch from the
CDS client's FHIR server, through a callable that callers may inject.

* :func:`discovery` is the discovery document: per ruleset a ``patient-view``
  service and, when asked, an ``order-select`` and an ``order-sign`` service
  (:func:`hook_services`), with prefetch templates for what the ruleset
  reads. Prefetch tokens may only name context fields
  (``{{context.patientId}}``) and the user ids, and have no date arithmetic,
  so a template cannot say "the last 90 days": patient-view searches carry
  no date, the order hooks ask for the newest results of each lab
  (``_sort=-date&_count=``), and the lookback windows are applied when facts
  are built (a lab older than its lookback counts as missing and is noted).
  With ``version="3.0"`` the FHIRPath token ``{{today() - N days}}`` bounds
  each lab's search by its lookback (:func:`prefetch_templates`), discovery
  says ``version`` and ``hookVersion``, and the SMART v1 or v2 scopes of
  ``fhirAuthorization`` are read (:func:`granted`) before data is fetched.
* :func:`validate_request` turns a request body into a :class:`HookRequest`,
  raising :class:`~cdss.errors.HookRequestError` (with the HTTP ``status`` to
  answer) with a message naming the field.
* :func:`handle_patient_view` assembles the patient's record from
  ``prefetch`` (searchset Bundles or resources), fetches what is missing from
  ``fhirServer`` with the bearer token of ``fhirAuthorization``, and answers
  412 when the data can be had from neither, as the specification says; then
  evaluates and returns ``{"cards": [...]}`` (rendered by
  :func:`cdss.outputs.cds_hooks.cards`).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdss.assessment import Assessment
from cdss.errors import HookRequestError, InputError, InvalidArgument
from cdss.facts import ORDER_TYPES
from cdss.outputs.cds_hooks import cards
from cdss.rulesets import Ruleset

#: The hook every ruleset's first service answers (its id is the ruleset's).
HOOK = "patient-view"
#: The order hooks, answered by the services ``<id>-order-select`` and ``<id>-order-sign``.
ORDER_SELECT = "order-select"
ORDER_SIGN = "order-sign"
#: Every hook a ruleset is served for, in discovery order.
HOOKS = (HOOK, ORDER_SELECT, ORDER_SIGN)
#: How many of the newest results of each lab the order hooks' prefetch asks for.
LAB_COUNT = 20
#: Pages of a search followed at most when fetching from a FHIR server.
MAX_PAGES = 100
_PATIENT_TOKEN = "{{context.patientId}}"
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"

#: The CDS Hooks versions served: 2.0 (2.0.1) and 3.0 (the January 2026 ballot).
V2 = "2.0"
V3 = "3.0"
VERSIONS = (V2, V3)
#: What a 3.0 discovery entry says of the specification it implements (semver).
SPEC_VERSION_3 = "3.0.0"
#: Each hook's ``hookVersion`` as the hooks library 1.0.1 publishes it.
HOOK_VERSIONS = {HOOK: "1.0", ORDER_SELECT: "1.0", ORDER_SIGN: "1.0"}
#: A 3.0 lab template's window starts this many days before the lookback: the
#: client's ``today()`` may be a day ahead of the service's (another time zone).
WINDOW_MARGIN_DAYS = 1
_TODAY_TOKEN = re.compile(r"\{\{\s*today\(\)\s*(?:([+-])\s*(\d{1,5})\s*days?\s*)?\}\}")

def _text(value: str) -> str:
    """Folded YAML text with its line breaks and runs of spaces collapsed."""
    return " ".join(value.split())


#: ``fetch(url, headers) -> parsed JSON``: one GET of a FHIR read or search.
Fetch = Callable[[str, Mapping[str, str]], Any]


# --------------------------------------------------------------------------- #
# The request
# --------------------------------------------------------------------------- #
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FhirAuthorization(_Model):
    """The OAuth 2.0 bearer token a CDS client grants for its FHIR server."""

    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)

    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int = Field(ge=0)
    scope: str
    subject: str
    #: 3.0: the patient a patient-scoped token is restricted to (read by 3.0 calls only).
    patient: Any = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("token_type must be 'Bearer'")
        return "Bearer"

    def __repr__(self) -> str:  # never print the token
        return f"FhirAuthorization(token_type='Bearer', subject={self.subject!r}, ...)"


class HookContext(BaseModel):
    """``context`` of ``patient-view``: the patient (a FHIR id), the user and
    the encounter. Other fields are kept as sent."""

    model_config = ConfigDict(frozen=True, extra="allow")

    patientId: str = Field(pattern=_FHIR_ID)
    userId: str | None = None
    encounterId: str | None = None


class HookRequest(_Model):
    """A CDS Hooks 2.0 service request (``hook``, ``hookInstance``, ``context``,
    optional ``fhirServer``, ``fhirAuthorization`` and ``prefetch``)."""

    hook: str = Field(min_length=1)
    hookInstance: uuid.UUID
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: HookContext
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: dict[str, Any] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must be a base URL without query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _server_with_token(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization is given, so fhirServer is required")
        return self

    @property
    def patient_reference(self) -> str:
        return f"Patient/{self.context.patientId}"


def _loads(body: Any, what: str) -> Any:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        try:
            return orjson.loads(bytes(body) if not isinstance(body, str) else body)
        except orjson.JSONDecodeError as exc:
            raise HookRequestError(f"the {what} is not valid JSON: {exc}") from None
    return body


_Body = TypeVar("_Body", bound=BaseModel)


def _validated(body: Any, model: type[_Body], what: str) -> _Body:
    """Parse a JSON object body and validate it as ``model``; 400 when malformed."""
    data = _loads(body, f"{what} body")
    if not isinstance(data, Mapping):
        raise HookRequestError(f"the {what} body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HookRequestError(_message(exc, what)) from None


def _message(exc: ValidationError, what: str, prefix: str = "") -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "") or what
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return f"invalid {what}: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class OrderContext(BaseModel):
    """``context`` of ``order-sign``: the user, the patient, the encounter
    (optional) and ``draftOrders``, a Bundle of the orders being signed
    (MedicationRequest, ServiceRequest, NutritionOrder, ...), each with status
    ``draft`` and about the context's patient."""

    model_config = ConfigDict(frozen=True, extra="allow")

    userId: str = Field(min_length=1)
    patientId: str = Field(pattern=_FHIR_ID)
    encounterId: str | None = None
    draftOrders: dict[str, Any]

    @field_validator("draftOrders")
    @classmethod
    def _bundle(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("resourceType") != "Bundle":
            raise ValueError("must be a FHIR Bundle")
        entries = value.get("entry")
        if not isinstance(entries, list):
            raise ValueError("Bundle.entry must be a list of the draft orders")
        for i, entry in enumerate(entries):
            res = entry.get("resource") if isinstance(entry, Mapping) else None
            where = f"entry[{i}].resource"
            if not isinstance(res, Mapping):
                raise ValueError(f"{where} is missing")
            if res.get("resourceType") not in ORDER_TYPES:
                raise ValueError(f"{where}.resourceType {res.get('resourceType')!r} is not an "
                                 f"order type ({', '.join(sorted(ORDER_TYPES))})")
            if not isinstance(res.get("id"), str) or not re.match(_FHIR_ID, res["id"]):
                raise ValueError(f"{where}.id must be a FHIR id")
            if res.get("status") != "draft":
                raise ValueError(f"{where}.status must be 'draft', not {res.get('status')!r}")
        return value

    @property
    def order_references(self) -> list[str]:
        """``Type/id`` of every draft order, in Bundle order."""
        return [f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in self.draftOrders["entry"]]


class OrderSelectContext(OrderContext):
    """``context`` of ``order-select``: as order-sign's, plus ``selections``,
    the references (``MedicationRequest/103``) of the orders just selected,
    each one of ``draftOrders``."""

    selections: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _selected_are_drafts(self) -> OrderSelectContext:
        known = set(self.order_references)
        for i, ref in enumerate(self.selections):
            if ref not in known:
                raise ValueError(f"context.selections[{i}] {ref!r} is not an order of "
                                 "context.draftOrders")
        return self


_CONTEXTS: dict[str, type[BaseModel]] = {ORDER_SELECT: OrderSelectContext,
                                         ORDER_SIGN: OrderContext}


def validate_request(body: Any, hook: str | None = None) -> HookRequest:
    """Validate a CDS Hooks request (a dict, or JSON text/bytes).

    Raises :class:`HookRequestError` (status 400) naming the offending field:
    a missing ``hook``, a ``hookInstance`` that is not a UUID, a
    ``context.patientId`` that is not a FHIR id, a ``fhirAuthorization``
    without ``fhirServer``, a prefetch value that is not a resource or null.
    With ``hook`` (the hook of the service called) the request must be for
    that hook, and an order hook's context is checked as its hook defines it
    (``context.userId``, ``context.draftOrders``, ``context.selections``).
    """
    req = _validated(body, HookRequest, "request")
    if hook is not None:
        _check_hook(req, hook)
        model = _CONTEXTS.get(hook)
        if model is not None:
            try:
                model.model_validate(req.context.model_dump())
            except ValidationError as exc:
                raise HookRequestError(_message(exc, "request", prefix="context")) from None
    return req


def order_context(request: HookRequest) -> tuple[list[Any], list[str] | None]:
    """The draft orders of an order hook's request and its selections
    (``None`` for order-sign: every draft order is being signed)."""
    extra = request.context.model_extra or {}
    bundle = extra.get("draftOrders") or {}
    orders = [e["resource"] for e in bundle.get("entry") or []]
    selections = extra.get("selections") if request.hook == ORDER_SELECT else None
    return orders, (list(selections) if selections is not None else None)


class Coding(_Model):
    system: str | None = None
    code: str
    display: str | None = None


class OverrideReason(_Model):
    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(_Model):
    id: str = Field(min_length=1)


class Feedback(_Model):
    """One feedback entry: a card accepted (with the suggestions taken) or overridden."""

    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="after")
    def _accepted_has_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an accepted outcome needs acceptedSuggestions")
        return self


class FeedbackRequest(_Model):
    """The body of a feedback call: the client's feedback on one or more cards."""

    feedback: list[Feedback] = Field(min_length=1)


def validate_feedback(body: Any) -> FeedbackRequest:
    """Validate a feedback body (``{"feedback": [...]}``); 400 when malformed."""
    return _validated(body, FeedbackRequest, "feedback")


# --------------------------------------------------------------------------- #
# Discovery and prefetch templates
# --------------------------------------------------------------------------- #
def _codes_of_kind(ruleset: Ruleset, kind: str) -> list[str]:
    """``system|code`` of every code of the ruleset's concepts of ``kind``
    (value sets, then site concept maps), unique, in file order."""
    vs = ruleset.valuesets
    out: list[str] = []
    for concept in vs.concepts.values():
        if concept.kind != kind:
            continue
        for code in concept.codes:
            # A prefix entry (an ICD-10-CM category) cannot be searched for with
            # token equality; its stem is searched as a code of its own.
            out.append(f"{vs.systems.get(code.system, code.system)}|{code.code}")
    for cmap in ruleset.concept_maps:
        for entry in cmap.maps:
            concept_def = vs.concepts.get(entry.concept)
            if concept_def is not None and concept_def.kind == kind:
                out.append(f"{vs.systems.get(entry.system, entry.system)}|{entry.code}")
    return list(dict.fromkeys(out))


def _lab_codes(ruleset: Ruleset, concept: str) -> list[str]:
    vs = ruleset.valuesets
    out = [f"{vs.systems.get(c.system, c.system)}|{c.code}" for c in vs.concepts[concept].codes]
    out += [f"{vs.systems.get(e.system, e.system)}|{e.code}" for cmap in ruleset.concept_maps
            for e in cmap.maps if e.concept == concept]
    return list(dict.fromkeys(out))


def check_version(version: str) -> str:
    """``version`` if it is one of :data:`VERSIONS`, else :class:`InvalidArgument`."""
    if version not in VERSIONS:
        raise InvalidArgument(f"version must be one of {VERSIONS}, not {version!r}")
    return version


def lab_lookbacks(ruleset: Ruleset) -> dict[str, int]:
    """The lookback (days) of each lab concept that has one (its analyte's)."""
    analytes = ruleset.valuesets.analytes
    return {name: analytes[name].lookback_days for name, c in ruleset.valuesets.concepts.items()
            if c.kind == "lab" and name in analytes}


def prefetch_templates(ruleset: Ruleset, hook: str = HOOK, *, version: str = V2) -> dict[str, str]:
    """The prefetch templates of the ``hook`` service of ``ruleset``, by key.

    Observations are searched by the codes of the ruleset's labs and findings
    (``findings``); conditions, medications and allergies by patient only,
    because their value sets hold code prefixes (ICD-10-CM, ATC) and names
    that a token search cannot express. A resource type is asked for only
    when the ruleset has concepts read from it.

    CDS Hooks 2.0 tokens have no date arithmetic: ``patient-view`` searches
    every lab at once (``labs``), and the order hooks, called at every order
    selected or signed, ask for the newest :data:`LAB_COUNT` results of each
    lab (``lab-<concept>``: ``_sort=-date&_count=``), the only bound a 2.0
    template can state; they ask for active medications only
    (``status=active``); their draft orders come in the context.

    With ``version="3.0"`` every hook searches each lab on its own
    (``lab-<concept>``) within its lookback, with a FHIRPath token:
    ``date=ge{{today() - N days}}`` where ``N`` is the analyte's
    ``lookback_days`` plus :data:`WINDOW_MARGIN_DAYS`; the other keys are as
    in 2.0.
    """
    check_version(version)
    kinds = {c.kind for c in ruleset.valuesets.concepts.values()}
    pid = _PATIENT_TOKEN
    out = {"patient": f"Patient/{pid}"}
    orders = hook != HOOK
    if "lab" in kinds and version == V3:
        lookbacks = lab_lookbacks(ruleset)
        for name, concept in ruleset.valuesets.concepts.items():
            codes = _lab_codes(ruleset, name) if concept.kind == "lab" else []
            if codes:
                window = (f"&date=ge{{{{today() - {lookbacks[name] + WINDOW_MARGIN_DAYS} days}}}}"
                          if name in lookbacks else "")
                out[f"lab-{name}"] = f"Observation?patient={pid}&code={','.join(codes)}{window}"
    elif "lab" in kinds and orders:
        for name, concept in ruleset.valuesets.concepts.items():
            codes = _lab_codes(ruleset, name) if concept.kind == "lab" else []
            if codes:
                out[f"lab-{name}"] = (f"Observation?patient={pid}&code={','.join(codes)}"
                                      f"&_sort=-date&_count={LAB_COUNT}")
    elif "lab" in kinds:
        out["labs"] = f"Observation?patient={pid}&code={','.join(_codes_of_kind(ruleset, 'lab'))}"
    if "finding" in kinds:
        out["findings"] = (f"Observation?patient={pid}"
                           f"&code={','.join(_codes_of_kind(ruleset, 'finding'))}")
    if kinds & {"condition", "finding"}:
        out["conditions"] = f"Condition?patient={pid}"
    if "medication" in kinds:
        active = "&status=active" if orders else ""
        out["medicationRequests"] = f"MedicationRequest?patient={pid}{active}"
        out["medicationStatements"] = f"MedicationStatement?patient={pid}{active}"
    if "allergy" in kinds:
        out["allergies"] = f"AllergyIntolerance?patient={pid}"
    return out


def resolve_template(template: str, *, patient_id: str, today: date) -> str:
    """A prefetch template with its tokens replaced: ``{{context.patientId}}``
    by the (URL-quoted) patient id and the FHIRPath ``{{today()}}``,
    ``{{today() - N days}}`` and ``{{today() + N days}}`` by ISO dates
    relative to ``today``, as a 3.0 client would."""
    def day(match: re.Match[str]) -> str:
        sign, days = match.group(1), int(match.group(2) or 0)
        return (today + timedelta(days=-days if sign == "-" else days)).isoformat()

    return _TODAY_TOKEN.sub(day, template.replace(_PATIENT_TOKEN, quote(patient_id, safe="")))


def template_type(template: str) -> str:
    """The resource type a prefetch template reads or searches (``Observation``)."""
    return re.split(r"[/?]", template, maxsplit=1)[0]


def service_ids(rulesets: Iterable[Ruleset] | Mapping[str, Ruleset]) -> dict[str, Ruleset]:
    """Service id → ruleset. A mapping is taken as given; a sequence names each
    service by its ruleset id, or ``id-version`` when two versions of one
    ruleset are served side by side."""
    if isinstance(rulesets, Mapping):
        out = dict(rulesets)
    else:
        listed = list(rulesets)
        counts: dict[str, int] = {}
        for rs in listed:
            counts[rs.id] = counts.get(rs.id, 0) + 1
        out = {}
        for rs in listed:
            sid = rs.id if counts[rs.id] == 1 else f"{rs.id}-{rs.version}"
            if sid in out:
                raise InvalidArgument(f"ruleset {rs.spec} is listed twice")
            out[sid] = rs
    for sid, rs in out.items():
        if not isinstance(rs, Ruleset):
            raise InvalidArgument(f"service {sid!r}: expected a loaded Ruleset, not {rs!r}")
        if not re.match(r"^[A-Za-z0-9\-._~]+$", sid):
            raise InvalidArgument(f"service id {sid!r} is not a URL path segment")
    return out


def single_page(template: str) -> bool:
    """Whether a prefetch template asks for one page only (the newest results:
    ``_count``): fetched, its ``next`` pages are not followed."""
    return "&_count=" in template


def hook_services(rulesets: Iterable[Ruleset] | Mapping[str, Ruleset],
                  hooks: Sequence[str] = HOOKS) -> dict[str, tuple[str, Ruleset]]:
    """Service id → (hook, ruleset): per ruleset of :func:`service_ids`, its
    ``patient-view`` service under its own id and each order hook under
    ``<id>-<hook>`` (``plantar-cramps-order-select``)."""
    out: dict[str, tuple[str, Ruleset]] = {}
    for sid, rs in service_ids(rulesets).items():
        for hook in hooks:
            if hook not in HOOKS:
                raise InvalidArgument(f"hook must be one of {HOOKS}, not {hook!r}")
            hid = sid if hook == HOOK else f"{sid}-{hook}"
            if hid in out:
                raise InvalidArgument(f"service id {hid!r} is given twice")
            out[hid] = (hook, rs)
    return out


def source_attributes(ruleset: Ruleset) -> dict[str, Any]:
    """What a ruleset says of itself for decision-support transparency: its
    id, version, developer, release date, canonical URL, content hash and the
    documents its rules cite (title, publisher, URL, the rules citing each)."""
    f = ruleset.file
    cited: dict[str, list[str]] = {}
    for rule in f.rules:
        cited.setdefault(rule.citation.source, []).append(rule.id)
    sources = []
    for key, src in f.sources.items():
        entry = {"key": key, "title": _text(src.title), "publisher": src.publisher,
                 "url": src.url, "rules": cited.get(key, [])}
        sources.append({k: v for k, v in entry.items() if v})
    out = {"ruleset": f.id, "version": f.version, "developer": f.developer,
           "releaseDate": f.release_date.isoformat() if f.release_date else None,
           "status": f.status, "url": f.canonical_url, "sha256": ruleset.sha256,
           "sources": sources}
    return {k: v for k, v in out.items() if v is not None}


#: The key of the discovery extension with a service's source attributes.
SOURCE_EXTENSION = "dev.cdss.source"


def discovery(rulesets: Iterable[Ruleset] | Mapping[str, Ruleset],
              hooks: Sequence[str] = (HOOK,), *, version: str = V2) -> dict[str, Any]:
    """The CDS Hooks discovery document (``GET /cds-services``): one service
    per ruleset and hook (:func:`hook_services`; ``hooks`` defaults to
    ``patient-view`` alone), each with the ruleset's source attributes in its
    extension :data:`SOURCE_EXTENSION`. With ``version="3.0"`` each entry
    also says the specification version it implements (``version``
    :data:`SPEC_VERSION_3`), its hook's ``hookVersion``, and in
    ``usageRequirements`` the SMART scopes reading what its prefetch lacks
    needs; its prefetch is the 3.0 form (labs bounded by their lookback)."""
    check_version(version)
    services = []
    for sid, (hook, rs) in hook_services(rulesets, hooks).items():
        made_by = f", developer {rs.file.developer}" if rs.file.developer else ""
        released = f", released {rs.file.release_date.isoformat()}" \
            if rs.file.release_date else ""
        what = "" if hook == HOOK else f" Cards on the draft orders ({hook})."
        templates = prefetch_templates(rs, hook, version=version)
        entry: dict[str, Any] = {
            "hook": hook,
            "id": sid,
            "title": _text(rs.file.title),
            "description": f"{_text(rs.file.description)}{what} (ruleset {rs.spec}"
                           f"{made_by}{released}, sha256 {rs.sha256})",
            "prefetch": templates,
        }
        if version == V3:
            entry["version"] = SPEC_VERSION_3
            entry["hookVersion"] = HOOK_VERSIONS[hook]
            entry["usageRequirements"] = (
                "Data the prefetch does not hold is read from fhirServer with "
                "fhirAuthorization, whose scope must grant: "
                + " ".join(needed_scopes(templates)) + " (SMART v2; the v1 forms "
                "patient/<type>.read are read too).")
        entry["extension"] = {SOURCE_EXTENSION: source_attributes(rs)}
        services.append(entry)
    return {"services": services}


# --------------------------------------------------------------------------- #
# SMART scopes of fhirAuthorization
# --------------------------------------------------------------------------- #
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")


def needed_scopes(templates: Mapping[str, str]) -> list[str]:
    """The SMART v2 scopes reading ``templates`` needs: ``patient/<type>.rs``
    per resource type (``.r`` for a read such as ``Patient/{{...}}``)."""
    out: dict[str, set[str]] = {}
    for template in templates.values():
        rtype = template_type(template)
        out.setdefault(rtype, set()).add("s" if "?" in template else "r")
    return [f"patient/{t}.{''.join(sorted(ops, key='rs'.index))}" for t, ops in out.items()]


def granted(scope: str, resource_type: str, interaction: Literal["read", "search"]) -> bool:
    """Whether the SMART scope string ``scope`` (v1 ``patient/Observation.read``,
    ``user/*.*``, or v2 ``patient/Observation.rs``, ``patient/*.cruds``, with
    or without a ``?param=value`` restriction, which the FHIR server enforces)
    grants ``interaction`` on ``resource_type``. Scopes that name no resource
    (``launch``, ``openid``, ``fhirUser``) grant nothing."""
    want = "r" if interaction == "read" else "s"
    for part in scope.split():
        m = _SCOPE.match(part)
        if m is None or m.group(2) not in ("*", resource_type):
            continue
        ops = m.group(3)
        if ops in ("read", "*") or (ops not in ("write",) and want in ops
                                    and set(ops) <= set("cruds")):
            return True
    return False


# --------------------------------------------------------------------------- #
# Getting the patient's data
# --------------------------------------------------------------------------- #
def fetch_headers(request: HookRequest) -> dict[str, str]:
    """Headers of a FHIR request on behalf of ``request``: the bearer token of
    ``fhirAuthorization`` when given."""
    headers = {"Accept": "application/fhir+json"}
    if request.fhirAuthorization is not None:
        headers["Authorization"] = f"Bearer {request.fhirAuthorization.access_token}"
    return headers


def missing_prefetch(request: HookRequest, ruleset: Ruleset, *, version: str = V2,
                     today: date | None = None) -> dict[str, str]:
    """The absolute FHIR URLs of the templates ``prefetch`` did not satisfy, by key.

    A key present with ``null`` is satisfied (the client has no data for it);
    an absent key is not. Raises :class:`HookRequestError` 412 when keys are
    missing and the request names no ``fhirServer`` to fetch them from, or,
    for a 3.0 call, when its ``fhirAuthorization.scope`` (SMART v1 or v2)
    does not grant reading them (the request is then never sent). The 3.0
    templates' FHIRPath ``today()`` tokens are resolved with ``today``
    (default: the UTC date).
    """
    templates = prefetch_templates(ruleset, _hook_of(request), version=version)
    given = request.prefetch or {}
    missing = {k: q for k, q in templates.items() if k not in given}
    if not missing:
        return {}
    if request.fhirServer is None:
        raise HookRequestError(
            f"prefetch lacks {', '.join(repr(k) for k in missing)} and the request names no "
            "fhirServer to fetch them from", status=412)
    auth = request.fhirAuthorization
    if auth is not None and version == V3:  # a 2.0 call is read as it always was
        _token_patient(request)
        for key, query in missing.items():
            rtype = template_type(query)
            how: Literal["read", "search"] = "search" if "?" in query else "read"
            if not granted(auth.scope, rtype, how):
                raise HookRequestError(
                    f"prefetch lacks {key!r} and fhirAuthorization.scope grants no {how} of "
                    f"{rtype}", status=412)
    day = today or datetime.now(dt_timezone.utc).date()
    pid = request.context.patientId
    return {k: f"{request.fhirServer}/{resolve_template(q, patient_id=pid, today=day)}"
            for k, q in missing.items()}


def _token_patient(request: HookRequest) -> None:
    """3.0's ``fhirAuthorization.patient``, when given, must be the context's
    patient: a token restricted to another patient reads another's record."""
    assert request.fhirAuthorization is not None
    given = request.fhirAuthorization.patient
    if given is not None and given != request.context.patientId:
        raise HookRequestError("fhirAuthorization.patient is not the context's patientId: the "
                               "token is restricted to another patient")


def prefetch_continuations(request: HookRequest, ruleset: Ruleset, *,
                           version: str = V2) -> dict[str, str]:
    """For a 3.0 call: the ``next`` page URL of each prefetch searchset the
    client paginated, by key (the rest is read from ``fhirServer`` and joined
    to the page sent). :class:`HookRequestError` 412 when the request names no
    ``fhirServer``, the page is elsewhere, or the scope does not grant the
    search. A 2.0 call's prefetch is read as sent: none."""
    if version != V3:
        return {}
    given = request.prefetch or {}
    out: dict[str, str] = {}
    for key, template in prefetch_templates(ruleset, _hook_of(request), version=V3).items():
        value = given.get(key)
        if not isinstance(value, Mapping) or value.get("resourceType") != "Bundle":
            continue
        links = value.get("link") or []
        nxt = next((link.get("url") for link in links if isinstance(link, Mapping)
                    and link.get("relation") == "next"), None)
        if not isinstance(nxt, str):
            continue
        if request.fhirServer is None:
            raise HookRequestError(f"prefetch {key!r} is one page of several and the request "
                                   "names no fhirServer to read the rest from", status=412)
        if not nxt.startswith(f"{request.fhirServer}/"):
            raise HookRequestError(f"prefetch {key!r}: its next page is not on fhirServer",
                                   status=412)
        auth = request.fhirAuthorization
        if auth is not None:
            _token_patient(request)
        if auth is not None and not granted(auth.scope, template_type(template), "search"):
            raise HookRequestError(f"prefetch {key!r} is one page of several and "
                                   "fhirAuthorization.scope grants no search of "
                                   f"{template_type(template)}", status=412)
        out[key] = nxt
    return out


def http_fetch(url: str, headers: Mapping[str, str], *, timeout: float = 10.0) -> Any:
    """GET ``url`` with httpx and return its JSON; :class:`HookRequestError`
    412 on a network error, a timeout, a non-2xx answer or a body that is not
    JSON (the data cannot be obtained)."""
    import httpx

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.get(url, headers=dict(headers))
    except httpx.HTTPError as exc:
        raise HookRequestError(f"the FHIR server could not be read: {type(exc).__name__}",
                               status=412) from None
    return read_fhir_json(response.status_code, response.content, url)


def read_fhir_json(status: int, content: bytes, url: str) -> Any:
    """The JSON of a FHIR server's answer to GET ``url``; :class:`HookRequestError`
    412 when the answer is not 2xx or not JSON (the data cannot be obtained)."""
    path = urlsplit(url).path
    if not 200 <= status < 300:
        raise HookRequestError(f"the FHIR server answered {status} to GET {path}", status=412)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise HookRequestError(f"the FHIR server's answer to GET {path} is not JSON",
                               status=412) from None


def _next_link(page: Any, base: str) -> str | None:
    if not isinstance(page, Mapping) or page.get("resourceType") != "Bundle":
        return None
    for link in page.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str):
                return None
            ours, theirs = urlsplit(base), urlsplit(url)
            if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
                # The bearer token is for the client's FHIR server only.
                raise HookRequestError("the FHIR server's next page is on another host; not "
                                       "followed", status=412)
            return url
    return None


def _merge(pages: list[Any]) -> Any:
    if len(pages) == 1:
        return pages[0]
    entries = [e for p in pages for e in (p.get("entry") or [])]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


@contextlib.contextmanager
def _read_errors() -> Iterator[None]:
    """An injected fetch failing in its own way becomes a 412 naming the failure's type."""
    try:
        yield
    except HookRequestError:
        raise
    except Exception as exc:
        raise HookRequestError(f"the FHIR server could not be read: {type(exc).__name__}",
                               status=412) from None


def _paging(url: str, base: str, all_pages: bool = False) -> Generator[str, Any, Any]:
    """The paging of a search, for either kind of fetch: yields each URL to GET
    (``url``, then the ``next`` pages on ``base``'s host only, at most
    :data:`MAX_PAGES`; none for a :func:`single_page` search unless
    ``all_pages``: the rest of a search the client paginated), is sent its
    page, and returns one Bundle with every page's entries."""
    pages: list[Any] = []
    next_url: str | None = url
    while next_url is not None:
        if pages and single_page(url) and not all_pages:
            break
        if len(pages) >= MAX_PAGES:
            raise HookRequestError(f"the FHIR search has more than {MAX_PAGES} pages",
                                   status=412)
        page = yield next_url
        pages.append(page)
        next_url = _next_link(page, base)
    return _merge(pages)


def collect_pages(url: str, headers: Mapping[str, str], fetch: Fetch, base: str, *,
                  all_pages: bool = False) -> Any:
    """GET ``url`` and the ``next`` pages of a search (on ``base``'s host only);
    one Bundle with every page's entries. ``all_pages`` follows every page
    even of a :func:`single_page` URL (the rest of a paginated prefetch)."""
    core = _paging(url, base, all_pages)
    try:
        target = next(core)
        while True:
            with _read_errors():
                page = fetch(target, headers)
            target = core.send(page)
    except StopIteration as done:
        return done.value


async def collect_pages_async(url: str, headers: Mapping[str, str],
                              fetch: Callable[[str, Mapping[str, str]], Awaitable[Any]],
                              base: str, *, all_pages: bool = False) -> Any:
    """:func:`collect_pages` with an asynchronous ``fetch``."""
    core = _paging(url, base, all_pages)
    try:
        target = next(core)
        while True:
            with _read_errors():
                page = await fetch(target, headers)
            target = core.send(page)
    except StopIteration as done:
        return done.value


def _resources(key: str, value: Any, expected: str | None = None) -> list[Mapping[str, Any]]:
    """The resources of one prefetch value: a resource, a Bundle, or null;
    with ``expected`` (the resource type the key's template asks for), any
    other type (an OperationOutcome aside) is refused, naming it."""
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise HookRequestError(f"prefetch {key!r} must be a FHIR resource or null")
    if value.get("resourceType") != "Bundle":
        return [value]
    out = []
    entries = value.get("entry") or []
    if not isinstance(entries, list):
        raise HookRequestError(f"prefetch {key!r}: Bundle.entry must be a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            raise HookRequestError(f"prefetch {key!r}: entry {i} holds no resource")
        search = entry.get("search")
        if isinstance(search, Mapping) and search.get("mode") == "outcome":
            continue  # an OperationOutcome about the search, not patient data
        res = entry["resource"]
        rtype = res.get("resourceType")
        if expected is not None and rtype not in (expected, "OperationOutcome"):
            raise HookRequestError(
                f"prefetch {key!r}: entry {i} is {rtype}/{res.get('id')}, but the template "
                f"searches {expected}")
        out.append(res)
    return out


def _record(request: HookRequest, ruleset: Ruleset, fetched: Mapping[str, Any],
            version: str = V2) -> list[Mapping[str, Any]]:
    given = request.prefetch or {}
    seen: set[tuple[str, str]] = set()
    record: list[Mapping[str, Any]] = []
    templates = prefetch_templates(ruleset, _hook_of(request), version=version)
    for key, template in templates.items():
        if key in given and key in fetched and version == V3:  # a page and the rest
            value, origin = _merge([given[key], fetched[key]]), "prefetch"
        elif key in given:
            value, origin = given[key], "prefetch"
        elif key in fetched:
            value, origin = fetched[key], "FHIR server"
        else:
            raise HookRequestError(f"no data for prefetch {key!r}", status=412)
        # what arrives must be what was asked for (2.0 answers are kept as they were)
        expected = template_type(template) if version == V3 and "?" in template else None
        for res in _resources(key, value, expected):
            rtype, rid = res.get("resourceType"), res.get("id")
            if key == "patient" and (rtype != "Patient" or rid != request.context.patientId):
                raise HookRequestError(
                    f"{origin} {key!r} is {rtype}/{rid}, not the context's "
                    f"{request.patient_reference}")
            if rtype == "OperationOutcome":
                continue
            if isinstance(rtype, str) and isinstance(rid, str):
                if (rtype, rid) in seen:
                    continue  # the same resource under two keys
                seen.add((rtype, rid))
            record.append(res)
    return record


# --------------------------------------------------------------------------- #
# Handling a call
# --------------------------------------------------------------------------- #
def _hook_of(request: HookRequest) -> str:
    """The hook whose templates a request is read with (patient-view's for any other)."""
    return request.hook if request.hook in HOOKS else HOOK


def _check_hook(request: HookRequest, hook: str = HOOK) -> None:
    if request.hook != hook:
        raise HookRequestError(f"this service answers the {hook!r} hook, not {request.hook!r}")


def evaluate_request(request: HookRequest, ruleset: Ruleset, *,
                     fetched: Mapping[str, Any] | None = None,
                     as_of: datetime | date | str | None = None,
                     timezone: str = "UTC", mode: str = "strict",
                     hook: str = HOOK, version: str = V2) -> dict[str, Any]:
    """Evaluate ``request`` with its prefetch plus the ``fetched`` values of
    the keys it lacked, and return the response body ``{"cards": [...]}``.
    A resource that cannot be read is left out (a warning card says which);
    ``timezone`` is the zone of times the EHR sent without one; ``mode`` the
    intake (``strict`` or ``lean``, as :func:`cdss.evaluate` takes it).
    ``hook`` is the hook of the service called: the request must be for it;
    for an order hook the context's draft orders (and order-select's
    selections) are evaluated with the record and only the cards on draft
    orders are returned (with the warning when resources were left out).
    ``version`` is the CDS Hooks version of the call (its prefetch keys and
    its cards' override reasons)."""
    assessment = assess_request(request, ruleset, fetched=fetched, as_of=as_of,
                                timezone=timezone, mode=mode, hook=hook, version=version)
    return {"cards": cards(assessment, ruleset, hook_instance=request.hookInstance,
                           only_orders=hook != HOOK, version=version)}


def assess_request(request: HookRequest, ruleset: Ruleset, *,
                   fetched: Mapping[str, Any] | None = None,
                   as_of: datetime | date | str | None = None,
                   timezone: str = "UTC", mode: str = "strict",
                   hook: str = HOOK, version: str = V2) -> Assessment:
    """The Assessment :func:`evaluate_request` renders as cards (same
    arguments, same refusals)."""
    from cdss.evaluation import evaluate

    if hook != HOOK and request.hook == hook:
        request = validate_request(request.model_dump(mode="json"), hook)
    _check_hook(request, hook)
    record = _record(request, ruleset, fetched or {}, check_version(version))
    orders, selections = order_context(request) if hook != HOOK else (None, None)
    if orders:  # the order being written replaces any copy of it in the chart
        drafts = {(o["resourceType"], o["id"]) for o in orders}
        record = [r for r in record if (r.get("resourceType"), r.get("id")) not in drafts]
    try:
        assessment = evaluate(record, ruleset=ruleset, as_of=as_of, timezone=timezone,
                              mode=mode, draft_orders=orders, selections=selections)
    except InputError as exc:
        raise HookRequestError(f"the patient's data cannot be used: {exc}") from None
    if assessment.patient not in (None, request.patient_reference):
        raise HookRequestError(f"the data is about {assessment.patient}, not the context's "
                               f"{request.patient_reference}")
    return assessment


def handle_patient_view(request: HookRequest | Mapping[str, Any] | str | bytes,
                        ruleset: Ruleset, *, fetch: Fetch | None = None,
                        as_of: datetime | date | str | None = None,
                        timezone: str = "UTC", mode: str = "strict") -> dict[str, Any]:
    """Answer a ``patient-view`` call: ``{"cards": [...]}``.

    The record comes from ``prefetch``; keys it lacks are fetched from
    ``fhirServer`` (bearer token from ``fhirAuthorization``) with ``fetch``
    (default: :func:`http_fetch`, httpx with a timeout), following the pages of
    a search. Raises :class:`HookRequestError`: 400 for a malformed request or
    unusable data, 412 when data is missing and cannot be fetched. ``as_of``
    defaults to now; ``mode`` is the intake (``strict`` or ``lean``).
    """
    return handle_hook(request, ruleset, hook=HOOK, fetch=fetch, as_of=as_of,
                       timezone=timezone, mode=mode)


def handle_hook(request: HookRequest | Mapping[str, Any] | str | bytes, ruleset: Ruleset, *,
                hook: str, fetch: Fetch | None = None,
                as_of: datetime | date | str | None = None,
                timezone: str = "UTC", mode: str = "strict",
                version: str = V2) -> dict[str, Any]:
    """Answer a call of the ``hook`` service of ``ruleset`` (``patient-view``,
    ``order-select`` or ``order-sign``): ``{"cards": [...]}``, as
    :func:`handle_patient_view` does. An order hook's request is validated as
    its hook defines it (400 naming the field: ``context.draftOrders``,
    ``context.selections``) and answered with the cards on its draft orders."""
    if hook not in HOOKS:
        raise InvalidArgument(f"hook must be one of {HOOKS}, not {hook!r}")
    req = validate_request(request.model_dump(mode="json") if isinstance(request, HookRequest)
                           else request, hook)
    missing = missing_prefetch(req, ruleset, version=version, today=_day_of(as_of))
    rest = prefetch_continuations(req, ruleset, version=version)
    fetched: dict[str, Any] = {}
    if missing or rest:
        assert req.fhirServer is not None  # missing_prefetch raised otherwise
        get = fetch or http_fetch
        headers = fetch_headers(req)
        for key, url in missing.items():
            fetched[key] = collect_pages(url, headers, get, req.fhirServer)
        for key, url in rest.items():
            fetched[key] = collect_pages(url, headers, get, req.fhirServer, all_pages=True)
    return evaluate_request(req, ruleset, fetched=fetched, as_of=as_of, timezone=timezone,
                            mode=mode, hook=hook, version=version)


def _day_of(as_of: datetime | date | str | None) -> date | None:
    """The date ``today()`` stands for at ``as_of`` (UTC), or None for now."""
    if as_of is None:
        return None
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError:
            return None  # evaluate() refuses it, naming it
    if isinstance(as_of, datetime):
        return (as_of.astimezone(dt_timezone.utc) if as_of.tzinfo else as_of).date()
    return as_of
