"""Ruleset files: discovery, safe loading, validation, identity, strata.

A ruleset version lives in ``<folder>/<id>/<version>.yaml`` next to the
value-set files it names. Files are YAML read with a safe loader (no code is
ever executed from a rule file; duplicate keys are refused) and validated
against :mod:`cdss.rulesets` (its file models) at load time, so a ruleset that loads is a ruleset
that runs. Errors name the file, the rule id and the field, with a suggestion
for a misspelt name.

The loaded ruleset's identity is ``id@version`` plus the sha256 of its
canonical content (rules, thresholds, value sets and site concept maps), and
its rules are compiled into strata by dependency: a rule that uses a derived
fact runs in a later stratum than every rule deriving it, so negation of a
derived fact is sound. A cyclic dependency is refused.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml
from pydantic import BaseModel, ValidationError

from cdss.errors import InvalidArgument, RulesetError, RulesetNotFoundError
from cdss.rulesets._schema import (
    Comparison,
    ConceptMapFile,
    Condition,
    Rule,
    RulesetFile,
    ThresholdRef,
    ValueSetFile,
)
from cdss.terminology import LOINC, Terminology

__all__ = [
    "FIELDS",
    "FIELD_TYPES",
    "CompiledRule",
    "Pattern",
    "Ruleset",
    "Test",
    "available_rulesets",
    "builtin_folder",
    "load_ruleset",
    "load_ruleset_file",
]

_VERSION_FILE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)\.ya?ml$")

#: Fields a rule may test, per kind of fact.
FIELDS: dict[str, frozenset[str]] = {
    "patient": frozenset({"age", "sex"}),
    "lab": frozenset({"value", "unit", "status", "age_days", "computed"}),
    "finding": frozenset({"status", "site", "nocturnal", "age_days"}),
    "condition": frozenset(),
    "medication": frozenset(),
    "allergy": frozenset(),
    "derived": frozenset(),
}
#: The type of each field, so that both engines compare alike.
FIELD_TYPES: dict[str, str] = {
    "age": "number", "value": "number", "age_days": "number",
    "sex": "text", "unit": "text", "status": "text", "site": "text",
    "computed": "bool", "nocturnal": "bool",
}
_FACT_KINDS = frozenset({"lab", "finding", "condition", "medication", "allergy"})
_OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "exists")
#: Fields added to the file formats after rulesets were first pinned: left out
#: of the content hash while unset, so that older files keep their hashes.
_LATER_FIELDS = frozenset({"exists", "laterality", "site", "nocturnal", "extends",
                           "bilateral", "qualifiers"})


# --------------------------------------------------------------------------- #
# Compiled form, shared by both engines
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Test:
    """``field op value`` on one fact; a missing field never passes."""

    field: str
    op: str
    value: Any

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the fact's ``values`` pass the test."""
        if self.op == "exists":
            return (self.field in values) is bool(self.value)
        if self.field not in values:
            return False
        actual = values[self.field]
        if self.op == "eq":
            return _equal(actual, self.value)
        if self.op == "ne":
            return not _equal(actual, self.value)
        if self.op == "in":
            return any(_equal(actual, v) for v in self.value)
        if isinstance(actual, bool) or not isinstance(actual, (int, float)):
            return False
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            return False
        if self.op == "lt":
            return actual < self.value
        if self.op == "le":
            return actual <= self.value
        if self.op == "gt":
            return actual > self.value
        return actual >= self.value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


@dataclass(frozen=True)
class Pattern:
    """A fact name and the tests its fields must pass."""

    fact: str
    tests: tuple[Test, ...]

    def matches(self, fact: Mapping[str, Any]) -> bool:
        """Whether ``fact`` is of this name and passes every test."""
        return fact.get("t") == self.fact and all(t.holds(fact) for t in self.tests)


@dataclass(frozen=True)
class CompiledRule:
    """A rule as both engines run it: its stratum, its place in the file
    (``index``, which breaks ties) and its patterns, thresholds resolved."""

    rule: Rule
    index: int
    stratum: int
    all: tuple[Pattern, ...]
    any: tuple[Pattern, ...]
    none: tuple[Pattern, ...]

    @property
    def id(self) -> str:
        """The rule's id."""
        return self.rule.id


# --------------------------------------------------------------------------- #
# Safe YAML with duplicate keys refused
# --------------------------------------------------------------------------- #
class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesetError(f"cannot read: {exc.strerror}", path=str(path)) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise RulesetError(f"not valid YAML: {exc}", path=str(path)) from None


def _validation_error(exc: ValidationError, path: Path, raw: Any,
                      model: type[BaseModel]) -> RulesetError:
    err = exc.errors()[0]
    loc = list(err["loc"])
    rule_id = None
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = raw.get("rules") if isinstance(raw, Mapping) else None
        if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], Mapping):
            rid = rules[loc[1]].get("id")
            rule_id = str(rid) if rid is not None else f"#{loc[1] + 1}"
        loc = loc[2:]
    field_name = ".".join(str(p) for p in loc) or None
    suggestion = None
    if err["type"] == "extra_forbidden" and loc:
        suggestion = _suggest(str(loc[-1]), _model_keys(model, list(err["loc"])[:-1]))
    message = err["msg"]
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    return RulesetError(message, path=str(path), rule_id=rule_id, field=field_name,
                        suggestion=suggestion)


def _model_keys(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """All field names of the models reachable along ``loc`` (best effort)."""
    names: set[str] = set()
    stack: list[Any] = [model]
    seen: set[Any] = set()
    while stack:
        current = stack.pop()
        if current in seen or not isinstance(current, type) or not issubclass(current, BaseModel):
            continue
        seen.add(current)
        for fname, info in current.model_fields.items():
            names.add(info.alias or fname)
            stack.extend(_inner_types(info.annotation))
    return sorted(names)


def _inner_types(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_inner_types(arg))
    origin = getattr(annotation, "__origin__", None)
    if origin is not None:
        out.append(origin)
    return out


def _suggest(name: str, candidates: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


# --------------------------------------------------------------------------- #
# The loaded ruleset
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Ruleset:
    """A loaded, validated and compiled ruleset version."""

    source: RulesetFile
    valuesets: ValueSetFile
    concept_maps: tuple[ConceptMapFile, ...]
    path: Path
    sha256: str
    rules: tuple[CompiledRule, ...]
    strata: tuple[tuple[CompiledRule, ...], ...] = field(repr=False)

    @property
    def id(self) -> str:
        return self.source.id

    @property
    def version(self) -> str:
        return self.source.version

    @property
    def spec(self) -> str:
        """``id@version``."""
        return f"{self.source.id}@{self.source.version}"

    @property
    def key(self) -> str:
        """``id@version#sha256-prefix``: unique per content, used to register engines."""
        return f"{self.spec}#{self.sha256[:16]}"

    @cached_property
    def terminology(self) -> Terminology:
        """Codings → concepts, from the value sets and the site concept maps."""
        maps = [entry for cmap in self.concept_maps for entry in cmap.maps]
        return Terminology(self.valuesets, maps)

    @cached_property
    def derived_facts(self) -> frozenset[str]:
        """The names of the facts the rules derive."""
        return frozenset(a.derive for r in self.source.rules for a in r.then if a.derive)

    def threshold(self, name: str) -> float:
        """The value of the named threshold."""
        return self.source.thresholds[name].value

    def order_loinc(self, analyte: str) -> str | None:
        """The LOINC code to order for ``analyte``: its ``order_loinc``, else its
        first LOINC code, else None."""
        spec = self.valuesets.analytes.get(analyte)
        if spec is not None and spec.order_loinc:
            return spec.order_loinc
        codes = self.terminology.codes_of(analyte, LOINC)
        return codes[0] if codes else None

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ruleset) and other.key == self.key


def _canonical_hash(source: RulesetFile, valuesets: ValueSetFile,
                    maps: Sequence[ConceptMapFile]) -> str:
    content = _without_unset_later_fields({
        "ruleset": source.model_dump(mode="json", by_alias=True),
        "valuesets": valuesets.model_dump(mode="json", by_alias=True),
        "concept_maps": [m.model_dump(mode="json") for m in maps],
    })
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _without_unset_later_fields(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_unset_later_fields(v) for k, v in node.items()
                if not (k in _LATER_FIELDS and v in (None, {}, []))}
    if isinstance(node, list):
        return [_without_unset_later_fields(v) for v in node]
    return node


def _merge_valuesets(parts: Sequence[tuple[Path, ValueSetFile]], path: Path) -> ValueSetFile:
    systems: dict[str, Any] = {}
    concepts: dict[str, Any] = {}
    analytes: dict[str, Any] = {}
    bilateral: dict[str, Any] = {}
    qualifiers: list[Any] = []
    extensions: list[tuple[Path, str, Any]] = []
    for part_path, part in parts:
        for target, items in ((systems, part.systems), (concepts, part.concepts),
                              (analytes, part.analytes), (bilateral, part.bilateral)):
            for key, value in items.items():
                if key in target and target[key] != value:
                    raise RulesetError(f"{key!r} is defined differently in two value-set files",
                                       path=str(part_path), field=key)
                target[key] = value
        qualifiers += part.qualifiers
        extensions += [(part_path, name, ext) for name, ext in part.extends.items()]
    for part_path, name, ext in extensions:  # after every file: order does not matter
        if name not in concepts:
            raise RulesetError(f"extends {name!r}, which no value-set file defines",
                               path=str(part_path), field=f"extends.{name}",
                               suggestion=_suggest(name, concepts))
        concept = concepts[name]
        concepts[name] = concept.model_copy(update={"codes": [*concept.codes, *ext.codes]})
    for name, spec in bilateral.items():
        for source in [name, *spec.from_]:
            if source not in concepts:
                raise RulesetError(f"bilateral {name!r} names {source!r}, which no value-set "
                                   "file defines", path=str(path), field=f"bilateral.{name}",
                                   suggestion=_suggest(source, concepts))
        if concepts[name].kind != "finding":
            raise RulesetError(f"bilateral {name!r} must be a finding concept",
                               path=str(path), field=f"bilateral.{name}")
    for concept_name, concept in concepts.items():
        for code in concept.codes:
            if code.site is not None and (code.site not in concepts
                                          or concepts[code.site].kind != "body_site"):
                raise RulesetError(f"code {code.code} of {concept_name!r} implies site "
                                   f"{code.site!r}, which is not a body_site concept",
                                   path=str(path), field=f"concepts.{concept_name}")
    return ValueSetFile(systems=systems, concepts=concepts, analytes=analytes,
                        bilateral=bilateral, qualifiers=qualifiers)


_M = TypeVar("_M", bound=BaseModel)


def _read_model(path: Path, model: type[_M]) -> _M:
    """Read a YAML file and validate it against ``model``; errors name the file."""
    raw = _read_yaml(path)
    if not isinstance(raw, Mapping):
        raise RulesetError("the file must hold a mapping at its top level", path=str(path))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, path, raw, model) from None


def load_ruleset_file(path: str | Path, *, concept_maps: Sequence[str | Path] = ()) -> Ruleset:
    """Load one ruleset version file (and the value-set files it names)."""
    path = Path(path)
    source = _read_model(path, RulesetFile)
    if path.stem != source.version:
        raise RulesetError(f"file name says {path.stem} but version is {source.version}",
                           path=str(path), field="version")
    parts = []
    for name in source.valuesets:
        vpath = (path.parent / name).resolve()
        if path.parent.resolve() not in vpath.parents:
            raise RulesetError("value-set files must sit in the ruleset's folder",
                               path=str(path), field="valuesets")
        parts.append((vpath, _read_model(vpath, ValueSetFile)))
    valuesets = _merge_valuesets(parts, path)
    maps = []
    for mpath in concept_maps:
        mpath = Path(mpath)
        cmap = _read_model(mpath, ConceptMapFile)
        if cmap.ruleset != source.id:
            raise RulesetError(f"concept map is for {cmap.ruleset!r}, not {source.id!r}",
                               path=str(mpath), field="ruleset")
        for i, entry in enumerate(cmap.maps):
            if entry.concept not in valuesets.concepts:
                raise RulesetError(f"unknown concept {entry.concept!r}", path=str(mpath),
                                   field=f"maps.{i}.concept",
                                   suggestion=_suggest(entry.concept, valuesets.concepts))
        maps.append(cmap)
    _check(source, valuesets, path)
    compiled = _compile(source, valuesets, path)
    strata_count = max((r.stratum for r in compiled), default=-1) + 1
    strata = tuple(
        tuple(r for r in compiled if r.stratum == s) for s in range(strata_count)
    )
    return Ruleset(
        source=source, valuesets=valuesets, concept_maps=tuple(maps), path=path,
        sha256=_canonical_hash(source, valuesets, maps), rules=tuple(compiled), strata=strata,
    )


# --------------------------------------------------------------------------- #
# Load-time checks
# --------------------------------------------------------------------------- #
def _fact_kinds(source: RulesetFile, valuesets: ValueSetFile, path: Path) -> dict[str, str]:
    kinds = {"patient": "patient"}
    for name, concept in valuesets.concepts.items():
        if concept.kind in _FACT_KINDS:
            kinds[name] = concept.kind
    for rule in source.rules:
        for i, action in enumerate(rule.then):
            if action.derive:
                if kinds.get(action.derive, "derived") != "derived":
                    raise RulesetError(
                        f"derived fact {action.derive!r} has the name of a {kinds[action.derive]}"
                        " concept", path=str(path), rule_id=rule.id, field=f"then.{i}.derive")
                kinds[action.derive] = "derived"
    return kinds


def _check(source: RulesetFile, valuesets: ValueSetFile, path: Path) -> None:
    p = str(path)
    kinds = _fact_kinds(source, valuesets, path)
    seen: set[str] = set()
    plan_codes = {item.code for item in source.plan_items}
    if len(plan_codes) != len(source.plan_items):
        raise RulesetError("plan item codes must be unique", path=p, field="plan_items")
    categories = {item.category for item in source.plan_items}
    for name, analyte in valuesets.analytes.items():
        if kinds.get(name) != "lab":
            raise RulesetError(f"analyte {name!r} has no lab concept", path=p, field="analytes")
        for part in analyte.ratio_of or ():
            if part not in valuesets.analytes:
                raise RulesetError(f"ratio part {part!r} is not an analyte", path=p,
                                   field=f"analytes.{name}.ratio_of")
    for rule in source.rules:
        if rule.citation.source not in source.sources:
            raise RulesetError(f"citation source {rule.citation.source!r} is not in sources",
                               path=p, rule_id=rule.id, field="citation.source",
                               suggestion=_suggest(rule.citation.source, source.sources))
        for claim in rule.claims:
            if claim not in source.claims:
                raise RulesetError(f"claim {claim!r} is not in the ruleset's claims", path=p,
                                   rule_id=rule.id, field="claims")
        if rule.id in seen:
            raise RulesetError("rule id used twice", path=p, rule_id=rule.id, field="id")
        seen.add(rule.id)
        for part in ("all", "any", "none"):
            for i, cond in enumerate(getattr(rule.when, part)):
                where = f"when.{part}.{i}"
                kind = kinds.get(cond.fact)
                if kind is None:
                    raise RulesetError(f"unknown fact {cond.fact!r}", path=p, rule_id=rule.id,
                                       field=f"{where}.fact",
                                       suggestion=_suggest(cond.fact, kinds))
                allowed = FIELDS[kind]
                for fname, test in cond.where.items():
                    if fname not in allowed:
                        raise RulesetError(
                            f"a {kind} fact has no field {fname!r}"
                            + (f" (fields: {sorted(allowed)})" if allowed else ""),
                            path=p, rule_id=rule.id, field=f"{where}.where.{fname}",
                            suggestion=_suggest(fname, allowed))
                    for op, operand in _ops(test):
                        _check_operand(fname, op, operand, p, rule.id, f"{where}.where.{fname}")
                        if isinstance(operand, ThresholdRef) and \
                                operand.threshold not in source.thresholds:
                            raise RulesetError(
                                f"unknown threshold {operand.threshold!r}", path=p,
                                rule_id=rule.id, field=f"{where}.where.{fname}.{op}",
                                suggestion=_suggest(operand.threshold, source.thresholds))
        for i, action in enumerate(rule.then):
            if action.plan and action.plan not in plan_codes:
                raise RulesetError(f"unknown plan item {action.plan!r}", path=p,
                                   rule_id=rule.id, field=f"then.{i}.plan",
                                   suggestion=_suggest(action.plan, plan_codes))
            if action.emphasize and action.emphasize.plan not in plan_codes:
                raise RulesetError(f"unknown plan item {action.emphasize.plan!r}", path=p,
                                   rule_id=rule.id, field=f"then.{i}.emphasize.plan",
                                   suggestion=_suggest(action.emphasize.plan, plan_codes))
            if action.tailor:
                item = next((d for d in source.plan_items if d.code == action.tailor.plan), None)
                if item is None:
                    raise RulesetError(f"unknown plan item {action.tailor.plan!r}", path=p,
                                       rule_id=rule.id, field=f"then.{i}.tailor.plan",
                                       suggestion=_suggest(action.tailor.plan, plan_codes))
                if action.tailor.variant not in item.variants:
                    raise RulesetError(
                        f"plan item {item.code!r} has no variant {action.tailor.variant!r}",
                        path=p, rule_id=rule.id, field=f"then.{i}.tailor.variant",
                        suggestion=_suggest(action.tailor.variant, item.variants))
            if action.suppress and action.suppress.plan and action.suppress.plan not in plan_codes:
                raise RulesetError(f"unknown plan item {action.suppress.plan!r}", path=p,
                                   rule_id=rule.id, field=f"then.{i}.suppress.plan",
                                   suggestion=_suggest(action.suppress.plan, plan_codes))
            if action.suppress and action.suppress.category and \
                    action.suppress.category not in categories:
                raise RulesetError(f"unknown plan category {action.suppress.category!r}",
                                   path=p, rule_id=rule.id, field=f"then.{i}.suppress.category",
                                   suggestion=_suggest(action.suppress.category, categories))
            if action.request and action.request.analyte not in valuesets.analytes:
                raise RulesetError(f"unknown analyte {action.request.analyte!r}", path=p,
                                   rule_id=rule.id, field=f"then.{i}.request.analyte",
                                   suggestion=_suggest(action.request.analyte,
                                                       valuesets.analytes))
    for i, inv in enumerate(source.invariants):
        if inv.analyte not in valuesets.analytes:
            raise RulesetError(f"unknown analyte {inv.analyte!r}", path=p,
                               field=f"invariants.{i}.analyte")


def _check_operand(fname: str, op: str, operand: Any, path: str, rule_id: str,
                   where: str) -> None:
    if op == "exists":  # a bool by the schema, whatever the field holds
        return
    ftype = FIELD_TYPES[fname]
    values = operand if op == "in" else [operand]
    for value in values:
        if isinstance(value, ThresholdRef):
            ok = ftype == "number"
        elif isinstance(value, bool):
            ok = ftype == "bool"
        elif isinstance(value, (int, float)):
            ok = ftype == "number"
        else:
            ok = ftype == "text"
        if op in ("lt", "le", "gt", "ge") and ftype != "number":
            ok = False
        if not ok:
            raise RulesetError(f"{op} {value!r} does not fit field {fname!r}, which holds a "
                               f"{ftype}", path=path, rule_id=rule_id, field=f"{where}.{op}")


def _ops(test: Any) -> list[tuple[str, Any]]:
    if isinstance(test, Comparison):
        return [(op, getattr(test, "in_" if op == "in" else op)) for op in _OPS
                if getattr(test, "in_" if op == "in" else op) is not None]
    return [("eq", test)]


def _pattern(cond: Condition, kind: str, source: RulesetFile) -> Pattern:
    tests = []
    for fname, test in sorted(cond.where.items()):
        for op, operand in _ops(test):
            if isinstance(operand, ThresholdRef):
                operand = source.thresholds[operand.threshold].value
            if op == "in":
                operand = tuple(operand)
            tests.append(Test(fname, op, operand))
    if kind == "finding" and "status" not in cond.where:
        tests.insert(0, Test("status", "eq", "present"))
    return Pattern(cond.fact, tuple(tests))


def _compile(source: RulesetFile, valuesets: ValueSetFile, path: Path) -> list[CompiledRule]:
    kinds = _fact_kinds(source, valuesets, path)
    producers: dict[str, list[int]] = {}
    for i, rule in enumerate(source.rules):
        for action in rule.then:
            if action.derive:
                producers.setdefault(action.derive, []).append(i)
    uses: list[set[str]] = []
    for rule in source.rules:
        names = {c.fact for part in (rule.when.all, rule.when.any, rule.when.none) for c in part}
        uses.append({n for n in names if kinds[n] == "derived"})
    for name in sorted({n for u in uses for n in u}):
        if name not in producers:
            raise RulesetError(f"derived fact {name!r} is used but no rule derives it",
                               path=str(path), field="rules")
    strata: dict[int, int] = {}
    visiting: list[int] = []

    def depth(i: int) -> int:
        if i in strata:
            return strata[i]
        if i in visiting:
            cycle = [source.rules[j].id for j in visiting[visiting.index(i):]] + [
                source.rules[i].id]
            negated = any(c.fact in uses[j] for j in visiting
                          for c in source.rules[j].when.none)
            kind = "cyclic negation" if negated else "cyclic dependency"
            raise RulesetError(f"{kind} between rules {' -> '.join(cycle)}; rules must be "
                               "stratifiable", path=str(path), rule_id=source.rules[i].id,
                               field="when")
        visiting.append(i)
        level = 0
        for name in uses[i]:
            for j in producers[name]:
                level = max(level, depth(j) + 1)
        visiting.pop()
        strata[i] = level
        return level

    compiled = []
    for i, rule in enumerate(source.rules):
        compiled.append(CompiledRule(
            rule=rule, index=i, stratum=depth(i),
            all=tuple(_pattern(c, kinds[c.fact], source) for c in rule.when.all),
            any=tuple(_pattern(c, kinds[c.fact], source) for c in rule.when.any),
            none=tuple(_pattern(c, kinds[c.fact], source) for c in rule.when.none),
        ))
    return compiled


# --------------------------------------------------------------------------- #
# Discovery and the registry of loaded versions
# --------------------------------------------------------------------------- #
def builtin_folder() -> Path:
    """The folder of the rulesets shipped with cdss."""
    package = Path(__file__).resolve().parent.parent  # the cdss package
    installed = package / "_rulesets"  # a wheel ships them inside the package
    return installed if installed.is_dir() else package.parent / "rulesets"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def available_rulesets(*, paths: Sequence[str | Path] | None = None) -> dict[str, list[Path]]:
    """``{id@version: [file, ...]}`` for every ruleset file found."""
    found: dict[str, list[Path]] = {}
    folders = [builtin_folder(), *(Path(p) for p in (paths or ()))]
    for folder in folders:
        if not folder.is_dir():
            raise RulesetNotFoundError("ruleset folder does not exist", path=str(folder))
        for rdir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for vfile in sorted(rdir.iterdir()):
                if _VERSION_FILE.match(vfile.name):
                    found.setdefault(f"{rdir.name}@{vfile.stem}", []).append(vfile)
    return found


_LOCK = threading.Lock()
_CACHE: dict[tuple[Any, ...], Ruleset] = {}


def load_ruleset(
    spec: str = "plantar-cramps",
    *,
    paths: Sequence[str | Path] | None = None,
    concept_maps: Sequence[str | Path] = (),
) -> Ruleset:
    """Load a ruleset by ``id`` (its latest active version) or ``id@version``.

    ``paths`` adds folders holding a site's own rulesets (``<folder>/<id>/
    <version>.yaml``); ``concept_maps`` adds a site's code mappings. Loaded
    versions are cached per process; several versions live side by side.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument(f"spec must be 'id' or 'id@version', got {spec!r}")
    if isinstance(paths, (str, Path)):
        raise InvalidArgument("paths must be a list of folders, not one folder")
    rid, _, version = spec.partition("@")
    found = available_rulesets(paths=paths)
    if version:
        files = found.get(spec)
        if not files:
            known = sorted(k for k in found if k.startswith(f"{rid}@"))
            raise RulesetNotFoundError(
                f"no ruleset {spec!r}" + (f"; available: {', '.join(known)}" if known else ""),
                suggestion=_suggest(spec, found))
        if len(files) > 1:
            raise RulesetError(f"{spec} is defined in more than one folder: "
                               f"{', '.join(str(f) for f in files)}")
        return _load_cached(files[0], concept_maps)
    versions = sorted((k.partition("@")[2] for k in found if k.partition("@")[0] == rid),
                      key=_version_key, reverse=True)
    if not versions:
        ids = sorted({k.partition("@")[0] for k in found})
        raise RulesetNotFoundError(f"no ruleset {rid!r}; available: {', '.join(ids)}",
                                   suggestion=_suggest(rid, ids))
    for candidate in versions:
        files = found[f"{rid}@{candidate}"]
        if len(files) > 1:
            raise RulesetError(f"{rid}@{candidate} is defined in more than one folder")
        ruleset = _load_cached(files[0], concept_maps)
        if ruleset.source.status == "active":
            return ruleset
    raise RulesetNotFoundError(f"ruleset {rid!r} has no active version; pin one with id@version")


def _load_cached(path: Path, concept_maps: Sequence[str | Path]) -> Ruleset:
    key = (str(path.resolve()), path.stat().st_mtime_ns,
           tuple(str(Path(m).resolve()) for m in concept_maps))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = load_ruleset_file(path, concept_maps=concept_maps)
            _CACHE[key] = cached
        return cached
