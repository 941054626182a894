"""A cohort screen's worklist: the patients to act on, most severe first.

A patient is on the worklist when their Assessment has any flag, referral or
data request. Each worker process makes the worklist rows of its partition
(:func:`worklist_row`) and writes them sorted by :func:`sort_key`: highest
severity (critical, high, moderate, low, then patients with no flag), then
the code of the patient's first (most severe) flag, then the patient
reference. The merge step merges the partitions' sorted rows and streams them
to ``worklist.csv`` and ``worklist.parquet`` (:func:`write_worklist`), keeping
only the first rows for the report, so the parent process never holds the
whole worklist.

Without identifiers (``identifiers=False``) the files and the report carry a
row number in place of the patient reference; the rows never hold resource
ids either way.

The module also reads a patient's age band and sex from the Patient
resource, for the report's tallies of flags by age band and sex.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from cdss.assessment import SEVERITY_RANK
from cdss.errors import CohortError

__all__ = ["AGE_BANDS", "SEXES", "WORKLIST_COLUMNS", "WorklistHead", "age_band",
           "cell_values", "demographics", "evidence_items", "flag_tally_key", "on_worklist",
           "ordered", "sex_of", "sort_key", "split_tally", "worklist_row", "write_worklist"]

#: Age bands at the screen's as-of date (years), in order, then ``unknown``.
AGE_BANDS = ("0-17", "18-39", "40-64", "65-79", "80+", "unknown")
#: FHIR administrative genders, as the tallies name them.
SEXES = ("female", "male", "other", "unknown")
_BAND_STARTS = ((80, "80+"), (65, "65-79"), (40, "40-64"), (18, "18-39"), (0, "0-17"))

#: The columns of ``worklist.csv`` and ``worklist.parquet`` (``patient`` only
#: with identifiers).
WORKLIST_COLUMNS = ("row", "patient", "highest_severity", "flags", "flag_codes", "referrals",
                    "evidence", "data_requests")
#: Sorts before every character of a flag code or patient reference.
_SEP = "\x01"
_NO_FLAG_RANK = len(SEVERITY_RANK)


# --------------------------------------------------------------------------- #
# Demographics
# --------------------------------------------------------------------------- #
def age_band(birth_date: Any, as_of: date) -> str:
    """The band of the age in whole years at ``as_of`` of a FHIR ``birthDate``
    (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``); ``unknown`` when absent, not a
    date, or after ``as_of``."""
    if not isinstance(birth_date, str):
        return "unknown"
    parts = birth_date[:10].split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        born = date(year, month, day)
    except (ValueError, IndexError):
        return "unknown"
    if born > as_of:
        return "unknown"
    years = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))
    return next(name for start, name in _BAND_STARTS if years >= start)


def sex_of(gender: Any) -> str:
    """The tally name of a FHIR ``gender`` (``unknown`` when absent or not one)."""
    return gender if isinstance(gender, str) and gender in SEXES else "unknown"


def demographics(patient_json: bytes | None, as_of: date) -> tuple[str, str]:
    """``(age band, sex)`` of a Patient resource as JSON bytes (or None)."""
    if patient_json is None:
        return "unknown", "unknown"
    try:
        patient = orjson.loads(patient_json)
    except orjson.JSONDecodeError:
        return "unknown", "unknown"
    if not isinstance(patient, dict):
        return "unknown", "unknown"
    return age_band(patient.get("birthDate"), as_of), sex_of(patient.get("gender"))


# --------------------------------------------------------------------------- #
# Rows
# --------------------------------------------------------------------------- #
def on_worklist(assessment: Any) -> bool:
    """Whether a patient is to be acted on: any flag, referral or data request."""
    return bool(assessment.flags or assessment.referrals or assessment.data_requests)


def sort_key(patient: str, assessment: Any) -> str:
    """The worklist order as one string: highest severity, first flag, patient."""
    if assessment.flags:
        top = assessment.flags[0]
        rank, flag = len(SEVERITY_RANK) - 1 - SEVERITY_RANK[top.severity], top.code
    else:
        rank, flag = _NO_FLAG_RANK, ""
    return f"{rank}{_SEP}{flag}{_SEP}{patient}"


def evidence_items(assessment: Any) -> list[dict[str, Any]]:
    """The evidence of the patient's flags and referrals, once each, in order:
    the value and unit as charted and its date where the fact is a charted
    result, and the evidence's words (no resource ids)."""
    items: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for conclusion in (*assessment.flags, *assessment.referrals):
        for ev in conclusion.evidence:
            if ev.kind == "order":
                continue
            values = ev.values
            charted = "charted_value" in values
            item = {"fact": ev.fact,
                    "value": values.get("charted_value") if charted else values.get("value"),
                    "unit": values.get("charted_unit") if charted else values.get("unit"),
                    "at": values.get("charted_at"),
                    "text": ev.text or ev.fact.replace("_", " ")}
            mark = (ev.fact, item["text"])
            if mark not in seen:
                seen.add(mark)
                items.append(item)
    return items


def worklist_row(patient: str, assessment: Any) -> dict[str, Any]:
    """The worklist row of an Assessment (JSON-ready)."""
    return {
        "patient": patient,
        "highest_severity": assessment.highest_severity,
        "flags": [{"code": f.code, "display": f.display, "severity": f.severity}
                  for f in assessment.flags],
        "referrals": [{"code": r.code, "display": r.display, "urgency": r.urgency}
                      for r in assessment.referrals],
        "evidence": evidence_items(assessment),
        "data_requests": [{"analyte": d.analyte, "display": d.display}
                          for d in assessment.data_requests],
    }


def _evidence_text(item: Mapping[str, Any]) -> str:
    if item.get("value") is None:
        return str(item["text"])
    unit = item.get("unit")
    words = f"{item['fact'].replace('_', ' ')} {item['value']}"
    if unit and unit != "1":
        words += f" {unit}"
    if item.get("at"):
        words += f" on {item['at']}"
    return words


def cell_values(row: Mapping[str, Any], number: int, *, identifiers: bool) -> dict[str, Any]:
    """The worklist row as the files' cells (text; lists joined with ``; ``)."""
    cells: dict[str, Any] = {"row": number}
    if identifiers:
        cells["patient"] = row["patient"]
    cells.update(
        highest_severity=row.get("highest_severity") or "",
        flags="; ".join(f"{f['display']} ({f['severity']})" for f in row["flags"]),
        flag_codes="; ".join(f["code"] for f in row["flags"]),
        referrals="; ".join(f"{r['display']} ({r['urgency']})" for r in row["referrals"]),
        evidence="; ".join(_evidence_text(e) for e in row["evidence"]),
        data_requests="; ".join(d["display"] for d in row["data_requests"]),
    )
    return cells


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
class WorklistHead:
    """What the merge keeps of the worklist for the report: the first rows."""

    def __init__(self, shown: int) -> None:
        self.shown = shown
        self.rows: list[dict[str, Any]] = []
        self.total = 0

    def add(self, number: int, row: Mapping[str, Any], identifiers: bool) -> None:
        self.total += 1
        if len(self.rows) < self.shown:
            self.rows.append({"row": number,
                              "patient": row["patient"] if identifiers else None,
                              "highest_severity": row.get("highest_severity"),
                              "flags": row["flags"], "referrals": row["referrals"],
                              "evidence": [_evidence_text(e) for e in row["evidence"]],
                              "data_requests": row["data_requests"]})


def write_worklist(out_dir: Path, rows: Iterable[tuple[str, bytes]], *, identifiers: bool,
                   shown: int, batch_rows: int = 20_000) -> WorklistHead:
    """Stream the merged worklist rows (``(sort key, JSON)``, in order) to
    ``worklist.csv`` and ``worklist.parquet`` in ``out_dir``, each published
    by renaming when complete; return the head kept for the report."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CohortError("worklist.parquet needs pyarrow: pip install 'cdss-fhir[cohort]'"
                          ) from exc
    names = [c for c in WORKLIST_COLUMNS if identifiers or c != "patient"]
    schema = pa.schema([pa.field(n, pa.int64() if n == "row" else pa.string()) for n in names])
    head = WorklistHead(shown)
    csv_path, parquet_path = out_dir / "worklist.csv", out_dir / "worklist.parquet"
    csv_tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    parquet_tmp = parquet_path.with_name(f".{parquet_path.name}.tmp")
    with csv_tmp.open("wb", buffering=1 << 20) as raw, \
            pq.ParquetWriter(parquet_tmp, schema, compression="zstd") as parquet:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            parquet.write_table(pa.Table.from_pylist(batch, schema=schema))
            batch.clear()

        for number, row in enumerate(_rows(rows), start=1):
            cells = cell_values(row, number, identifiers=identifiers)
            writer.writerow(cells)
            batch.append(cells)
            head.add(number, row, identifiers)
            if len(batch) >= batch_rows:
                flush()
        if batch or not head.total:
            flush()
        text.flush()
        os.fsync(raw.fileno())
        text.detach()
    os.replace(csv_tmp, csv_path)
    os.replace(parquet_tmp, parquet_path)
    return head


def _rows(rows: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    for _, payload in rows:
        yield orjson.loads(payload)


def flag_tally_key(code: str, group: str) -> str:
    """The key of a flag's count in one age band or sex (``code|group``)."""
    return f"{code}|{group}"


def split_tally(tally: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``code|group -> n`` as ``code -> {group: n}``."""
    out: dict[str, dict[str, int]] = {}
    for key, n in tally.items():
        code, _, group = key.rpartition("|")
        out.setdefault(code, {})[group] = n
    return {code: dict(sorted(groups.items())) for code, groups in sorted(out.items())}


def ordered(groups: Mapping[str, int], order: Sequence[str]) -> dict[str, int]:
    """``groups`` in the order of ``order`` (others after, sorted)."""
    known = {g: groups[g] for g in order if g in groups}
    return {**known, **{g: n for g, n in sorted(groups.items()) if g not in known}}
