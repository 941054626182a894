"""Checks on what the service writes down: its log lines and its store."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: What the clock writes: timestamps, and a log line's duration.
_CLOCK = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"
                    r'|"duration_ms":[0-9.eE+-]+')


def secrets_in(text: str, secrets: Iterable[str]) -> list[str]:
    """The ``secrets`` found in ``text``, what the clock wrote left out: a
    timestamp's milliseconds or a duration may read like a lab value
    (``...:53.137+00:00`` holds ``3.137``)."""
    scrubbed = _CLOCK.sub("", text)
    return [secret for secret in secrets if secret in scrubbed]
