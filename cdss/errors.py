"""The error hierarchy of cdss.

Every error cdss raises on purpose is a :class:`CDSSError`. Each branch also
subclasses the matching built-in exception, so callers that already catch
``ValueError`` or ``LookupError`` keep working. Errors carry the data a caller
needs to point at the problem (resource type, id and field; rule file, rule id
and field) as attributes, not only inside the message.
"""

from __future__ import annotations

__all__ = [
    "CDSSError",
    "DependencyError",
    "EngineError",
    "InputError",
    "InvalidArgument",
    "RulesetError",
    "RulesetNotFoundError",
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
