"""The bounds check's look at JSON text: when it finds a record clean, the walk
over the parsed record finds nothing either, and it never hides a problem."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from cdss.errors import InputError
from cdss.intake._guard import (
    MAX_CODE_LENGTH,
    MAX_DEPTH,
    _text_is_clean,
    check_record,
    parse_and_check,
)


def _nested(levels: int) -> list[Any]:
    """Arrays nested ``levels`` deep."""
    node: list[Any] = []
    for _ in range(levels - 1):
        node = [node]
    return node


def _bundle(*resources: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", **fields,
            "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r}
                      for i, r in enumerate(resources)]}


def _obs(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3",
                                 "display": "Potassium [Moles/volume] in Serum"}]},
            "subject": {"reference": "Patient/p1"}, **fields}


def _walk_finds(text: bytes) -> bool:
    """Whether the walk over the parsed text finds a problem (raises or names one)."""
    try:
        return bool(check_record(orjson.loads(text), parsed=True))
    except InputError:  # a refused record: a problem found
        return True


def _texts(record: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(record), json.dumps(record, indent=2).encode(),
            json.dumps(record, ensure_ascii=True).encode(),
            json.dumps(record, separators=(" ,\n", " :\t ")).encode()]


LONG = "9" * (MAX_CODE_LENGTH + 1)
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (record, a problem in it)
    "plain": (_bundle(_obs()), False),
    "a code at the bound": (_bundle(_obs(id="i" * 64), code={"coding": [
        {"system": "s", "code": "c" * MAX_CODE_LENGTH}]}), False),
    "a code beyond the bound": (_bundle(_obs(code={"coding": [{"system": "s", "code": LONG}]})),
                                True),
    "an id beyond the bound": (_bundle(_obs(id=LONG)), True),
    "the Bundle's id beyond the bound": (_bundle(_obs(), id=LONG), True),
    "a reference beyond the bound": (_bundle(_obs(subject={"reference": "Patient/" + LONG})),
                                     True),
    "a long code of quotes and backslashes": (
        _bundle(_obs(code={"coding": [{"code": '"\\' * 130}]})), True),
    "a short code of quotes and backslashes": (
        _bundle(_obs(code={"coding": [{"code": '"\\' * 60}]})), False),
    "a long code of non-ASCII text within the bound": (
        _bundle(_obs(code={"coding": [{"code": "é" * MAX_CODE_LENGTH}]})), False),
    "a long code of non-ASCII text beyond the bound": (
        _bundle(_obs(code={"coding": [{"code": "é" * (MAX_CODE_LENGTH + 1)}]})), True),
    "long free text": (_bundle(_obs(note=[{"text": "t" * 5000}],
                                    text={"div": '<div a="b">' + "x" * 900 + "</div>"})), False),
    "long text in an array": (_bundle(_obs(identifier=["i" * 900, "code", LONG])), False),
    "brackets and quotes in text": (
        _bundle(_obs(note=[{"text": '}}]] "{[ \\" ' * 40}]), code={"text": "[[[[" * 70}),
        False),
    "a key that ends like a bounded one": (_bundle(_obs(valueCode=LONG, xid=LONG)), False),
    "nested to the bound": (_bundle(_obs(extension=[_nested(MAX_DEPTH - 5)])), False),
    "nested beyond the bound": (_bundle(_obs(extension=[_nested(MAX_DEPTH - 4)])), True),
    "the Bundle nested beyond the bound": (_bundle(_obs(), meta=_nested(MAX_DEPTH + 1)), True),
    "deep brackets in a string": (_bundle(_obs(note=[{"text": "[" * 200 + "]" * 200}])),
                                  False),
    "many escapes": (_bundle(*[_obs(id=f"o{i}", note=[{"text": 'a "b" \\ c\n'}])
                               for i in range(100)]), False),
    "many escapes and a long code": (
        _bundle(*[_obs(id=f"o{i}", note=[{"text": 'a "b" \\ c\n'}]) for i in range(100)],
                _obs(id="o-last", code={"coding": [{"code": '"' + LONG}]})), True),
    "a single resource": (_obs(), False),
    "a single resource with a long id": (_obs(id=LONG), True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_text_look_agrees_with_the_walk(name: str) -> None:
    record, problem = CASES[name]
    for text in _texts(record):
        assert _walk_finds(text) is problem, text[:200]
        if problem:
            assert not _text_is_clean(text)
        if _text_is_clean(text):
            assert not _walk_finds(text)


def test_a_bounded_key_written_with_escapes_is_looked_at() -> None:
    text = orjson.dumps(_bundle(_obs(code={"coding": [{"system": "s", "cod": LONG}]})))
    text = text.replace(b'"cod"', b'"co\\u0064e"')
    assert orjson.loads(text)["entry"][0]["resource"]["code"]["coding"][0]["code"] == LONG
    assert not _text_is_clean(text)
    assert _walk_finds(text)


def test_parse_and_check_gives_what_the_walk_gives() -> None:
    for name, (record, _) in CASES.items():
        for text in _texts(record):
            parsed = orjson.loads(text)
            try:
                expected: Any = check_record(parsed, parsed=True)
            except InputError as exc:
                expected = repr(exc)
            try:
                got: Any = parse_and_check(text)
                assert got[0] == parsed, name
                got = got[1]
            except InputError as exc:
                got = repr(exc)
            assert repr(got) == repr(expected), name


def test_random_texts_never_hide_a_problem() -> None:
    rng = random.Random(7)
    pieces = ['"', "\\", "[", "]", "{", "}", "a", "é", " ", "\n"]
    keys = ["id", "code", "system", "unit", "reference", "resourceType", "text", "div"]
    for _ in range(300):
        def value(depth: int) -> Any:
            roll = rng.random()
            if depth > 70 or roll < 0.4:
                length = rng.choice([1, 10, 255, 256, 257, 300])
                return "".join(rng.choice(pieces) for _ in range(length))
            if roll < 0.7:
                return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(1, 3))}
            return [value(depth + 1) for _ in range(rng.randint(1, 2))]
        record = {"resourceType": "Observation", "extension": [value(1)]}
        for text in _texts(record):
            if _walk_finds(text):
                assert not _text_is_clean(text), text[:300]
