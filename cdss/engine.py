"""The engines: run a compiled ruleset over one patient's facts.

This is the only module that imports ``durable`` (durable-rules). Two engines
run the same compiled strata and must agree on every patient:

``rete``
    durable-rules. Every rule is registered with its stratum's *start marker*
    as its first pattern (a fact ``{t: "$go", s: <stratum>}``). A patient's
    facts are held back; when a stratum runs, the facts not yet sent (the
    patient's, then the derived facts of earlier strata) go in one
    ``assert_facts`` batch with the stratum's marker last. No rule can join
    before its marker arrives, by which time every fact it tests, negated ones
    included, is present: durable-rules has no truth maintenance, and without
    the marker a ``none`` pattern could pass before the fact it negates
    arrived (measured: the result then depends on input order). A stratum none
    of whose rules can fire (a fact its ``all`` names is absent) is skipped.
    Only facts that pass at least one pattern are sent, with only the fields
    rules test: the others can change no firing, and every fact sent is then
    handled by a pattern, so no catch-all rule is needed (one fired once per
    fact and cost most of the engine's time). One session per patient, always
    deleted; an error inside an action becomes :class:`EngineError`.
    durable-rules is not thread-safe, so one host per process behind a lock.
    durable-rules is an optional dependency where it cannot be built (Python
    3.13+ without a build flag): asking for ``rete`` then raises
    :class:`~cdss.errors.DependencyError` saying how to install it.

``reference``
    a plain-Python evaluation of the same strata, its patterns compiled once
    per ruleset into predicates over facts indexed by name: the test oracle,
    and the engine where durable-rules cannot be installed.

``auto``
    ``rete`` where durable-rules is installed, else ``reference``; every
    result records which engine ran.

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
import operator
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
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
        backend = _Reference(ruleset)
    by_id = {f.id: f for f in facts}
    names = {f.name for f in facts}
    firings: list[Firing] = []
    with backend.session(list(by_id.values())) as sess:
        for stratum, plan in zip(ruleset.strata, _derivations(ruleset), strict=True):
            fired = sess.run_stratum(stratum, names)
            if not fired:
                continue
            new: dict[str, Fact] = {}
            for rule, rule_id, derives in plan:
                matched = fired.get(rule_id)
                if matched is None:
                    continue
                firings.append(Firing(rule=rule, matched=tuple(sorted(matched))))
                if not derives:
                    continue
                sources = {s for fid in matched for s in by_id[fid].sources}
                for name in derives:
                    fid = f"derived:{name}"
                    old = new.get(fid) or by_id.get(fid)
                    merged = tuple(sorted({*(old.sources if old else ()), *sources}))
                    new[fid] = Fact(id=fid, name=name, kind="derived", values={},
                                    sources=merged)
            fresh = [f for fid, f in new.items() if fid not in by_id]
            by_id.update(new)
            names.update(f.name for f in fresh)
            sess.add(fresh)
    return firings, by_id


_DerivationPlan = tuple[tuple[tuple[CompiledRule, str, tuple[str, ...]], ...], ...]
_derivation_plans: dict[str, _DerivationPlan] = {}


def _derivations(ruleset: Ruleset) -> _DerivationPlan:
    """Per stratum, in rule order: each rule, its id and the facts it derives."""
    plan = _derivation_plans.get(ruleset.key)
    if plan is None:
        plan = tuple(tuple((rule, rule.id, tuple(a.derive for a in rule.rule.then if a.derive))
                           for rule in stratum) for stratum in ruleset.strata)
        _derivation_plans[ruleset.key] = plan
    return plan


class _Session:
    def run_stratum(self, rules: Sequence[CompiledRule],
                    names: AbstractSet[str]) -> dict[str, set[str]]:
        """Fire the stratum's rules over the facts so far; ``names`` are the
        names of those facts (a rule whose ``all`` names a missing fact cannot
        fire)."""
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
    def __init__(self, ruleset: Ruleset) -> None:
        self.plan = _reference_plan(ruleset)

    def session(self, facts: Sequence[Fact]) -> _Session:
        return _ReferenceSession(self.plan, facts)


_Predicate = Callable[[Mapping[str, Any]], bool]
#: A compiled pattern: the fact name and the predicate its values must pass.
_Compiled = tuple[str, _Predicate]


def _compile_test(test: Test) -> _Predicate:
    """A closure that holds exactly when :meth:`Test.holds` does (the
    reference's meaning; a property test compares the two)."""
    field, op, value = test.field, test.op, test.value
    if op in ("lt", "le", "gt", "ge"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return lambda values: False
        compare = {"lt": operator.lt, "le": operator.le, "gt": operator.gt,
                   "ge": operator.ge}[op]

        def ordered(values: Mapping[str, Any]) -> bool:
            actual = values.get(field, _MISSING)
            if actual is _MISSING or isinstance(actual, bool) or \
                    not isinstance(actual, (int, float)):
                return False
            return bool(compare(actual, value))

        return ordered
    return lambda values: test.holds(values)


_MISSING = object()


def _compile_pattern(pattern: Pattern) -> _Compiled:
    tests = [_compile_test(t) for t in pattern.tests]
    if not tests:
        return pattern.fact, lambda values: True
    if len(tests) == 1:
        return pattern.fact, tests[0]
    return pattern.fact, lambda values: all(t(values) for t in tests)


@dataclass(frozen=True)
class _RulePlan:
    """One rule, compiled: its id, the fact names it needs, its patterns."""

    id: str
    needs: frozenset[str]
    any_names: frozenset[str]
    all: tuple[_Compiled, ...]
    any: tuple[_Compiled, ...]
    none: tuple[_Compiled, ...]


@dataclass(frozen=True)
class _ReferencePlan:
    """A ruleset's rules with their patterns compiled once into predicates,
    by rule index."""

    rules: tuple[_RulePlan, ...]


_plans: dict[str, _ReferencePlan] = {}


def _reference_plan(ruleset: Ruleset) -> _ReferencePlan:
    plan = _plans.get(ruleset.key)
    if plan is None:
        plan = _ReferencePlan(tuple(
            _RulePlan(r.id, frozenset(p.fact for p in r.all),
                      frozenset(p.fact for p in r.any),
                      tuple(map(_compile_pattern, r.all)), tuple(map(_compile_pattern, r.any)),
                      tuple(map(_compile_pattern, r.none)))
            for r in sorted(ruleset.rules, key=lambda r: r.index)))
        _plans[ruleset.key] = plan
    return plan


class _ReferenceSession(_Session):
    """A naive evaluation per stratum, over facts indexed by name: a rule
    fires when each ``all`` pattern and one ``any`` alternative match a fact
    and no ``none`` pattern does, with every fact its patterns match."""

    def __init__(self, plan: _ReferencePlan, facts: Sequence[Fact]) -> None:
        self.plan = plan
        self.by_name: dict[str, list[Fact]] = {}
        self.add(facts)

    def add(self, facts: Sequence[Fact]) -> None:
        for fact in facts:
            self.by_name.setdefault(fact.name, []).append(fact)

    def _matching(self, compiled: _Compiled) -> list[str]:
        name, holds = compiled
        return [f.id for f in self.by_name.get(name, ()) if holds(f.values)]

    def run_stratum(self, rules: Sequence[CompiledRule],
                    names: AbstractSet[str]) -> dict[str, set[str]]:
        fired: dict[str, set[str]] = {}
        for compiled_rule in rules:
            rule = self.plan.rules[compiled_rule.index]
            if not rule.needs <= names or (rule.any and rule.any_names.isdisjoint(names)):
                continue  # a fact it needs is absent by name
            matched: set[str] = set()
            for pattern in rule.all:
                ids = self._matching(pattern)
                if not ids:
                    break
                matched.update(ids)
            else:
                if rule.any:
                    alternatives = [self._matching(p) for p in rule.any]
                    if not any(alternatives):
                        continue
                    for ids in alternatives:
                        matched.update(ids)
                if any(self._matching(p) for p in rule.none):
                    continue
                fired[rule.id] = matched
        return fired


# --------------------------------------------------------------------------- #
# durable-rules
# --------------------------------------------------------------------------- #
_GO = "$go"
_END = "$end"
# A number in exponent form whose mantissa has no decimal point, outside strings.
_BARE_EXPONENT = re.compile(rb'"(?:[^"\\]|\\.)*"|(?<![\w.+-])(-?\d+)([eE][+-]?\d+)')


def _fix_number(match: re.Match[bytes]) -> bytes:
    if match.group(1) is None:  # a string: unchanged
        return match.group(0)
    return match.group(1) + b".0" + match.group(2)


# A cheap look for a number that may need fixing: a digit run right after a JSON
# separator and followed by an exponent (the full, string-aware pattern then decides).
_MAYBE_BARE_EXPONENT = re.compile(rb"[:,\[]-?\d+[eE]")


def _dumps(obj: Any, **_: Any) -> str:
    """JSON text durable-rules parses correctly (see the module docstring)."""
    text = orjson.dumps(obj)
    if _MAYBE_BARE_EXPONENT.search(text):
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


def _end(c: Any) -> None:
    return None


def _may_fire(rule: CompiledRule, names: AbstractSet[str]) -> bool:
    """False when a fact the rule needs is absent by name (it cannot fire)."""
    return all(p.fact in names for p in rule.all) and (
        not rule.any or any(p.fact in names for p in rule.any))


def _definition(ruleset: Ruleset) -> dict[str, Any]:
    """The durable-rules definition of a ruleset.

    ``any`` is expanded into one durable rule per alternative, all sharing the
    rule's start marker: measured on durable-rules 2.0.28, a boolean operator
    inside the second or a later alternative of a nested ``$any`` never
    matched, so nested ``$any`` is not used.
    """
    definition: dict[str, Any] = {}
    for rule in ruleset.rules:
        base: list[dict[str, Any]] = [{"go": {"$and": [{"t": _GO}, {"s": rule.stratum}]}}]
        base += [{f"c{i}": _durable_pattern(p)} for i, p in enumerate(rule.all)]
        negations = [{f"n{i}$not": _durable_pattern(p)} for i, p in enumerate(rule.none)]
        if not rule.any:
            definition[rule.id] = {"all": base + negations, "run": _action(rule.id), "dist": 0}
            continue
        for i, alternative in enumerate(rule.any):
            terms = [*base, {f"a{i}": _durable_pattern(alternative)}, *negations]
            definition[f"{rule.id}#any{i}"] = {"all": terms, "run": _action(rule.id), "dist": 0}
    # No catch-all rule: only facts that match a pattern are sent (see _Shape).
    # A session in which no action ran has no state durable-rules can delete
    # (delete_state then crashes the process, measured); such a session ends
    # with an end marker whose rule fires, and is then deleted like any other.
    definition["$end"] = {"all": [{"e": {"t": _END}}], "run": _end}
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


@dataclass(frozen=True)
class _Shape:
    """What of a patient's facts durable-rules is given: only facts that pass
    at least one of the ruleset's patterns (by the same compiled predicates as
    the reference evaluator), with only the fields rules test. A fact that
    passes no pattern can neither join a rule nor block a negation, so leaving
    it out changes no firing; and every fact sent then matches a pattern, so
    durable-rules handles it without a catch-all rule firing once per fact
    (a fact no pattern matches raises MessageNotHandledException)."""

    patterns: dict[str, tuple[_Predicate, ...]]
    fields: frozenset[str]

    def wire(self, fact: Fact) -> dict[str, Any] | None:
        checks = self.patterns.get(fact.name)
        if not checks or not any(holds(fact.values) for holds in checks):
            return None
        out = {k: v for k, v in fact.values.items() if k in self.fields}
        out["id"], out["t"] = fact.id, fact.name
        return out


_shapes: dict[str, _Shape] = {}


def _shape(ruleset: Ruleset) -> _Shape:
    shape = _shapes.get(ruleset.key)
    if shape is None:
        patterns = [p for r in ruleset.rules for p in (*r.all, *r.any, *r.none)]
        checks: dict[str, list[_Predicate]] = {}
        for name, holds in map(_compile_pattern, patterns):
            checks.setdefault(name, []).append(holds)
        shape = _Shape({name: tuple(preds) for name, preds in checks.items()},
                       frozenset(t.field for p in patterns for t in p.tests))
        _shapes[ruleset.key] = shape
    return shape


class _ReteSession(_Session):
    """One patient on durable-rules. Facts are held until a stratum runs and go
    in one ``assert_facts`` batch with that stratum's start marker last, so
    every fact a rule tests is present before any rule of the stratum can join;
    a stratum none of whose rules can fire (a fact its ``all`` names is absent)
    is not run at all."""

    def __init__(self, ruleset: Ruleset, facts: Sequence[Fact]) -> None:
        self.ruleset = ruleset
        self.shape = _shape(ruleset)
        self.pending: list[dict[str, Any]] = []
        self.add(facts)
        self.sid = f"{os.getpid()}-{next(_counter)}"
        self.started = False  # a batch went in: the session exists
        self.acted = False  # an action ran: durable-rules holds its state

    def __enter__(self) -> _Session:
        _HOST_LOCK.acquire()
        try:
            self.host = _get_host(self.ruleset)
            _sink.clear()
            _errors.clear()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.started:  # a session never created has nothing to delete
                with contextlib.suppress(Exception):
                    if not self.acted:
                        self.host.assert_facts(self.ruleset.key, [
                            {"sid": self.sid, "id": _END, "t": _END}])
                    self.host.delete_state(self.ruleset.key, self.sid)
            _sink.clear()
            _errors.clear()
        finally:
            _HOST_LOCK.release()

    def _assert(self, facts: list[dict[str, Any]]) -> None:
        """One batch. An action never raises (it records its error), so a
        failure either raises here or is in ``_errors``: the state need not be
        read back after each batch."""
        for fact in facts:
            fact["sid"] = self.sid
        self.started = True
        try:
            self.host.assert_facts(self.ruleset.key, facts)
        except Exception as exc:
            raise EngineError(f"durable-rules failed: {type(exc).__name__}: {exc}") from exc
        if _errors:
            rule_id, error = _errors[0]
            raise EngineError(f"action failed: {error!r}", rule_id=rule_id)

    def add(self, facts: Sequence[Fact]) -> None:
        for fact in facts:
            wired = self.shape.wire(fact)
            if wired is not None:
                self.pending.append(wired)

    def run_stratum(self, rules: Sequence[CompiledRule],
                    names: AbstractSet[str]) -> dict[str, set[str]]:
        if not any(_may_fire(r, names) for r in rules):
            return {}
        _sink.clear()
        stratum = rules[0].stratum
        self._assert([*self.pending, {"id": f"{_GO}:{stratum}", "t": _GO, "s": stratum}])
        self.pending = []
        self.acted = self.acted or bool(_sink)
        fired: dict[str, set[str]] = {}
        for rule_id, matched in _sink:
            ids = fired.setdefault(rule_id, set())
            for alias, fact in matched.items():
                if alias != "go" and isinstance(fact, Mapping) and "id" in fact:
                    ids.add(str(fact["id"]))
        _sink.clear()
        return fired
