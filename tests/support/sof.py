"""A small SQL on FHIR v2 ViewDefinition runner for the tests, over fhirpathpy.

No ViewDefinition runner installs and runs here from PyPI (see the cohort
screen docs), so the view's structure is interpreted here (``constant``,
``where``, nested ``select``, ``column``, ``forEach``, ``forEachOrNull``,
``unionAll``) and every path is evaluated by fhirpathpy, an independent
FHIRPath engine, with the R4 model (needed for ``ofType`` on choice types).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhirpathpy import evaluate
from fhirpathpy.models import models

Row = dict[str, Any]
_MODEL = models["r4"]


def _constants(view: Mapping[str, Any]) -> dict[str, Any]:
    found = {}
    for constant in view.get("constant", []):
        values = [v for k, v in constant.items() if k.startswith("value")]
        found[constant["name"]] = values[0]
    return found


def _path(node: Any, path: str, env: Mapping[str, Any]) -> list[Any]:
    return list(evaluate(node, path, dict(env), _MODEL))


def _scalar(values: list[Any], name: str) -> Any:
    if len(values) > 1:
        raise ValueError(f"column {name} gave {len(values)} values")
    if not values:
        return None
    value = values[0]
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _select(node: Any, select: Mapping[str, Any], env: Mapping[str, Any]) -> list[Row]:
    nodes = [node]
    if "forEach" in select:
        nodes = _path(node, select["forEach"], env)
    elif "forEachOrNull" in select:
        nodes = _path(node, select["forEachOrNull"], env) or [None]
    rows: list[Row] = []
    for item in nodes:
        parts: list[list[Row]] = []
        columns = {}
        for column in select.get("column", []):
            values = [] if item is None else _path(item, column["path"], env)
            columns[column["name"]] = (values if column.get("collection")
                                       else _scalar(values, column["name"]))
        parts.append([columns])
        for nested in select.get("select", []):
            parts.append(_select(item, nested, env) if item is not None
                         else _nulls(nested))
        if "unionAll" in select:
            parts.append([r for u in select["unionAll"] for r in
                          (_select(item, u, env) if item is not None else _nulls(u))])
        combined: list[Row] = [{}]
        for part in parts:
            combined = [{**a, **b} for a in combined for b in part]
        rows += combined
    return rows


def _nulls(select: Mapping[str, Any]) -> list[Row]:
    row: Row = {c["name"]: None for c in select.get("column", [])}
    for nested in select.get("select", []):
        row.update(_nulls(nested)[0])
    return [row]


def run_view(view: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[Row]:
    """The rows of ``view`` over ``resources`` (those of other types skipped)."""
    env = _constants(view)
    rows: list[Row] = []
    for resource in resources:
        if resource.get("resourceType") != view["resource"]:
            continue
        if not all(_path(resource, w["path"], env) == [True] for w in view.get("where", [])):
            continue
        combined: list[Row] = [{}]
        for select in view["select"]:
            part = _select(resource, select, env)
            combined = [{**a, **b} for a in combined for b in part]
        rows += combined
    return rows
