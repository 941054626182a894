"""The look at a record before anything parses it further: bounds no real
record reaches, so that no input can crash or hang intake, facts or units.

One pass over the parsed JSON (or the Python objects given), with an explicit
stack rather than recursion, so its cost is linear in the size of the record
and it cannot itself exceed the interpreter's recursion limit. It refuses:

- nesting deeper than :data:`MAX_DEPTH` objects and arrays;
- a code, unit, system, id, reference or resourceType longer than
  :data:`MAX_CODE_LENGTH` characters (the strings intake, the terminology and
  the unit parser read; free text is not bounded);
- a number that is not finite as a double (``10**400``, NaN, infinity);
- a string or key holding a lone surrogate (it cannot be written as UTF-8);
- an object key that is not text, a value that is not a JSON value.

A problem inside one resource is that resource's :class:`InputError` (type,
id when it is readable, and the field's path), so that intake can leave the
resource out with the reason; a problem outside every resource (the Bundle's
own fields) refuses the record.

A record that arrives as JSON text is first looked at in its bytes
(:func:`_text_is_clean`, a few passes of C-level byte operations): when they
show that it nests no deeper than :data:`MAX_DEPTH` and holds no long string
under a bounded key, nothing below can be a problem and the walk is spared.
Otherwise, or when the text cannot tell, the parsed record is walked as above.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from cdss.errors import InputError

__all__ = ["MAX_CODE_LENGTH", "MAX_DEPTH", "Problems", "check_record", "parse_and_check"]

#: Objects and arrays nested in a record, the Bundle's own levels included. A
#: real FHIR record stays below 20 (a Bundle entry's resource is at level 3).
MAX_DEPTH = 64
#: Characters of a code, unit, system, id, reference or resourceType. FHIR ids
#: hold at most 64; real codes and code-system URLs stay well below 200.
MAX_CODE_LENGTH = 256
_BOUNDED_KEYS = frozenset({"id", "code", "system", "unit", "reference", "resourceType"})
_FLOAT_MAX = 1.7976931348623157e308

#: Resource-level problems by position in the record (what ``record_entries``
#: yields as position), each an :class:`InputError` naming the resource.
Problems = dict[int, InputError]


def _resource_type(node: Any) -> str | None:
    rtype = node.get("resourceType") if isinstance(node, Mapping) else None
    if isinstance(rtype, str) and len(rtype) <= MAX_CODE_LENGTH and _encodable(rtype):
        return rtype
    return None


def _resource_id(node: Any) -> str | None:
    rid = node.get("id") if isinstance(node, Mapping) else None
    if isinstance(rid, str) and len(rid) <= MAX_CODE_LENGTH and _encodable(rid):
        return rid
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _problem(node: Any, key: Any, value: Any, depth: int) -> str | None:
    """What is wrong with ``value`` at ``key`` (None when nothing)."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} objects and arrays"
    if isinstance(value, str):
        if key in _BOUNDED_KEYS and len(value) > MAX_CODE_LENGTH:
            return f"{len(value):,} characters; at most {MAX_CODE_LENGTH} are read here"
        if not _encodable(value):
            return "text holding a lone surrogate, which is not valid Unicode"
        return None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if -_FLOAT_MAX <= value <= _FLOAT_MAX:
            return None
        return "a number beyond the range of a double"
    if isinstance(value, (float, Decimal)):
        if math.isfinite(value) and abs(float(value)) <= _FLOAT_MAX:
            return None
        return f"{value!r} is not a finite JSON number"
    if isinstance(value, (Mapping, list, tuple)):
        return None
    return f"a {type(value).__name__} is not a JSON value"


def _field(path: list[Any]) -> str:
    shown = ".".join(str(p) for p in path[:8])
    return (shown + ("..." if len(path) > 8 else "")) or "(the resource)"


def _clean(root: Any, base_depth: int) -> bool:
    """True when nothing below ``root`` can be a problem, looked at cheaply:
    plain dicts, lists, ASCII text, and numbers and constants of the types
    orjson gives (exact type checks, no ABCs). Anything else (a deep level, a
    long bounded string, a number to check, another type) answers False, and
    :func:`_walk` looks again to name the problem: this only spares it the
    records with none, which are nearly all."""
    bounded, limit, max_depth = _BOUNDED_KEYS, MAX_CODE_LENGTH, MAX_DEPTH
    stack: list[tuple[Any, int]] = [(root, base_depth)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is dict:
            pairs: Any = node.items()
        elif kind is list:
            pairs = zip(itertools.repeat(None), node)
        else:
            return False
        for key, value in pairs:
            if key is not None and (type(key) is not str or not key.isascii()):
                return False
            vtype = type(value)
            if vtype is str:
                if (key is not None and len(value) > limit and key in bounded) or (
                        not value.isascii() and not _encodable(value)):
                    return False
            elif vtype is dict or vtype is list:
                if depth >= max_depth:
                    return False
                stack.append((value, depth + 1))
            elif vtype is float:
                if not math.isfinite(value):
                    return False
            elif not (vtype is bool or value is None
                      or (vtype is int and -_FLOAT_MAX <= value <= _FLOAT_MAX)):
                return False
    return True


def _clean_json(root: Any, base_depth: int) -> bool:
    """:func:`_clean` for what orjson parsed: its keys are text, its text is
    valid Unicode and its numbers are finite doubles or 64-bit integers, so
    only the depth and the bounded strings are left to look at."""
    bounded, limit, max_depth = _BOUNDED_KEYS, MAX_CODE_LENGTH, MAX_DEPTH
    stack: list[tuple[Any, int]] = [(root, base_depth)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            for key, value in node.items():
                vtype = type(value)
                if vtype is dict or vtype is list:
                    if depth >= max_depth:
                        return False
                    stack.append((value, depth + 1))
                elif vtype is str and len(value) > limit and key in bounded:
                    return False
        else:
            for value in node:
                vtype = type(value)
                if vtype is dict or vtype is list:
                    if depth >= max_depth:
                        return False
                    stack.append((value, depth + 1))
    return True


def _walk(root: Any, base_depth: int, parsed: bool = False) -> tuple[list[Any], str] | None:
    """The first problem below ``root`` (its path and what), or None. Depth
    counts from ``base_depth``, the level ``root`` sits at in the record;
    ``parsed``: ``root`` is what orjson parsed (see :func:`_clean_json`)."""
    if _clean_json(root, base_depth) if parsed else _clean(root, base_depth):
        return None
    stack: list[tuple[Any, int, list[Any]]] = [(root, base_depth, [])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, Mapping):
            items: Any = node.items()
        else:
            items = enumerate(node)
        for key, value in items:
            if isinstance(node, Mapping) and not isinstance(key, str):
                return path, f"key {type(key).__name__} is not text"
            if isinstance(key, str) and not _encodable(key):
                return path, "a key holding a lone surrogate, which is not valid Unicode"
            here = [*path, key]
            is_container = isinstance(value, (Mapping, list, tuple))
            what = _problem(node, key, value, depth + 1 if is_container else depth)
            if what is not None:
                return here, what
            if is_container:
                stack.append((value, depth + 1, here))
    return None


def _resource_error(resource: Any, found: tuple[list[Any], str]) -> InputError:
    path, what = found
    return InputError(what, resource_type=_resource_type(resource),
                      resource_id=_resource_id(resource), field=_field(path))


def check_record(record: Any, *, parsed: bool = False) -> Problems:
    """Look at a parsed record (a Bundle, a resource or a list of resources).

    Returns the problems found inside resources, by position; raises
    :class:`InputError` for a problem outside every resource, where the
    record as a whole is refused. ``parsed``: the record is what orjson
    parsed from JSON text, whose keys, text and numbers it has checked.
    """
    problems: Problems = {}
    if isinstance(record, Mapping) and record.get("resourceType") == "Bundle":
        entries = record.get("entry")
        rest = {k: v for k, v in record.items() if k != "entry"}
        found = _walk(rest, 1, parsed)
        if found is not None:
            raise InputError(found[1], resource_type="Bundle", resource_id=_resource_id(record),
                             field=_field(found[0]))
        if not isinstance(entries, list):
            return problems
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                continue
            outside = {k: v for k, v in entry.items() if k != "resource"}
            found = _walk(outside, 3, parsed)
            if found is not None:
                raise InputError(found[1], resource_type="Bundle",
                                 resource_id=_resource_id(record),
                                 field=_field([f"entry[{i}]", *found[0]]))
            resource = entry.get("resource")
            if isinstance(resource, Mapping):
                found = _walk(resource, 4, parsed)
                if found is not None:
                    problems[i] = _resource_error(resource, found)
        return problems
    if isinstance(record, Mapping):
        found = _walk(record, 1, parsed)
        if found is not None:
            problems[0] = _resource_error(record, found)
    elif isinstance(record, (list, tuple)):
        for i, item in enumerate(record):
            if isinstance(item, Mapping):
                found = _walk(item, 2)
                if found is not None:
                    problems[i] = _resource_error(item, found)
            elif not isinstance(item, (str, bytes)):
                what = _problem(record, i, item, 1)
                if what is not None:
                    problems[i] = InputError(what, field=f"item {i}")
    return problems


# What the byte-level look keeps: brackets (either kind, as "[" and "]") and
# quotes; and, for string lengths, quotes against everything else ("a").
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(i for i in range(256) if i not in b'{}[]"')
_QUOTES = bytes(i if i == ord('"') else ord("a") for i in range(256))
_QUOTED = re.compile(rb'"[^"]*"')
_LONG = b'"' + b"a" * (MAX_CODE_LENGTH + 1)
_BOUNDED_RAW = frozenset(key.encode() for key in _BOUNDED_KEYS)
_JSON_SPACE = b" \t\n\r"
#: Escapes patched one by one below this many backslashes; above, in two passes.
_FEW_ESCAPES = 64


def _unescaped(data: bytes) -> bytes:
    """``data`` (JSON text) with the same length and every quote left in it a
    string's delimiter: each escape becomes two neutral bytes. Backslashes
    occur only inside strings, where each starts an escape of the next
    character, so a left-to-right look pairs them right."""
    at = data.find(b"\\")
    if at == -1:
        return data
    patched = bytearray(data)
    for _ in range(_FEW_ESCAPES):
        patched[at:at + 2] = b"__"
        at = data.find(b"\\", at + 2)
        if at == -1:
            return bytes(patched)
    # many escapes: only those of a quote or a backslash matter here
    return data.replace(b"\\\\", b"__").replace(b'\\"', b"__")


def _text_is_clean(data: bytes, levels: int = MAX_DEPTH) -> bool:
    """True when the JSON text ``data`` (which orjson parsed) holds nothing
    :func:`_clean_json` refuses: no object or array deeper than ``levels``
    (:data:`MAX_DEPTH` for a record; fewer for a resource that will sit
    inside a Bundle) and no string of more than :data:`MAX_CODE_LENGTH`
    characters under a bounded key. False when it may: the walk then looks,
    and names the problem.

    Depth: no more brackets than ``levels`` at all, else the brackets
    outside strings, with every innermost pair removed once per level.
    Lengths: a string holds no more characters than bytes, so a quote
    followed by more than :data:`MAX_CODE_LENGTH` bytes without a quote is
    looked at (the key before it); no such run, no long string.
    """
    text = _unescaped(data)
    if data.count(b"{") + data.count(b"[") > levels:
        brackets = text.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
        if b'"' in brackets:  # strings that hold brackets: drop them with their content
            brackets = _QUOTED.sub(b"", brackets)
        for _ in range(levels):
            if not brackets:
                break
            brackets = brackets.replace(b"[]", b"")
        if brackets:
            return False
    runs = text.translate(_QUOTES)
    at = runs.find(_LONG)
    while at != -1:
        if _bounded_value_at(data, text, at):
            return False
        at = runs.find(_LONG, at + 1)
    return True


def _bounded_value_at(data: bytes, text: bytes, at: int) -> bool:
    """Whether the quote at ``at`` may open the value of a bounded key (True
    when the text cannot tell). ``text`` is ``data`` with escapes neutral."""
    start = max(0, at - 400)
    before = text[start:at].rstrip(_JSON_SPACE)
    if not before:
        return start > 0  # only blanks in sight: cannot tell
    if not before.endswith(b":"):
        return False  # an array item, or not a string's first quote
    before = before[:-1].rstrip(_JSON_SPACE)
    if not before.endswith(b'"'):
        return True  # cannot tell
    opening = before.rfind(b'"', 0, len(before) - 1)
    if opening == -1:
        return start > 0 and len(before) < 100  # a key this long is no bounded key
    key = data[start + opening + 1:start + len(before) - 1]
    return b"\\" in key or key in _BOUNDED_RAW


def _loads(data: str | bytes | bytearray) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # also: deeper than 1,024, lone surrogates
        raise InputError(f"malformed JSON: {exc}") from None


def parse_and_check(record: Any) -> tuple[Any, Problems]:
    """``record`` parsed where it is JSON text (a list's items too), and the
    problems :func:`check_record` finds in it."""
    if isinstance(record, memoryview):
        record = bytes(record)
    if isinstance(record, (str, bytes, bytearray)):
        text = record
        record = _loads(text)
        if type(record) is dict and _text_is_clean(
                text.encode() if isinstance(text, str) else bytes(text)):
            return record, {}
        return record, check_record(record, parsed=True)
    if isinstance(record, (list, tuple)) and any(
            isinstance(item, (str, bytes)) for item in record):
        record = [_loads(item) if isinstance(item, (str, bytes)) else item for item in record]
    return record, check_record(record)
