"""Structure-aware mutations of the example records, and a run of one case
under a time bound, for the intake fuzz test and ``bench/fuzz_intake.py``.

A mutation picks a place in a record (any value of any resource or of the
Bundle, with the fields intake reads most often weighted up) and puts there
something a real record never holds: nesting far beyond any bound, a lone
surrogate, a number beyond a double, NaN or infinity, a string of a million
characters, a value of the wrong JSON type, or nothing at all.
"""

from __future__ import annotations

import copy
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "patients"
#: The fields intake, terminology and units read, chosen more often than others.
HOT_KEYS = ("id", "code", "system", "unit", "value", "reference", "resourceType", "type",
            "effectiveDateTime", "status", "birthDate", "gender", "coding", "valueQuantity")


def examples() -> list[dict[str, Any]]:
    """The example patients' Bundles, parsed."""
    return [orjson.loads(p.read_bytes()) for p in sorted(EXAMPLES.glob("*.json"))]


def _deep(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


def _replacements(rnd: random.Random, old: Any) -> Any:
    kind = rnd.randrange(14)
    if kind == 0:
        return _deep(old, rnd.choice((65, 200, 1_000, 1_250, 3_000)), as_list=False)
    if kind == 1:
        return _deep(old, rnd.choice((65, 200, 1_000, 1_250, 3_000)), as_list=True)
    if kind == 2:
        return "\ud800" + (old if isinstance(old, str) else "x")
    if kind == 3:
        return rnd.choice((10**400, -(10**400), 10**20, 2**64))
    if kind == 4:
        return rnd.choice((float("nan"), float("inf"), float("-inf"), 1e308, -0.0))
    if kind == 5:
        return "1" * rnd.choice((300, 10_000, 1_000_000))
    if kind == 6:
        return "(" * rnd.choice((65, 1_000, 100_000)) + "mmol/L"
    if kind == 7:
        return rnd.choice((0, 1, -1, 3.5, True, False, None))
    if kind == 8:
        return rnd.choice(([], {}, [old], {"value": old}))
    if kind == 9:
        return rnd.choice(("", " ", "x" * 65, "2026-13-45", "2026-02-30T25:61:00",
                           "Patient/", "\x00", "é" * 300))
    if kind == 10:
        if isinstance(old, str):
            return old * 2
        return str(old) if isinstance(old, (int, float, bool)) or old is None else "[object]"
    if kind == 11:
        return rnd.choice(("mmol/L", "mg/dL", "meq/L", "{SG}", "10*3/uL", "kg/m2", "%"))
    if kind == 12:
        return {"\ud800": old}
    return _DELETE


_DELETE = object()


def _places(root: Any, out: list[tuple[Any, ...]]) -> None:
    # iterative, and not into what an earlier mutation nested deeply
    stack: list[tuple[Any, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > 40:
            continue
        items = node.items() if isinstance(node, dict) else (
            enumerate(node) if isinstance(node, list) else ())
        for key, value in items:
            out.append((*path, key))
            stack.append((value, (*path, key)))


def mutate(record: dict[str, Any], rnd: random.Random, *, times: int = 1) -> dict[str, Any]:
    """A copy of ``record`` with ``times`` places changed (see the module's docstring)."""
    record = copy.deepcopy(record)
    for _ in range(times):
        places: list[tuple[Any, ...]] = []
        _places(record, places)
        if not places:
            break
        places.sort(key=repr)  # the same places in the same order for the same record
        hot = [p for p in places if p and p[-1] in HOT_KEYS]
        path = rnd.choice(hot if hot and rnd.random() < 0.6 else places)
        parent: Any = record
        for step in path[:-1]:
            parent = parent[step]
        old = parent[path[-1]]
        new = _replacements(rnd, old)
        if new is _DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    return record


class Hang(Exception):
    """A case that did not finish within its time bound."""


def bounded(fn: Callable[[], Any], seconds: float) -> tuple[str, Any]:
    """Run ``fn`` in a daemon thread: ``("ok", result)`` or ``("raised", exc)``;
    :class:`Hang` when it takes longer than ``seconds`` (the thread is left
    behind, as a daemon, so a hang fails a run instead of holding it up)."""
    box: queue.Queue[tuple[str, Any]] = queue.Queue()

    def run() -> None:
        try:
            box.put(("ok", fn()))
        except BaseException as exc:  # everything is reported to the caller
            box.put(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        return box.get(timeout=seconds)
    except queue.Empty:
        raise Hang(f"no answer after {time.perf_counter() - start:.1f} s") from None


def prefetch_call(record: Any, keys: list[str]) -> dict[str, Any]:
    """A CDS Hooks call whose prefetch holds ``record``: its first entry as the
    patient and the whole Bundle as every other prefetch key's search result."""
    pid = "p"
    entries = record.get("entry") if isinstance(record, dict) else None
    first = entries[0] if isinstance(entries, list) and entries else None
    patient = first.get("resource") if isinstance(first, dict) else None
    if isinstance(patient, dict) and isinstance(patient.get("id"), str):
        pid = patient["id"]
    search = dict(record) if isinstance(record, dict) else record
    if isinstance(search, dict):
        search["type"] = search.get("type") if search.get("type") != "collection" \
            else "searchset"
    prefetch = {key: search for key in keys}
    prefetch["patient"] = patient
    return {"hook": "patient-view", "hookInstance": "d1b0a3c2-0f6e-4b8e-9b1a-7f3c2d4e5a60",
            "context": {"userId": "Practitioner/u1", "patientId": pid}, "prefetch": prefetch}
