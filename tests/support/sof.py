"""SQL on FHIR for the tests: a small ViewDefinition runner over fhirpathpy, and
the rows the shipped views should give for a screen.

:func:`run_view` interprets the view's structure (``constant``, ``where``,
nested ``select``, ``column``, ``forEach``, ``forEachOrNull``, ``unionAll``)
and has every path evaluated by fhirpathpy, an independent FHIRPath engine,
with the R4 model (needed for ``ofType`` on choice types). The integration
tests check it, and the views, against @medplum/core's runner.

:func:`expected_rows` says what each view should give, from the screen's
assessments, and :func:`mismatch` compares rows as multisets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from fhirpathpy import evaluate
from fhirpathpy.models import models

from cdss.cohort._fhir_bulk import FHIR_FOLDER, RESOURCE_TYPES
from cdss.outputs.fhir import code_system
from tests.support.cohort import read_ndjson

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


# --------------------------------------------------------------------------- #
# What the views should give
# --------------------------------------------------------------------------- #
def fhir_resources(out: Path) -> list[dict[str, Any]]:
    """Every resource of a screen's FHIR output (``out/fhir/*.ndjson``)."""
    found: list[dict[str, Any]] = []
    for name in RESOURCE_TYPES:
        path = out / FHIR_FOLDER / f"{name}.ndjson"
        if path.exists():
            found += read_ndjson(path)
    return found


def _folded(text: str) -> str:  # the FHIR output folds the YAML texts' whitespace
    return " ".join(text.split())


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    """An evidence item as the views give it: ``fact (kind: key=value, ...)``."""
    shown = ", ".join(f"{k}={v}" for k, v in sorted(evidence["values"].items()))
    return f"{evidence['fact']} ({evidence['kind']}{': ' + shown if shown else ''})"


def _items(assessment: Mapping[str, Any], field: str, codes: set[str]) -> list[Any]:
    """The assessment's ``field`` items with the ``codes``, in its order."""
    missing = codes - {item["code"] for item in assessment[field]}
    if missing:
        raise AssertionError(f"{assessment['patient']}: assessments.parquet has {field} "
                             f"{sorted(missing)}, assessments.ndjson does not")
    return [item for item in assessment[field] if item["code"] in codes]


def expected_rows(out: Path) -> dict[str, list[Row]]:
    """The rows each shipped view (by its :data:`cdss.cohort.VIEWS` name) should
    give over the screen's FHIR output, in every column the assessments decide
    (not the resources' ids).

    Which patient has which flags, referrals and plan items is read from
    ``assessments.parquet`` (its ``flag:``, ``referral:`` and ``plan:``
    columns); what the table does not hold (severities, rules, texts, evidence,
    the plan's order) from the patient's line of ``assessments.ndjson``."""
    by_patient = {a["patient"]: a for a in read_ndjson(out / "assessments.ndjson")}
    rows: dict[str, list[Row]] = {"flags": [], "flag_evidence": [], "referrals": [],
                                  "plan_items": []}
    for row in pq.read_table(out / "assessments.parquet").to_pylist():
        codes = {kind: {column.split(":", 1)[1] for column, value in row.items()
                        if column.startswith(f"{kind}:") and value}
                 for kind in ("flag", "referral", "plan")}
        if not any(codes.values()):
            continue
        a = by_patient[row["patient"]]
        patient, as_of, ruleset = a["patient"], a["as_of"], a["ruleset"]["id"]
        for f in _items(a, "flags", codes["flag"]):
            rows["flags"].append({
                "patient": patient, "code": f["code"],
                "code_system": code_system(ruleset, "flag"), "display": f["display"],
                "severity": f["severity"],
                "fhir_severity": "high" if f["severity"] == "critical" else f["severity"],
                "rule": f["rule_id"], "identified": as_of, "rationale": _folded(f["rationale"]),
                "evidence": "; ".join(map(_evidence_text, f["evidence"])),
                "citation": f["citation"]["url"]})
            rows["flag_evidence"] += [
                {"patient": patient, "code": f["code"], "evidence": _evidence_text(e),
                 "sources": " ".join(e["sources"])} for e in f["evidence"]]
        rows["referrals"] += [
            {"patient": patient, "code": r["code"],
             "code_system": code_system(ruleset, "referral"), "display": r["display"],
             "priority": r["urgency"], "rule": r["rule_id"], "status": "draft",
             "authored": as_of, "reason": _folded(r["rationale"])}
            for r in _items(a, "referrals", codes["referral"])]
        rows["plan_items"] += [
            {"patient": patient, "created": as_of, "code": p["code"],
             "code_system": code_system(ruleset, "plan-item"),
             "description": _folded(p["text"]), "status": "not-started",
             "rules": " ".join(p["rule_ids"]), "why": _folded(p["why"])}
            for p in _items(a, "plan", codes["plan"])]
    return rows


def mismatch(got: Iterable[Mapping[str, Any]], want: Iterable[Mapping[str, Any]]) -> str:
    """How the rows ``got`` differ from ``want`` as multisets, each row read in
    ``want``'s columns only; ``""`` when they are the same."""
    want = list(want)
    columns = sorted({column for row in want for column in row})

    def counted(rows: Iterable[Mapping[str, Any]]) -> Counter[tuple[Any, ...]]:
        return Counter(tuple(row.get(column) for column in columns) for row in rows)

    have, should = counted(got), counted(want)
    missing, extra = should - have, have - should
    if not missing and not extra:
        return ""
    return (f"columns {columns}: {missing.total()} expected rows missing, e.g. "
            f"{list(missing)[:3]}; {extra.total()} rows not expected, e.g. {list(extra)[:3]}")
