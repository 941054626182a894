"""The CDS Hooks 2.0 protocol as pure functions: no HTTP server here (see
:mod:`cdss.service`); the only network access is the optional fetch from the
CDS client's FHIR server, through a callable that callers may inject.

* :func:`discovery` is the discovery document: one ``patient-view`` service
  per ruleset, with prefetch templates for what the ruleset reads. Prefetch
  tokens may only name context fields (``{{context.patientId}}``) and the
  user ids, so a template cannot say "the last 90 days": the searches carry no
  date and the lookback windows are applied when facts are built (a lab older
  than its lookback counts as missing and is noted).
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
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from datetime import date, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdss.assessment import Assessment
from cdss.errors import HookRequestError, InputError, InvalidArgument
from cdss.outputs.cds_hooks import cards
from cdss.rulesets import Ruleset

#: The one hook these services answer.
HOOK = "patient-view"
#: Pages of a search followed at most when fetching from a FHIR server.
MAX_PAGES = 100
_PATIENT_TOKEN = "{{context.patientId}}"
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"

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


def _message(exc: ValidationError, what: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or what
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - 5
    return f"invalid {what}: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_request(body: Any) -> HookRequest:
    """Validate a CDS Hooks request (a dict, or JSON text/bytes).

    Raises :class:`HookRequestError` (status 400) naming the offending field:
    a missing ``hook``, a ``hookInstance`` that is not a UUID, a
    ``context.patientId`` that is not a FHIR id, a ``fhirAuthorization``
    without ``fhirServer``, a prefetch value that is not a resource or null.
    """
    return _validated(body, HookRequest, "request")


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


def prefetch_templates(ruleset: Ruleset) -> dict[str, str]:
    """The prefetch templates of the service of ``ruleset``, by key.

    Observations are searched by the codes of the ruleset's labs (``labs``)
    and findings (``findings``); conditions, medications and allergies by
    patient only, because their value sets hold code prefixes (ICD-10-CM, ATC)
    and names that a token search cannot express. A resource type is asked
    for only when the ruleset has concepts read from it.
    """
    kinds = {c.kind for c in ruleset.valuesets.concepts.values()}
    pid = _PATIENT_TOKEN
    out = {"patient": f"Patient/{pid}"}
    if "lab" in kinds:
        out["labs"] = f"Observation?patient={pid}&code={','.join(_codes_of_kind(ruleset, 'lab'))}"
    if "finding" in kinds:
        out["findings"] = (f"Observation?patient={pid}"
                           f"&code={','.join(_codes_of_kind(ruleset, 'finding'))}")
    if kinds & {"condition", "finding"}:
        out["conditions"] = f"Condition?patient={pid}"
    if "medication" in kinds:
        out["medicationRequests"] = f"MedicationRequest?patient={pid}"
        out["medicationStatements"] = f"MedicationStatement?patient={pid}"
    if "allergy" in kinds:
        out["allergies"] = f"AllergyIntolerance?patient={pid}"
    return out


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


def discovery(rulesets: Iterable[Ruleset] | Mapping[str, Ruleset]) -> dict[str, Any]:
    """The CDS Hooks discovery document (``GET /cds-services``)."""
    services = []
    for sid, rs in service_ids(rulesets).items():
        services.append({
            "hook": HOOK,
            "id": sid,
            "title": _text(rs.file.title),
            "description": f"{_text(rs.file.description)} (ruleset {rs.spec}, "
                           f"sha256 {rs.sha256})",
            "prefetch": prefetch_templates(rs),
        })
    return {"services": services}


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


def missing_prefetch(request: HookRequest, ruleset: Ruleset) -> dict[str, str]:
    """The absolute FHIR URLs of the templates ``prefetch`` did not satisfy, by key.

    A key present with ``null`` is satisfied (the client has no data for it);
    an absent key is not. Raises :class:`HookRequestError` 412 when keys are
    missing and the request names no ``fhirServer`` to fetch them from.
    """
    given = request.prefetch or {}
    missing = {k: q for k, q in prefetch_templates(ruleset).items() if k not in given}
    if not missing:
        return {}
    if request.fhirServer is None:
        raise HookRequestError(
            f"prefetch lacks {', '.join(repr(k) for k in missing)} and the request names no "
            "fhirServer to fetch them from", status=412)
    pid = quote(request.context.patientId, safe="")
    return {k: f"{request.fhirServer}/{q.replace(_PATIENT_TOKEN, pid)}"
            for k, q in missing.items()}


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


def _paging(url: str, base: str) -> Generator[str, Any, Any]:
    """The paging of a search, for either kind of fetch: yields each URL to GET
    (``url``, then the ``next`` pages on ``base``'s host only, at most
    :data:`MAX_PAGES`), is sent its page, and returns one Bundle with every
    page's entries."""
    pages: list[Any] = []
    next_url: str | None = url
    while next_url is not None:
        if len(pages) >= MAX_PAGES:
            raise HookRequestError(f"the FHIR search has more than {MAX_PAGES} pages",
                                   status=412)
        page = yield next_url
        pages.append(page)
        next_url = _next_link(page, base)
    return _merge(pages)


def collect_pages(url: str, headers: Mapping[str, str], fetch: Fetch, base: str) -> Any:
    """GET ``url`` and the ``next`` pages of a search (on ``base``'s host only);
    one Bundle with every page's entries."""
    core = _paging(url, base)
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
                              base: str) -> Any:
    """:func:`collect_pages` with an asynchronous ``fetch``."""
    core = _paging(url, base)
    try:
        target = next(core)
        while True:
            with _read_errors():
                page = await fetch(target, headers)
            target = core.send(page)
    except StopIteration as done:
        return done.value


def _resources(key: str, value: Any) -> list[Mapping[str, Any]]:
    """The resources of one prefetch value: a resource, a Bundle, or null."""
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
        out.append(entry["resource"])
    return out


def _record(request: HookRequest, ruleset: Ruleset,
            fetched: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    given = request.prefetch or {}
    seen: set[tuple[str, str]] = set()
    record: list[Mapping[str, Any]] = []
    for key in prefetch_templates(ruleset):
        if key in given:
            value, origin = given[key], "prefetch"
        elif key in fetched:
            value, origin = fetched[key], "FHIR server"
        else:
            raise HookRequestError(f"no data for prefetch {key!r}", status=412)
        for res in _resources(key, value):
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
def _check_hook(request: HookRequest) -> None:
    if request.hook != HOOK:
        raise HookRequestError(f"this service answers the {HOOK!r} hook, not {request.hook!r}")


def evaluate_request(request: HookRequest, ruleset: Ruleset, *,
                     fetched: Mapping[str, Any] | None = None,
                     as_of: datetime | date | str | None = None,
                     timezone: str = "UTC", mode: str = "strict") -> dict[str, Any]:
    """Evaluate ``request`` with its prefetch plus the ``fetched`` values of
    the keys it lacked, and return the response body ``{"cards": [...]}``.
    A resource that cannot be read is left out (a warning card says which);
    ``timezone`` is the zone of times the EHR sent without one; ``mode`` the
    intake (``strict`` or ``lean``, as :func:`cdss.evaluate` takes it)."""
    assessment = assess_request(request, ruleset, fetched=fetched, as_of=as_of,
                                timezone=timezone, mode=mode)
    return {"cards": cards(assessment, ruleset, hook_instance=request.hookInstance)}


def assess_request(request: HookRequest, ruleset: Ruleset, *,
                   fetched: Mapping[str, Any] | None = None,
                   as_of: datetime | date | str | None = None,
                   timezone: str = "UTC", mode: str = "strict") -> Assessment:
    """The Assessment :func:`evaluate_request` renders as cards (same
    arguments, same refusals)."""
    from cdss.evaluation import evaluate

    _check_hook(request)
    record = _record(request, ruleset, fetched or {})
    try:
        assessment = evaluate(record, ruleset=ruleset, as_of=as_of, timezone=timezone,
                              mode=mode)
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
    req = request if isinstance(request, HookRequest) else validate_request(request)
    _check_hook(req)
    missing = missing_prefetch(req, ruleset)
    fetched: dict[str, Any] = {}
    if missing:
        assert req.fhirServer is not None  # missing_prefetch raised otherwise
        get = fetch or http_fetch
        headers = fetch_headers(req)
        for key, url in missing.items():
            fetched[key] = collect_pages(url, headers, get, req.fhirServer)
    return evaluate_request(req, ruleset, fetched=fetched, as_of=as_of, timezone=timezone,
                            mode=mode)
