"""The engines: run a compiled ruleset over one patient's facts.

This is the only module that imports ``durable`` (durable-rules). Two engines
run the same compiled strata and must agree on every patient:

``rete``
    durable-rules. Every rule is registered with a *start marker* as its first
    pattern (a fact ``{t: "$go", r: <rule id>}``). A patient's facts go in as
    one batch; then, stratum by stratum, the derived facts of the earlier
    strata go in, followed by the start markers of the stratum's rules. No rule
    can join before its marker arrives, by which time every fact it tests,
    negated ones included, is present: durable-rules has no truth maintenance,
    and without the marker a ``none`` pattern could pass before the fact it
    negates arrived (measured: the result then depends on input order). One
    session per patient, always deleted; a catch-all rule keeps every action
    synchronous; an error inside an action becomes :class:`EngineError`.
    durable-rules is not thread-safe, so one host per process behind a lock.
    durable-rules is an optional dependency where it cannot be built (Python
    3.13+ without a build flag): asking for ``rete`` then raises
    :class:`~cdss.errors.DependencyError` saying how to install it.

``auto``
    ``rete`` where durable-rules is installed, else ``reference``; every
    result records which engine ran.

``reference``
    a plain-Python naive evaluation of the same strata: the test oracle, and
    the fallback where durable-rules cannot be installed.

Both return the rules that fired with the facts they matched; the derived
facts of a stratum are made here, once per name, whichever rules derive them.

How durable-rules 2.0.28 is wrapped, and why (each measured here):

* **No background threads.** Its ``Host`` starts two timer threads that call
  into the C engine without a lock (segfaults seen with a short thread switch
  interval; upstream reports the same paths). cdss asserts facts
  synchronously and never uses timers, so :class:`_SyncHost` starts none.
* **Numbers it can parse.** Its C JSON parser crashes the process (SIGSEGV) on
  a number in exponent form whose mantissa has no decimal point (``1e-05``,
  ``5e-324``, ``1e+16``: what Python writes for many small or large floats),
  and refuses a ruleset holding one. Every JSON text durable-rules reads is
  written by :func:`_dumps`, which writes such numbers as ``1.0e-05``; those
  are read correctly (checked against Python's comparisons on random values
  over 1e-320..1e308 by a property test).
* **No deprecated calls, no wall clock.** From Python 3.12 it calls
  ``datetime.utcfromtimestamp()`` on every firing; its clock is replaced by a
  monotonic one (it measures only elapsed time), so warnings stay errors in
  tests and a clock step cannot drop firings.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cdss.errors import DependencyError, EngineError, InvalidArgument
from cdss.facts import Fact
from cdss.rulesets import CompiledRule, Pattern, Ruleset, Test

__all__ = ["ENGINES", "Firing", "resolve_engine", "rete_available", "run"]

ENGINES = ("auto", "rete", "reference")

#: How to get durable-rules where pip cannot build it as it is (Python 3.13+).
INSTALL_HINT = (
    "install it with: CPPFLAGS=\"-DPyEval_CallObject=PyObject_CallObject\" "
    "pip install durable-rules==2.0.28 (a C compiler and the Python headers are needed)"
)


@dataclass(frozen=True)
class Firing:
    """A rule that fired, in which stratum, and the ids of the facts it matched
    (the union over all its matches, sorted)."""

    rule: CompiledRule
    matched: tuple[str, ...]


def rete_available() -> bool:
    """True when durable-rules is installed and loads."""
    try:
        _durable()
    except DependencyError:
        return False
    return True


def resolve_engine(engine: str) -> str:
    """The engine that ``engine`` runs: ``auto`` is ``rete`` where durable-rules
    is installed, else ``reference``; ``rete`` without durable-rules raises
    :class:`~cdss.errors.DependencyError`."""
    if engine == "auto":
        return "rete" if rete_available() else "reference"
    if engine == "rete":
        _durable()
        return engine
    if engine == "reference":
        return engine
    raise InvalidArgument(f"engine must be one of {ENGINES}, got {engine!r}")


def run(ruleset: Ruleset, facts: Sequence[Fact], *, engine: str = "auto") -> tuple[
    list[Firing], dict[str, Fact]
]:
    """Run ``ruleset`` over ``facts``; return the firings (stratum, then rule
    order) and every fact by id, derived facts included."""
    if resolve_engine(engine) == "rete":
        backend: _Backend = _Rete(ruleset)
    else:
        backend = _Reference()
    by_id = {f.id: f for f in facts}
    firings: list[Firing] = []
    with backend.session(list(by_id.values())) as sess:
        for stratum in ruleset.strata:
            fired = sess.run_stratum(stratum)
            new: dict[str, Fact] = {}
            for rule in stratum:
                matched = fired.get(rule.id)
                if matched is None:
                    continue
                firings.append(Firing(rule=rule, matched=tuple(sorted(matched))))
                sources = sorted({s for fid in matched for s in by_id[fid].sources})
                for action in rule.rule.then:
                    if not action.derive:
                        continue
                    fid = f"derived:{action.derive}"
                    old = new.get(fid) or by_id.get(fid)
                    merged = tuple(sorted({*(old.sources if old else ()), *sources}))
                    new[fid] = Fact(id=fid, name=action.derive, kind="derived", values={},
                                    sources=merged)
            fresh = [f for fid, f in new.items() if fid not in by_id]
            by_id.update(new)
            sess.add(fresh)
    return firings, by_id


class _Session:
    def run_stratum(self, rules: Sequence[CompiledRule]) -> dict[str, set[str]]:
        raise NotImplementedError

    def add(self, facts: Sequence[Fact]) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Backend:
    def session(self, facts: Sequence[Fact]) -> _Session:
        raise NotImplementedError


# --------------------------------------------------------------------------- #
# Reference evaluator
# --------------------------------------------------------------------------- #
class _Reference(_Backend):
    def session(self, facts: Sequence[Fact]) -> _Session:
        return _ReferenceSession(facts)


class _ReferenceSession(_Session):
    def __init__(self, facts: Sequence[Fact]) -> None:
        self.facts = [f.engine_dict() for f in facts]

    def add(self, facts: Sequence[Fact]) -> None:
        self.facts.extend(f.engine_dict() for f in facts)

    def _matching(self, pattern: Pattern) -> list[str]:
        return [f["id"] for f in self.facts if pattern.matches(f)]

    def run_stratum(self, rules: Sequence[CompiledRule]) -> dict[str, set[str]]:
        fired: dict[str, set[str]] = {}
        for rule in rules:
            alls = [self._matching(p) for p in rule.all]
            if not all(alls):
                continue
            anys = [self._matching(p) for p in rule.any]
            if rule.any and not any(anys):
                continue
            if any(self._matching(p) for p in rule.none):
                continue
            fired[rule.id] = {fid for group in (*alls, *anys) for fid in group}
        return fired


# --------------------------------------------------------------------------- #
# durable-rules
# --------------------------------------------------------------------------- #
_GO = "$go"
# A number in exponent form whose mantissa has no decimal point, outside strings.
_BARE_EXPONENT = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\w.+-])(-?\d+)([eE][+-]?\d+)')


def _fix_number(match: re.Match[bytes]) -> bytes:
    if match.group(1) is None:  # a string: unchanged
        return match.group(0)
    return match.group(1) + b".0" + match.group(2)


def _dumps(obj: Any, **_: Any) -> str:
    """JSON text durable-rules parses correctly (see the module docstring)."""
    text = orjson.dumps(obj)
    if b"e" in text or b"E" in text:
        text = _BARE_EXPONENT.sub(_fix_number, text)
    return text.decode()


def _loads(text: str | bytes) -> Any:
    return orjson.loads(text)


class _DurableJSON:
    """The ``json`` that durable-rules' engine module uses: :func:`_dumps`."""

    dumps = staticmethod(_dumps)
    loads = staticmethod(_loads)


def _unix_now() -> float:
    """durable-rules' clock. It only measures elapsed time (after 10 s it
    treats an action as done and drops the rest of its firings), so a
    monotonic clock is right: its own, local wall time through the deprecated
    ``datetime.utcfromtimestamp``, jumps with a daylight-saving change or a
    clock step, which could drop firings mid-evaluation."""
    return time.monotonic()


_host_class: Any = None


def _durable() -> Any:
    """The durable-rules host class, wrapped once; DependencyError when absent."""
    global _host_class
    if _host_class is not None:
        return _host_class
    try:
        from durable import engine as durable_engine
    except ImportError as exc:
        try:
            version = importlib.metadata.version("durable-rules")
            state = f"durable-rules {version} is installed but cannot load ({exc})"
        except importlib.metadata.PackageNotFoundError:
            state = "durable-rules is not installed"
        raise DependencyError(
            f"the rete engine needs durable-rules: {state} on Python "
            f"{sys.version.split()[0]}; {INSTALL_HINT}; or use engine='reference'",
            package="durable-rules",
        ) from exc
    durable_engine.json = _DurableJSON
    durable_engine._unix_now = _unix_now

    class _SyncHost(durable_engine.Host):  # type: ignore[misc]
        """A Host without the two timer threads (see the module docstring)."""

        def _run(self) -> None:
            return None

    _host_class = _SyncHost
    return _SyncHost


_HOST_LOCK = threading.RLock()
_host: Any = None
_registered: set[str] = set()
_sink: list[tuple[str, Mapping[str, Any]]] = []
_errors: list[tuple[str, BaseException]] = []
_counter = itertools.count()


def _durable_tests(test: Test) -> list[dict[str, Any]]:
    """A test as flat durable-rules conditions (nested ``$and`` inside an
    alternative is mis-evaluated by durable-rules 2.0.28, so none is made)."""
    if test.op == "eq":
        return [{test.field: test.value}]
    if test.op == "in":
        return [{"$or": [{test.field: v} for v in test.value]}]
    if test.op == "exists":
        return [{"$ex" if test.value else "$nex": {test.field: 1}}]
    op = {"ne": "$neq", "lt": "$lt", "le": "$lte", "gt": "$gt", "ge": "$gte"}[test.op]
    return [{"$ex": {test.field: 1}}, {op: {test.field: test.value}}]


def _durable_pattern(pattern: Pattern) -> dict[str, Any]:
    return {"$and": [{"t": pattern.fact},
                     *(part for t in pattern.tests for part in _durable_tests(t))]}


def _action(rule_id: str) -> Callable[[Any], None]:
    def action(c: Any) -> None:
        try:
            _sink.append((rule_id, dict(c._m)))
        except BaseException as exc:  # recorded and raised by the caller
            _errors.append((rule_id, exc))

    return action


def _noop(c: Any) -> None:
    return None


def _definition(ruleset: Ruleset) -> dict[str, Any]:
    """The durable-rules definition of a ruleset.

    ``any`` is expanded into one durable rule per alternative, all sharing the
    rule's start marker: measured on durable-rules 2.0.28, a boolean operator
    inside the second or a later alternative of a nested ``$any`` never
    matched, so nested ``$any`` is not used.
    """
    definition: dict[str, Any] = {}
    for rule in ruleset.rules:
        base: list[dict[str, Any]] = [{"go": {"$and": [{"t": _GO}, {"r": rule.id}]}}]
        base += [{f"c{i}": _durable_pattern(p)} for i, p in enumerate(rule.all)]
        negations = [{f"n{i}$not": _durable_pattern(p)} for i, p in enumerate(rule.none)]
        if not rule.any:
            definition[rule.id] = {"all": base + negations, "run": _action(rule.id), "dist": 0}
            continue
        for i, alternative in enumerate(rule.any):
            terms = [*base, {f"a{i}": _durable_pattern(alternative)}, *negations]
            definition[f"{rule.id}#any{i}"] = {"all": terms, "run": _action(rule.id), "dist": 0}
    definition["$catch-all"] = {"all": [{"m": {"$ex": {"t": 1}}}], "run": _noop}
    return definition


def _get_host(ruleset: Ruleset) -> Any:
    global _host
    host_class = _durable()
    if _host is None:
        _host = host_class()
    if ruleset.key not in _registered:
        try:
            _host.register_rulesets({ruleset.key: _definition(ruleset)})
        except Exception as exc:
            raise EngineError(f"durable-rules refused {ruleset.spec}: {exc}") from exc
        _registered.add(ruleset.key)
    return _host


class _Rete(_Backend):
    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset

    def session(self, facts: Sequence[Fact]) -> _Session:
        return _ReteSession(self.ruleset, facts)


class _ReteSession(_Session):
    def __init__(self, ruleset: Ruleset, facts: Sequence[Fact]) -> None:
        self.ruleset = ruleset
        self.initial = facts
        self.sid = f"{os.getpid()}-{next(_counter)}"

    def __enter__(self) -> _Session:
        _HOST_LOCK.acquire()
        try:
            self.host = _get_host(self.ruleset)
            _sink.clear()
            _errors.clear()
            self.add(self.initial)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if getattr(self, "host", None) is not None:
                # a session never created has nothing to delete
                with contextlib.suppress(Exception):
                    self.host.delete_state(self.ruleset.key, self.sid)
            _sink.clear()
            _errors.clear()
        finally:
            _HOST_LOCK.release()

    def _assert(self, facts: list[dict[str, Any]]) -> None:
        if not facts:
            return
        for fact in facts:
            fact["sid"] = self.sid
        try:
            self.host.assert_facts(self.ruleset.key, facts)
        except Exception as exc:
            raise EngineError(f"durable-rules failed: {type(exc).__name__}: {exc}") from exc
        if _errors:
            rule_id, error = _errors[0]
            raise EngineError(f"action failed: {error!r}", rule_id=rule_id)
        state = self.host.get_state(self.ruleset.key, self.sid)
        if isinstance(state, Mapping) and state.get("exception"):
            raise EngineError(f"durable-rules reported: {state['exception']}")

    def add(self, facts: Sequence[Fact]) -> None:
        self._assert([f.engine_dict() for f in facts])

    def run_stratum(self, rules: Sequence[CompiledRule]) -> dict[str, set[str]]:
        _sink.clear()
        self._assert([{"id": f"{_GO}:{r.id}", "t": _GO, "r": r.id} for r in rules])
        fired: dict[str, set[str]] = {}
        for rule_id, matched in _sink:
            ids = fired.setdefault(rule_id, set())
            for alias, fact in matched.items():
                if alias != "go" and isinstance(fact, Mapping) and "id" in fact:
                    ids.add(str(fact["id"]))
        _sink.clear()
        return fired
