"""Ruleset, value-set and concept-map files read safely and validated.

Files are YAML read with a safe loader (no code is ever executed from a rule
file; no tags; duplicate keys are refused) and validated against their
models (:mod:`cdss.rulesets._schema`). Errors name the file, the rule id and
the field, with a suggestion for a misspelt key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cdss.errors import RulesetError

__all__ = ["read_model", "read_yaml", "suggest"]


#: libyaml's parser where PyYAML was built with it (about 5x faster on the
#: shipped files), with the same safe constructors and resolver either way.
_SAFE_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SAFE_BASE):  # type: ignore[valid-type,misc]
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


def read_yaml(path: Path) -> Any:
    """The YAML document of ``path``, read safely, duplicate keys refused."""
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
        suggestion = suggest(str(loc[-1]), _model_keys(model, list(err["loc"])[:-1]))
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


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a misspelt ``name``, if one is close enough."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


_M = TypeVar("_M", bound=BaseModel)


def read_model(path: Path, model: type[_M]) -> _M:
    """Read a YAML file and validate it against ``model``; errors name the file."""
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise RulesetError("the file must hold a mapping at its top level", path=str(path))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, path, raw, model) from None
