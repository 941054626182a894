"""Every error cdss raises on purpose, in one tree.

Each error is a :class:`CDSSError`; most also subclass the matching built-in
exception, so callers that already catch ``ValueError`` or ``LookupError``
keep working. Errors carry the data a caller needs to point at the problem
(resource type, id and field; rule file, rule id and field) as attributes,
not only inside the message. A test keeps this tree and the classes below
the same::

    CDSSError
    ├── InvalidArgument (TypeError)       a public function called with a bad argument
    ├── InputError (ValueError)           patient data that cannot be used
    ├── RulesetError (ValueError)         a ruleset file that cannot load
    │   └── RulesetNotFoundError (LookupError)
    ├── EngineError (RuntimeError)        the rule engine failed on a patient
    ├── DependencyError (ImportError)     a library cdss needs is missing or broken
    ├── FhirOutputError (ValueError)      a Bundle that does not validate
    ├── HookRequestError (ValueError)     a CDS Hooks call that gets no cards
    ├── ServiceError                      the CDS Hooks service (extra ``service``)
    │   ├── ServiceConfigError (ValueError)
    │   ├── AuthenticationFailed
    │   ├── ReplayCacheFull
    │   └── StoreError                    the service's store file cannot be read
    └── CohortError                       a cohort screen that cannot run (extra ``cohort``)
        └── ExpectationsError (ValueError)  a diff's expectations file that cannot be read
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "CDSSError",
    "CohortError",
    "DependencyError",
    "EngineError",
    "ExpectationsError",
    "FhirOutputError",
    "HookRequestError",
    "InputError",
    "InvalidArgument",
    "ReplayCacheFull",
    "RulesetError",
    "RulesetNotFoundError",
    "ServiceConfigError",
    "ServiceError",
    "StoreError",
]


class CDSSError(Exception):
    """Root of every error raised by cdss."""


class InvalidArgument(CDSSError, TypeError):
    """Raised when a public function is called with an argument it cannot accept."""


class InputError(CDSSError, ValueError):
    """Raised when patient data cannot be used: malformed JSON, an invalid FHIR
    resource, a value that is not a finite number, a record holding two patients.

    ``resource_type``, ``resource_id`` and ``field`` say where; any may be
    ``None`` when the problem is the record as a whole.
    """

    def __init__(
        self,
        message: str,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.field = field
        self.reason = message
        where = ""
        if resource_type or resource_id:
            where = f"{resource_type or 'resource'}/{resource_id or '?'}"
        if field:
            where = f"{where} field {field!r}" if where else f"field {field!r}"
        super().__init__(f"{where}: {message}" if where else message)


class RulesetError(CDSSError, ValueError):
    """Raised when a ruleset file is invalid; always at load time, never during
    an evaluation. ``path``, ``rule_id`` and ``field`` say where, and
    ``suggestion`` holds a likely intended name for a misspelt one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        rule_id: str | None = None,
        field: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.path = path
        self.rule_id = rule_id
        self.field = field
        self.suggestion = suggestion
        self.reason = message
        parts = [p for p in (path, f"rule {rule_id}" if rule_id else None) if p]
        if field:
            parts.append(f"field {field!r}")
        text = f"{': '.join(parts)}: {message}" if parts else message
        if suggestion:
            text += f" (did you mean {suggestion!r}?)"
        super().__init__(text)


class RulesetNotFoundError(RulesetError, LookupError):
    """Raised when no ruleset file matches the requested ``id`` or ``id@version``."""


class EngineError(CDSSError, RuntimeError):
    """Raised when the rule engine fails while evaluating a patient (an action
    error or a state the engine reported), so that no result silently misses a
    rule. ``rule_id`` names the rule when it is known.
    """

    def __init__(self, message: str, *, rule_id: str | None = None) -> None:
        self.rule_id = rule_id
        super().__init__(f"rule {rule_id}: {message}" if rule_id else message)


class DependencyError(CDSSError, ImportError):
    """Raised at first use when a library cdss needs is missing or cannot load
    (a broken installation, never a data problem): the message names the
    package, the installed versions and how to fix it. ``package`` names it.
    """

    def __init__(self, message: str, *, package: str) -> None:
        self.package = package
        super().__init__(message)


class FhirOutputError(CDSSError, ValueError):
    """Raised when a Bundle does not validate as FHIR R4 or a reference inside
    it does not resolve. ``resource`` names the offending entry
    (``Type/id``) when known."""

    def __init__(self, message: str, *, resource: str | None = None) -> None:
        self.resource = resource
        self.reason = message
        super().__init__(f"{resource}: {message}" if resource else message)


class HookRequestError(CDSSError, ValueError):
    """A CDS Hooks request that cannot be answered with cards. ``status`` is the
    HTTP status to answer with: 400 for a malformed request or unusable data,
    404 for an unknown service, 412 when the patient's data can be had neither
    from ``prefetch`` nor from the FHIR server."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        self.reason = message
        super().__init__(message)


class ServiceError(CDSSError):
    """Raised by the CDS Hooks service (extra ``service``) before any patient is
    evaluated: an unusable configuration, a caller that is not trusted, a
    replay cache that is full."""


class ServiceConfigError(ServiceError, ValueError):
    """The service's configuration is missing or unusable. ``field`` names the
    offending setting (``issuers.0.jwks_url``) when one is to blame."""

    def __init__(self, message: str, *, field: str | None = None,
                 source: str | None = None) -> None:
        self.field = field
        self.source = source
        self.reason = message
        where = ": ".join(p for p in (source, f"field {field!r}" if field else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class AuthenticationFailed(ServiceError):
    """A call's JWT is missing or not acceptable. ``reason`` says why, for the
    service log only: it never reaches the caller, and never holds the token."""

    def __init__(self, reason: str, *, issuer: str | None = None) -> None:
        self.reason = reason
        self.issuer = issuer
        super().__init__(reason)


class ReplayCacheFull(ServiceError):
    """The replay cache holds as many unexpired ``jti`` as it may: the call is
    refused (503) rather than forgetting a ``jti`` that could then be replayed."""


class StoreError(ServiceError):
    """The service's store (its SQLite file of feedback, cards issued and
    shadow differences) cannot be read by a report: missing, not a store, or
    of a schema version this cdss does not know. (At start, an unusable store
    path is a :class:`ServiceConfigError`.)"""


class CohortError(CDSSError):
    """Raised when a cohort screen cannot run: no input, a missing file, an
    output folder holding another screen, worker processes that keep dying
    on no patient in particular."""


class ExpectationsError(CohortError, ValueError):
    """Raised when the expectations file of a version diff (``cdss diff
    --expect``) cannot be read: not YAML, not a mapping, an unknown field or
    a value of the wrong kind. ``path`` is the file and ``field`` the dotted
    name of the field at fault (None when the file as a whole is)."""

    def __init__(self, message: str, *, path: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.field = field
