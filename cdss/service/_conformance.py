"""A conformance check any CDS Hooks service can be run against
(``cdss check-service URL``): cdss's own service or anyone's.

:func:`check_service` calls the service over HTTP as a CDS client would and
reports each check as ``passed``, ``failed`` (with the JSON path of what is
wrong and why) or ``not-applicable`` (with why):

``discovery``
    ``GET {base}/cds-services`` is 200 with ``services``, each with ``hook``,
    ``id`` (a URL path segment), ``description`` and, where given, a
    ``title``, ``prefetch`` of strings, ``usageRequirements``; for 3.0 a
    ``version`` that is a semantic version and a ``hookVersion`` string.
``prefetch-templates``
    every template is an instance read or a type-level search using only
    what the specification allows (tokens naming context fields of the hook
    or the user; for 3.0 also FHIRPath ``today() ± N days``; token equality
    or ``:in``, date prefixes ``eq lt gt ge le``, ``_count``, ``_sort``,
    ``_maxresults``).
``hook-call``
    one request per service of a hook this check can build a context for
    (``patient-view``, ``order-select``, ``order-sign``), from a supplied or
    a generated patient, its prefetch filled from that record; 200 with
    ``cards``.
``cards``
    each card's ``summary`` (under 140 characters), ``indicator``,
    ``source.label``, ``uuid``, ``selectionBehavior`` with suggestions,
    suggestions and actions (``create`` and ``update`` with a resource,
    ``delete`` naming a resource that exists: a draft order of the call or a
    resource of the record; the relative references of a created or updated
    resource, ``Type/id``, to such resources too), ``overrideReasons`` with a display, ``links``
    (absolute URL, type ``absolute`` or ``smart``).
``errors``
    malformed JSON is a 4xx, an unknown service a 404, neither with a stack
    trace; for 3.0 each answer is an OperationOutcome.
``feedback``
    feedback on a card the service returned is accepted (2xx) and malformed
    feedback is a 4xx.
``authentication``
    when the service claims to need a JWT (a signing key was given for the
    check), a call without one and a call with a token signed by another key
    are refused (401 or 403).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import orjson

from cdss.errors import InvalidArgument

__all__ = ["CHECKS", "Check", "ConformanceReport", "check_service", "generated_patient"]

#: The checks, in the order they are run and reported.
CHECKS = ("discovery", "prefetch-templates", "hook-call", "cards", "errors", "feedback",
          "authentication")
Status = Literal["passed", "failed", "not-applicable"]

_HOOK_CONTEXT = {
    "patient-view": ("userId", "patientId", "encounterId"),
    "order-select": ("userId", "patientId", "encounterId", "selections", "draftOrders"),
    "order-sign": ("userId", "patientId", "encounterId", "draftOrders"),
}
_USER_TOKENS = ("userPractitionerId", "userPractitionerRoleId", "userPatientId",
                "userRelatedPersonId")
_TOKEN = re.compile(r"\{\{(.*?)\}\}")
_TODAY = re.compile(r"^\s*today\(\)\s*(?:([+-])\s*(\d{1,5})\s*days?\s*)?$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9\-._~]+$")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_DATE_PREFIX = re.compile(r"^(eq|lt|gt|ge|le)?\d{4}(-\d{2}(-\d{2})?)?")
_DATE_PARAMS = ("date", "authored", "authoredon", "onset-date", "recorded-date", "birthdate",
                "effective", "issued", "period", "_lastUpdated")
_INDICATORS = ("info", "warning", "critical")


@dataclass(frozen=True)
class Check:
    """One check's result: its name, ``status``, the JSON path of the
    offending value (``$`` the whole answer; empty when it passed) and why."""

    name: str
    status: Status
    path: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        out = {"check": self.name, "status": self.status}
        if self.path:
            out["path"] = self.path
        if self.message:
            out["message"] = self.message
        return out


@dataclass
class ConformanceReport:
    """Every check of one service: :attr:`passed` when none failed."""

    url: str
    version: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "version": self.version, "passed": self.passed,
                "checks": [c.to_dict() for c in self.checks]}

    def to_text(self) -> str:
        lines = [f"{self.url} (CDS Hooks {self.version})"]
        for c in self.checks:
            where = f" at {c.path}" if c.path else ""
            why = f": {c.message}" if c.message else ""
            lines.append(f"  {c.status:<15} {c.name}{where}{why}")
        failed = sum(c.status == "failed" for c in self.checks)
        lines.append("passed" if not failed else f"{failed} failed")
        return "\n".join(lines)


class _Fail(Exception):
    """A check's failure: the JSON path and why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise _Fail(path, message)


# --------------------------------------------------------------------------- #
# The patient a call is built from
# --------------------------------------------------------------------------- #
def generated_patient(pid: str = "cdss-check-1") -> list[dict[str, Any]]:
    """A small synthetic record (no real person): a Patient, a recent serum
    potassium, an active condition, an active medication and a draft order
    (a potassium chloride MedicationRequest) for the order hooks."""
    today = date.today()
    ref = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-04-02"},
        {"resourceType": "Observation", "id": f"{pid}-k", "status": "final", "subject": ref,
         "category": [{"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/observation-category",
             "code": "laboratory"}]}],
         "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3",
                              "display": "Potassium [Moles/volume] in Serum or Plasma"}]},
         "effectiveDateTime": (today - timedelta(days=5)).isoformat(),
         "valueQuantity": {"value": 5.6, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                           "code": "mmol/L"}},
        {"resourceType": "Condition", "id": f"{pid}-c", "subject": ref,
         "clinicalStatus": {"coding": [{
             "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
             "code": "active"}]},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "202882003",
                              "display": "Plantar fasciitis"}]}},
        {"resourceType": "MedicationRequest", "id": f"{pid}-draft", "status": "draft",
         "intent": "order", "subject": ref,
         "medicationCodeableConcept": {"coding": [{
             "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "8591",
             "display": "potassium chloride"}], "text": "potassium chloride"}},
    ]


def _read_patient(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise InvalidArgument(f"the patient file {path} cannot be read: {exc}") from None
    if isinstance(data, Mapping) and data.get("resourceType") == "Bundle":
        data = [e.get("resource") for e in data.get("entry") or [] if isinstance(e, Mapping)]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise InvalidArgument(f"the patient file {path} must hold a Bundle or a list of "
                              "resources")
    patients = [r for r in data if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not isinstance(patients[0].get("id"), str):
        raise InvalidArgument(f"the patient file {path} must hold one Patient with an id")
    return [dict(r) for r in data]


def _code_of(res: Mapping[str, Any]) -> set[str]:
    codings = (res.get("code") or {}).get("coding") or []
    out = set()
    for c in codings:
        if isinstance(c, Mapping):
            out.add(str(c.get("code")))
            out.add(f"{c.get('system')}|{c.get('code')}")
    return out


def _when(res: Mapping[str, Any]) -> str:
    for key in ("effectiveDateTime", "authoredOn", "recordedDate", "onsetDateTime", "issued"):
        if isinstance(res.get(key), str):
            return str(res[key])
    return ""


def _answer(record: Sequence[Mapping[str, Any]], query: str) -> Any:
    """What a FHIR server holding only ``record`` answers to ``query`` (a
    resolved template): a read, or a searchset filtered by ``code``, ``status``
    and date prefixes; other parameters are not filtered on (a superset)."""
    path, _, qs = query.partition("?")
    if "/" in path:
        rtype, rid = path.split("/", 1)
        return next((dict(r) for r in record if r.get("resourceType") == rtype
                     and r.get("id") == rid), None)
    params = parse_qs(qs)
    found = []
    for res in record:
        if res.get("resourceType") != path or res.get("status") == "draft":
            continue
        if "code" in params and not _code_of(res) & set(params["code"][0].split(",")):
            continue
        if "status" in params and res.get("status") not in params["status"][0].split(","):
            continue
        if not all(_date_ok(_when(res), v) for k in _DATE_PARAMS for v in params.get(k, [])):
            continue
        found.append({"resource": dict(res)})
    return {"resourceType": "Bundle", "type": "searchset", "total": len(found), "entry": found}


def _date_ok(value: str, bound: str) -> bool:
    m = re.match(r"^(eq|lt|gt|ge|le)?(.*)$", bound)
    assert m is not None
    op, when = m.group(1) or "eq", m.group(2)
    if not value:
        return False
    v = value[: len(when)]
    return {"eq": v == when, "lt": v < when, "gt": v > when, "ge": v >= when,
            "le": v <= when}[op]


def _resolve(template: str, context: Mapping[str, Any], today: date) -> str | None:
    """``template`` with its tokens replaced, or None when one cannot be (a
    token this check does not evaluate, such as a FHIRPath traversal)."""
    failed = False

    def token(m: re.Match[str]) -> str:
        nonlocal failed
        expr = m.group(1).strip()
        if expr.startswith("context.") and expr[8:] in context \
                and isinstance(context[expr[8:]], str):
            return quote(str(context[expr[8:]]), safe="/")
        t = _TODAY.match(expr)
        if t is not None:
            days = int(t.group(2) or 0)
            return (today + timedelta(days=-days if t.group(1) == "-" else days)).isoformat()
        if expr == "userPractitionerId" and str(context.get("userId", "")).startswith(
                "Practitioner/"):
            return str(context["userId"]).split("/", 1)[1]
        failed = True
        return ""

    out = _TOKEN.sub(token, template)
    return None if failed else out


# --------------------------------------------------------------------------- #
# The checks
# --------------------------------------------------------------------------- #
def _check_discovery(doc: Any, version: str) -> None:
    _require(isinstance(doc, Mapping), "$", "the discovery answer is not a JSON object")
    services = doc.get("services")
    _require(isinstance(services, list), "$.services", "services must be an array")
    seen: set[tuple[str, str]] = set()
    for i, s in enumerate(services):
        at = f"$.services[{i}]"
        _require(isinstance(s, Mapping), at, "a service must be an object")
        for name in ("hook", "id", "description"):
            _require(isinstance(s.get(name), str) and bool(s.get(name)), f"{at}.{name}",
                     f"{name} is required and must be a non-empty string")
        _require(bool(_SEGMENT.match(s["id"])), f"{at}.id",
                 "id must be usable as a URL path segment")
        _require((s["hook"], s["id"]) not in seen, f"{at}.id", "the same id twice for a hook")
        seen.add((s["hook"], s["id"]))
        for name in ("title", "usageRequirements", "hookVersion"):
            _require(name not in s or isinstance(s[name], str), f"{at}.{name}",
                     f"{name} must be a string")
        if "version" in s:
            _require(isinstance(s["version"], str) and bool(_SEMVER.match(s["version"])),
                     f"{at}.version", "version must be a semantic version (e.g. 3.0.0)")
        prefetch = s.get("prefetch")
        if prefetch is not None:
            _require(isinstance(prefetch, Mapping), f"{at}.prefetch", "must be an object")
            for key, value in prefetch.items():
                _require(isinstance(value, str), f"{at}.prefetch.{key}",
                         "a prefetch template must be a string")


def _check_template(template: str, hook: str, version: str, at: str) -> None:
    for m in _TOKEN.finditer(template):
        expr = m.group(1).strip()
        if expr.startswith("context."):
            name = expr[8:].split(".", 1)[0]
            known = _HOOK_CONTEXT.get(hook)
            _require(known is None or name in known, at,
                     f"token {{{{{expr}}}}} names no context field of {hook}")
            _require(version == "3.0" or ("." not in expr[8:] and "(" not in expr), at,
                     f"token {{{{{expr}}}}}: FHIRPath in tokens is CDS Hooks 3.0 only")
            continue
        if expr in _USER_TOKENS:
            continue
        if _TODAY.match(expr):
            _require(version == "3.0", at, f"token {{{{{expr}}}}}: date arithmetic is "
                     "CDS Hooks 3.0 only")
            continue
        _require(version == "3.0" and expr.startswith("%"), at,
                 f"token {{{{{expr}}}}} is not a context field, a user token or today()")
    if _TOKEN.fullmatch(template.strip()):
        return  # a read of the reference a context field holds ({{context.userId}})
    # a token stands for one value (an id, a date) in the checks of the query's shape
    path, _, query = _TOKEN.sub("2000-01-01", template).partition("?")
    parts = path.split("/")
    is_read = len(parts) == 2 and bool(parts[1]) and not query
    _require(bool(_RESOURCE_TYPE.match(parts[0])) and (is_read or len(parts) == 1), at,
             "a template must be an instance read (Type/id) or a type-level search "
             "(Type?params)")
    for pair in filter(None, query.split("&")):
        name, _, value = pair.partition("=")
        base, _, modifier = name.partition(":")
        _require(modifier in ("", "in"), at,
                 f"search modifier :{modifier} is not allowed in a prefetch template")
        if base in ("_count", "_maxresults"):
            _require(value.isdigit(), at, f"{base} must be a number")
        elif base in _DATE_PARAMS:
            _require(bool(_DATE_PREFIX.match(value)), at,
                     f"{base}={value}: a date must use the prefixes eq, lt, gt, ge, le")
        elif base.startswith("_"):
            _require(base in ("_sort", "_id"), at,
                     f"{base} is not a parameter prefetch templates may use")


def _check_card(card: Any, at: str, known: set[str]) -> None:
    _require(isinstance(card, Mapping), at, "a card must be an object")
    summary = card.get("summary")
    _require(isinstance(summary, str) and bool(summary), f"{at}.summary", "summary is required")
    _require(len(summary) < 140, f"{at}.summary",
             f"summary has {len(summary)} characters; it must be under 140")
    _require(card.get("indicator") in _INDICATORS, f"{at}.indicator",
             f"indicator must be one of {', '.join(_INDICATORS)}")
    source = card.get("source")
    _require(isinstance(source, Mapping) and isinstance(source.get("label"), str)
             and bool(source.get("label")), f"{at}.source.label", "source.label is required")
    if "url" in source:
        _require(_absolute(source["url"]), f"{at}.source.url", "must be an absolute URL")
    if "uuid" in card:
        _require(_is_uuid(card["uuid"]), f"{at}.uuid", "uuid must be a UUID")
    suggestions = card.get("suggestions")
    if suggestions is not None:
        _require(isinstance(suggestions, list), f"{at}.suggestions", "must be an array")
        if suggestions:
            _require(card.get("selectionBehavior") in ("at-most-one", "any"),
                     f"{at}.selectionBehavior",
                     "selectionBehavior (at-most-one or any) is required with suggestions")
        for j, s in enumerate(suggestions):
            sat = f"{at}.suggestions[{j}]"
            _require(isinstance(s, Mapping) and isinstance(s.get("label"), str),
                     f"{sat}.label", "a suggestion needs a label")
            if "uuid" in s:
                _require(_is_uuid(s["uuid"]), f"{sat}.uuid", "uuid must be a UUID")
            for n, action in enumerate(s.get("actions") or []):
                _check_action(action, f"{sat}.actions[{n}]", known)
    for j, reason in enumerate(card.get("overrideReasons") or []):
        _require(isinstance(reason, Mapping) and isinstance(reason.get("code"), str)
                 and isinstance(reason.get("display"), str),
                 f"{at}.overrideReasons[{j}]", "an override reason needs a code and a display")
    for j, link in enumerate(card.get("links") or []):
        lat = f"{at}.links[{j}]"
        _require(isinstance(link, Mapping) and isinstance(link.get("label"), str),
                 f"{lat}.label", "a link needs a label")
        _require(_absolute(link.get("url")), f"{lat}.url", "a link's url must be absolute")
        _require(link.get("type") in ("absolute", "smart"), f"{lat}.type",
                 "a link's type must be absolute or smart")


def _check_action(action: Any, at: str, known: set[str]) -> None:
    _require(isinstance(action, Mapping), at, "an action must be an object")
    kind = action.get("type")
    _require(kind in ("create", "update", "delete"), f"{at}.type",
             "type must be create, update or delete")
    _require(isinstance(action.get("description"), str), f"{at}.description",
             "an action needs a description")
    if kind in ("create", "update"):
        res = action.get("resource")
        _require(isinstance(res, Mapping) and isinstance(res.get("resourceType"), str),
                 f"{at}.resource", f"a {kind} action needs a FHIR resource")
        if kind == "update":
            ref = f"{res.get('resourceType')}/{res.get('id')}"
            _require(ref in known, f"{at}.resource",
                     f"updates {ref}, which is not in the call's data")
        for where, ref in _references(res, f"{at}.resource"):
            _require(ref in known or not _LITERAL_REF.match(ref), where,
                     f"refers to {ref}, which is not in the call's data")
    else:
        ids = action.get("resourceId")
        ids = [ids] if isinstance(ids, str) else ids
        _require(isinstance(ids, list) and bool(ids), f"{at}.resourceId",
                 "a delete action names the resource it deletes")
        for n, ref in enumerate(ids):
            _require(ref in known, f"{at}.resourceId[{n}]",
                     f"deletes {ref}, which is not in the call's data")


_LITERAL_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _references(node: Any, at: str) -> list[tuple[str, str]]:
    """Every ``reference`` string inside ``node``, with its JSON path."""
    out: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out.append((f"{at}.reference", value))
            elif key != "contained":
                out += _references(value, f"{at}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _references(value, f"{at}[{i}]")
    return out


def _absolute(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _operation_outcome(body: Any, at: str) -> None:
    _require(isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome",
             at, "a 3.0 error should be a FHIR OperationOutcome")
    issues = body.get("issue")
    _require(isinstance(issues, list) and bool(issues), f"{at}.issue",
             "an OperationOutcome needs at least one issue")
    for i, issue in enumerate(issues):
        _require(isinstance(issue, Mapping) and issue.get("severity") in (
            "fatal", "error", "warning", "information") and isinstance(issue.get("code"), str),
            f"{at}.issue[{i}]", "an issue needs a severity and a code")


# --------------------------------------------------------------------------- #
# Running them
# --------------------------------------------------------------------------- #
@dataclass
class _Signer:
    key: Any
    issuer: str
    kid: str | None
    algorithm: str
    jku: str | None = None

    def token(self, aud: str, key: Any = None) -> str:
        import jwt

        now = int(time.time())
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.kid:
            headers["kid"] = self.kid
        if self.jku:
            headers["jku"] = self.jku
        claims = {"iss": self.issuer, "aud": aud, "exp": now + 300, "iat": now,
                  "jti": str(uuid.uuid4()), "sub": self.issuer}
        return jwt.encode(claims, key if key is not None else self.key, algorithm=self.algorithm,
                          headers=headers)


def _load_key(path: str | Path) -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"the signing key {path} cannot be read (a PEM private key "
                              f"without a password): {type(exc).__name__}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "ES384"
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS384"
    raise InvalidArgument(f"the signing key {path} must be an EC (ES384) or RSA (RS384) key")


def _other_key(algorithm: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if algorithm == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _Run:
    """One run of the checks against ``base`` (``{base}/cds-services``)."""

    def __init__(self, base: str, version: str, record: list[dict[str, Any]],
                 signer: _Signer | None, client: httpx.Client, public_url: str) -> None:
        self.base = base.rstrip("/")
        self.public = public_url.rstrip("/")
        self.version = version
        self.record = record
        self.signer = signer
        self.client = client
        self.pid = next(r["id"] for r in record if r.get("resourceType") == "Patient")
        self.drafts = [r for r in record if r.get("status") == "draft"]
        self.results: dict[str, Check] = {}
        self.answers: list[tuple[str, str, dict[str, Any], Any]] = []  # sid, hook, body, answer

    def headers(self, path: str) -> dict[str, str]:
        out = {"Accept": "application/json"}
        if self.signer is not None:
            out["Authorization"] = f"Bearer {self.signer.token(self.public + path)}"
        return out

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(self.base + path, headers=kw.pop("headers", None)
                               or self.headers(path), **kw)

    def post(self, path: str, body: Any, *, raw: bytes | None = None,
             headers: Mapping[str, str] | None = None) -> httpx.Response:
        hdrs = dict(headers) if headers is not None else self.headers(path)
        hdrs["Content-Type"] = "application/json"
        return self.client.post(self.base + path, headers=hdrs,
                                content=raw if raw is not None else orjson.dumps(body))

    def note(self, name: str, run: Callable[[], str | None]) -> None:
        """Run one check: None passed, a string is why it does not apply."""
        try:
            why = run()
        except _Fail as fail:
            self.results[name] = Check(name, "failed", fail.path, fail.message)
        except httpx.HTTPError as exc:
            self.results[name] = Check(name, "failed", "$",
                                       f"the service could not be called: {type(exc).__name__}")
        else:
            self.results[name] = Check(name, "not-applicable", message=why) if why \
                else Check(name, "passed")

    def json(self, response: httpx.Response, at: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise _Fail(at, f"the answer ({response.status_code}) is not JSON") from None

    # -- the checks ------------------------------------------------------------- #
    def discovery(self) -> None:
        self.doc: Any = None

        def run() -> None:
            r = self.get("/cds-services")
            _require(r.status_code == 200, "$", f"GET /cds-services answered {r.status_code}")
            self.doc = self.json(r, "$")
            _check_discovery(self.doc, self.version)

        self.note("discovery", run)

    def services(self) -> list[Mapping[str, Any]]:
        if not isinstance(self.doc, Mapping) or not isinstance(self.doc.get("services"), list):
            return []
        return [s for s in self.doc["services"] if isinstance(s, Mapping)
                and isinstance(s.get("id"), str) and isinstance(s.get("hook"), str)]

    def templates(self) -> None:
        def run() -> str | None:
            services = self.services()
            if not services:
                return "no discovery document to read"
            for i, s in enumerate(self.doc["services"]):
                if not isinstance(s, Mapping) or not isinstance(s.get("prefetch"), Mapping):
                    continue
                for key, template in s["prefetch"].items():
                    if isinstance(template, str):
                        _check_template(template, str(s.get("hook")), self.version,
                                        f"$.services[{i}].prefetch.{key}")
            return None

        self.note("prefetch-templates", run)

    def context(self, hook: str) -> dict[str, Any]:
        ctx: dict[str, Any] = {"userId": "Practitioner/cdss-check", "patientId": self.pid}
        if hook in ("order-select", "order-sign"):
            ctx["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in self.drafts]}
        if hook == "order-select":
            ctx["selections"] = [f"{r['resourceType']}/{r['id']}" for r in self.drafts[:1]]
        return ctx

    def calls(self) -> None:
        def run() -> str | None:
            services = [s for s in self.services() if s["hook"] in _HOOK_CONTEXT]
            if not services:
                return "no service of patient-view, order-select or order-sign"
            if any(s["hook"] != "patient-view" for s in services) and not self.drafts:
                raise _Fail("$", "the patient has no draft order for the order hooks")
            today = datetime.now(timezone.utc).date()
            for s in services:
                ctx = self.context(s["hook"])
                prefetch: dict[str, Any] = {}
                for key, template in (s.get("prefetch") or {}).items():
                    query = _resolve(template, ctx, today) if isinstance(template, str) else None
                    if query is not None:  # else left out: the service may fetch it
                        prefetch[key] = _answer(self.record, query)
                body = {"hook": s["hook"], "hookInstance": str(uuid.uuid4()), "context": ctx,
                        "prefetch": prefetch}
                path = f"/cds-services/{s['id']}"
                r = self.post(path, body)
                _require(r.status_code == 200, f"POST {path}",
                         f"the {s['hook']} call answered {r.status_code}")
                answer = self.json(r, f"POST {path}")
                _require(isinstance(answer, Mapping) and isinstance(answer.get("cards"), list),
                         f"POST {path} $.cards", "the answer must hold a cards array")
                self.answers.append((s["id"], s["hook"], body, answer))
            return None

        self.note("hook-call", run)

    def cards(self) -> None:
        def run() -> str | None:
            if not self.answers:
                return "no hook call was answered"
            known = {f"{r.get('resourceType')}/{r.get('id')}" for r in self.record}
            for sid, _, _, answer in self.answers:
                for i, card in enumerate(answer["cards"]):
                    _check_card(card, f"POST /cds-services/{sid} $.cards[{i}]", known)
                for i, action in enumerate(answer.get("systemActions") or []):
                    _check_action(action, f"POST /cds-services/{sid} $.systemActions[{i}]",
                                  known)
            return None

        self.note("cards", run)

    def errors(self) -> None:
        def run() -> str | None:
            services = self.services()
            if not services:
                return "no service to call"
            path = f"/cds-services/{services[0]['id']}"
            r = self.post(path, None, raw=b'{"hook": "patient-view", "hookInstance": ')
            _require(400 <= r.status_code < 500, f"POST {path}",
                     f"malformed JSON answered {r.status_code}, not a 4xx")
            self._error_shape(r, f"POST {path}")
            missing = f"/cds-services/{uuid.uuid4().hex}"
            r = self.post(missing, {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                                    "context": {"patientId": self.pid}})
            _require(r.status_code == 404, f"POST {missing}",
                     f"an unknown service answered {r.status_code}, not 404")
            self._error_shape(r, f"POST {missing}")
            return None

        self.note("errors", run)

    def _error_shape(self, r: httpx.Response, at: str) -> None:
        _require("Traceback (most recent call last)" not in r.text, at,
                 "the error shows a stack trace")
        if self.version == "3.0":
            _operation_outcome(self.json(r, at), f"{at} $")

    def feedback(self) -> None:
        def run() -> str | None:
            card = next(((sid, c) for sid, _, _, a in self.answers for c in a["cards"]
                         if isinstance(c, Mapping) and _is_uuid(c.get("uuid"))), None)
            if card is None:
                return "no card with a uuid was returned to give feedback on"
            sid, shown = card
            path = f"/cds-services/{sid}/feedback"
            stamp = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
            r = self.post(path, {"feedback": [{"card": shown["uuid"], "outcome": "overridden",
                                               "outcomeTimestamp": stamp}]})
            _require(200 <= r.status_code < 300, f"POST {path}",
                     f"feedback on a card it returned answered {r.status_code}")
            r = self.post(path, {"feedback": [{"card": shown["uuid"], "outcome": "maybe"}]})
            _require(400 <= r.status_code < 500, f"POST {path}",
                     f"malformed feedback answered {r.status_code}, not a 4xx")
            self._error_shape(r, f"POST {path}")
            return None

        self.note("feedback", run)

    def authentication(self) -> None:
        def run() -> str | None:
            if self.signer is None:
                return "no signing key given: the service is not taken to need a JWT"
            refused = (401, 403)
            r = self.get("/cds-services", headers={"Accept": "application/json"})
            _require(r.status_code in refused, "GET /cds-services",
                     f"a call without a JWT answered {r.status_code}, not 401 or 403")
            services = self.services()
            if services:
                s = services[0]
                path = f"/cds-services/{s['id']}"
                body = {"hook": s["hook"], "hookInstance": str(uuid.uuid4()),
                        "context": self.context(s["hook"])}
                r = self.post(path, body, headers={})
                _require(r.status_code in refused, f"POST {path}",
                         f"a call without a JWT answered {r.status_code}, not 401 or 403")
                forged = self.signer.token(self.public + path, _other_key(self.signer.algorithm))
                r = self.post(path, body, headers={"Authorization": f"Bearer {forged}"})
                _require(r.status_code in refused, f"POST {path}",
                         f"a JWT signed by another key answered {r.status_code}, "
                         "not 401 or 403")
            return None

        self.note("authentication", run)


def check_service(url: str, *, version: str = "2.0", patient: str | Path | None = None,
                  key: str | Path | None = None, issuer: str | None = None,
                  kid: str | None = None, jku: str | None = None,
                  public_url: str | None = None, timeout: float = 30.0) -> ConformanceReport:
    """Run every check of :data:`CHECKS` against the CDS Hooks service at
    ``url`` (its base URL: discovery is ``{url}/cds-services``) as a client
    of CDS Hooks ``version`` (``2.0`` or ``3.0``).

    ``patient`` is a JSON file (a Bundle or a list of resources with one
    Patient; resources with status ``draft`` are the draft orders) the calls
    are built from; default: :func:`generated_patient`. ``key`` (a PEM private
    key, EC for ES384 or RSA for RS384), ``issuer`` and ``kid`` sign a JWT for
    every call, as a trusted client would (``jku`` names the key set URL in
    its header); with a key the service is taken to need a JWT, and calls
    without one must be refused. ``public_url`` is the base the tokens'
    ``aud`` names when the service knows itself by another URL than ``url``;
    ``timeout`` bounds each request (seconds); redirects are not followed.
    :class:`~cdss.errors.InvalidArgument` for a bad argument or file.
    """
    if version not in ("2.0", "3.0"):
        raise InvalidArgument(f"version must be '2.0' or '3.0', not {version!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(f"the service URL must be an absolute http(s) URL, not {url!r}")
    record = _read_patient(patient) if patient is not None else generated_patient()
    signer = None
    if key is not None:
        if not issuer:
            raise InvalidArgument("a signing key needs the issuer its tokens name (--issuer)")
        loaded, algorithm = _load_key(key)
        signer = _Signer(loaded, issuer, kid, algorithm, jku)
    elif issuer is not None:
        raise InvalidArgument("an issuer needs a signing key (--key)")
    report = ConformanceReport(url=url.rstrip("/"), version=version)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        run = _Run(url, version, record, signer, client, public_url or url)
        run.discovery()
        run.templates()
        run.calls()
        run.cards()
        run.errors()
        run.feedback()
        run.authentication()
    report.checks = [run.results[name] for name in CHECKS]
    return report
