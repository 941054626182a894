"""No input crashes or hangs cdss: what breaks intake's bounds is an InputError
naming the resource and field, at once, in strict and lean mode.

With ``on_invalid="refuse"`` the error is raised; with the default
``"leave-out"`` a hostile resource is left out with that reason and the
patient is assessed on the rest, while a hostile Bundle (outside every
resource) refuses the record. A property test mutates the example records
(deep nesting, surrogates, huge numbers, huge strings, wrong types, NaN and
infinity) under a per-case time bound, through ``evaluate`` and through the
service's HTTP app: anything raised is a CDSSError, no call answers 500.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cdss
from cdss.errors import CDSSError, InputError
from cdss.intake import read_record
from cdss.intake._guard import MAX_CODE_LENGTH, MAX_DEPTH
from cdss.units import MAX_UNIT_LENGTH
from tests.support.fuzz import Hang, bounded, examples, mutate, prefetch_call

AS_OF = "2026-03-01"
MODES = ("strict", "lean")
#: Far above what any case needs once warm (a few milliseconds), far below a hang.
BOUND_SECONDS = 10.0
EXAMPLES = examples()


def _example() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLES[1])  # an older patient: labs with quantities


def _lab(record: dict[str, Any]) -> dict[str, Any]:
    return next(e["resource"] for e in record["entry"] if "valueQuantity" in e["resource"])


def _nest(value: Any, depth: int, *, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


def _id_nested_1250_dicts_deep() -> dict[str, Any]:
    record = _example()
    _lab(record)["id"] = _nest("x", 1_250, as_list=False)
    return record


def _id_with_a_lone_surrogate() -> dict[str, Any]:
    record = _example()
    _lab(record)["id"] = "\ud800mg"
    return record


def _value_of_10_to_the_400() -> dict[str, Any]:
    record = _example()
    _lab(record)["valueQuantity"]["value"] = 10**400
    return record


def _code_of_a_million_digits() -> dict[str, Any]:
    record = _example()
    _lab(record)["valueQuantity"]["code"] = "1" * 1_000_000
    return record


RESOURCE_REPRODUCERS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "id nested 1,250 dicts deep": (_id_nested_1250_dicts_deep, "id."),
    "id with a lone surrogate": (_id_with_a_lone_surrogate, "id"),
    "valueQuantity.value of 10**400": (_value_of_10_to_the_400, "valueQuantity.value"),
    "valueQuantity.code of 1,000,000 digits": (_code_of_a_million_digits, "valueQuantity.code"),
}


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    # the first strict evaluation imports fhir.resources: not part of any case's time
    for mode in MODES:
        cdss.evaluate(_example(), mode=mode, as_of=AS_OF)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", RESOURCE_REPRODUCERS)
def test_reproducer_is_an_input_error_naming_resource_and_field(name: str, mode: str) -> None:
    build, field = RESOURCE_REPRODUCERS[name]
    record = build()

    def refuse() -> BaseException:
        with pytest.raises(InputError) as caught:
            cdss.evaluate(record, mode=mode, as_of=AS_OF, on_invalid="refuse")
        return caught.value

    kind, error = bounded(refuse, BOUND_SECONDS)
    assert kind == "ok", error
    assert error.resource_type == "Observation"
    assert error.field is not None and error.field.startswith(field)

    kind, result = bounded(lambda: _timed(lambda: cdss.evaluate(record, mode=mode, as_of=AS_OF)),
                           BOUND_SECONDS)
    assert kind == "ok", result
    assessment, seconds = result
    assert seconds < 1.0
    assert assessment.incomplete
    (left,) = assessment.left_out
    assert left.resource.startswith("Observation/")
    assert left.field is not None and left.field.startswith(field)
    assessment.to_json()  # writes: nothing unwritable reached the result


@pytest.mark.parametrize("mode", MODES)
def test_bundle_type_nested_1000_lists_deep_refuses_the_record(mode: str) -> None:
    record = _example()
    record["type"] = _nest("collection", 1_000, as_list=True)
    for on_invalid in ("refuse", "leave-out"):
        start = time.perf_counter()
        with pytest.raises(InputError) as caught:
            cdss.evaluate(record, mode=mode, as_of=AS_OF, on_invalid=on_invalid)
        assert time.perf_counter() - start < 1.0
        assert caught.value.resource_type == "Bundle"
        assert caught.value.field is not None and caught.value.field.startswith("type.")
        assert f"deeper than {MAX_DEPTH}" in str(caught.value)


@pytest.mark.parametrize("mode", MODES)
def test_the_same_reproducers_as_json_text(mode: str) -> None:
    # text cannot hold a lone surrogate or 10**400 as orjson reads it: malformed JSON
    record = _example()
    _lab(record)["valueQuantity"]["code"] = "1" * 1_000_000
    _lab(record)["id"] = _nest("x", 900, as_list=False)  # orjson reads up to 1,024 levels
    text = _dumps_deep(record)
    assessment = cdss.evaluate(text, mode=mode, as_of=AS_OF)
    (left,) = assessment.left_out  # the first of its two problems found
    assert left.field is not None
    assert left.field.startswith("id.") or left.field == "valueQuantity.code"
    with pytest.raises(InputError, match="malformed JSON"):
        cdss.evaluate(b'{"resourceType": "Patient", "id": "\\ud800"}', mode=mode)
    with pytest.raises(InputError, match="malformed JSON"):
        cdss.evaluate(b'{"resourceType": "Patient", "id": "p", "x": 1' + b"0" * 400 + b"}",
                      mode=mode)


class _Text(str):
    """JSON text already written (a bracket, a comma, a key)."""


def _dumps_deep(value: Any) -> bytes:
    """JSON text of ``value`` at any depth: orjson writes at most 255 levels and the
    standard library's encoder recurses in C (3,000 levels exceed its limit on some
    Pythons), so containers are written here with a stack and scalars by ``json``."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Text("{")]
            for i, (key, inner) in enumerate(item.items()):
                parts += [_Text(("," if i else "") + json.dumps(key, ensure_ascii=True) + ":"),
                          inner]
            stack.extend(reversed([*parts, _Text("}")]))
        elif isinstance(item, list):
            parts = [_Text("[")]
            for i, inner in enumerate(item):
                parts += [_Text(",")] if i else []
                parts.append(inner)
            stack.extend(reversed([*parts, _Text("]")]))
        else:
            out.append(json.dumps(item, ensure_ascii=True))
    return "".join(out).encode()


@pytest.mark.parametrize("mode", MODES)
def test_a_hostile_patient_refuses_the_record(mode: str) -> None:
    record = _example()
    record["entry"][0]["resource"]["id"] = "\ud800"
    with pytest.raises(InputError) as caught:
        cdss.evaluate(record, mode=mode, as_of=AS_OF)
    assert caught.value.field == "id"


def test_bounds_leave_real_records_alone() -> None:
    for record in EXAMPLES:
        for mode in MODES:
            assert not read_record(record, mode=mode, on_invalid="refuse").left_out


@pytest.mark.parametrize("mode", MODES)
def test_a_code_at_the_bound_is_read_and_one_beyond_is_not(mode: str) -> None:
    record = _example()
    _lab(record)["code"]["coding"][0]["code"] = "9" * MAX_CODE_LENGTH
    assert not cdss.evaluate(record, mode=mode, as_of=AS_OF).left_out
    _lab(record)["code"]["coding"][0]["code"] = "9" * (MAX_CODE_LENGTH + 1)
    (left,) = cdss.evaluate(record, mode=mode, as_of=AS_OF).left_out
    assert left.field == "code.coding.0.code"


def test_a_unit_longer_than_any_ucum_unit_is_indeterminate_at_once() -> None:
    record = _example()
    _lab(record)["valueQuantity"]["unit"] = "(" * (MAX_UNIT_LENGTH + 100)
    _lab(record)["valueQuantity"]["code"] = "(" * (MAX_UNIT_LENGTH + 100)
    assessment, seconds = _timed(lambda: cdss.evaluate(record, as_of=AS_OF))
    assert seconds < 1.0
    assert any("longer than any UCUM unit" in note.message for note in assessment.data_quality)


@pytest.mark.parametrize("mode", MODES)
def test_python_values_json_cannot_hold_are_refused(mode: str) -> None:
    for value in (float("nan"), float("inf"), {1, 2}, b"bytes", object()):
        record = _example()
        _lab(record)["valueQuantity"]["value"] = value
        (left,) = cdss.evaluate(record, mode=mode, as_of=AS_OF).left_out
        assert left.field == "valueQuantity.value", value


# --------------------------------------------------------------------------- #
# Properties: whatever a mutated example record holds, evaluate answers or
# raises a CDSSError, within the bound; so does the service, never with a 500.


def _check_evaluate(record: Any, mode: str) -> None:
    def run() -> None:
        with contextlib.suppress(CDSSError):
            cdss.evaluate(record, mode=mode, as_of=AS_OF).to_json()

    try:
        kind, error = bounded(run, BOUND_SECONDS)
    except Hang as exc:
        pytest.fail(f"evaluate ({mode}) did not return: {exc}")
    assert kind == "ok", f"{mode}: {type(error).__name__}: {error}"


mutations = st.tuples(st.sampled_from(range(len(EXAMPLES))), st.randoms(use_true_random=False),
                      st.integers(min_value=1, max_value=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutations)
def test_mutated_records_never_crash_or_hang_evaluate(case: tuple[int, random.Random, int]) -> None:
    index, rnd, times = case
    record = mutate(EXAMPLES[index], rnd, times=times)
    for mode in MODES:
        _check_evaluate(record, mode)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # the service's app in this process, served on loopback as `cdss serve` serves it
    import httpx

    from cdss.service import create_app, serve_in_background

    app = create_app(insecure_dev=True)
    with serve_in_background(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield http


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutations)
def test_mutated_records_never_crash_or_hang_the_service(
        client: Any, case: tuple[int, random.Random, int]) -> None:
    from cdss.hooks import prefetch_templates

    index, rnd, times = case
    record = mutate(EXAMPLES[index], rnd, times=times)
    keys = list(prefetch_templates(cdss.load_ruleset()))
    body = _json_body(prefetch_call(record, keys))
    service = client.get("/cds-services").json()["services"][0]["id"]
    try:
        kind, response = bounded(lambda: client.post(
            f"/cds-services/{service}", content=body,
            headers={"content-type": "application/json"}), BOUND_SECONDS)
    except Hang as exc:
        pytest.fail(f"the service did not answer: {exc}")
    assert kind == "ok", response
    assert response.status_code != 500, response.text
    assert "Traceback" not in response.text


def _json_body(call: dict[str, Any]) -> bytes:
    # what a client can send: JSON text, with whatever the mutation put in it
    # (escaped lone surrogates, NaN, numbers of 400 digits, 3,000 levels)
    return _dumps_deep(call)
