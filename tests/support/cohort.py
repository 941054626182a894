"""Helpers shared by the cohort tests.

A generated cohort is made once per session; the expected result of every
patient is computed independently of the screen, by grouping the NDJSON lines
in memory and calling :func:`cdss.evaluate` on each patient's resources.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

import cdss
from cdss.cohort import GeneratedCohort, ScreenSummary, generate_cohort, screen

AS_OF = "2026-03-01"
RULESET = "plantar-cramps@1.0.0"


def screen_cohort(inputs: Any, out: Path, **kwargs: Any) -> ScreenSummary:
    """A screen with the tests' ruleset and as-of date, in this process unless
    ``workers`` is given."""
    kwargs.setdefault("workers", 0)
    return screen(inputs, ruleset=RULESET, as_of=AS_OF, out=out, **kwargs)


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """The rows of an NDJSON file."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_ndjson(path: Path, resources: Iterable[Mapping[str, Any] | bytes]) -> Path:
    """Write resources (or raw lines) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        for item in resources:
            handle.write((item if isinstance(item, bytes) else orjson.dumps(item)) + b"\n")
    return path


def group_by_patient(files: Iterable[Path]) -> dict[str, list[dict[str, Any]]]:
    """Every resource of the NDJSON files by patient reference (the test's own
    grouping, independent of the screen's)."""
    import gzip

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in files:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        for line in data.splitlines():
            res = orjson.loads(line)
            if res["resourceType"] == "Patient":
                ref = f"Patient/{res['id']}"
            else:
                ref = (res.get("subject") or res.get("patient"))["reference"]
            groups[ref].append(res)
    return dict(groups)


def expected_assessments(groups: Mapping[str, list[dict[str, Any]]], *, mode: str = "lean",
                         ruleset: Any = RULESET) -> dict[str, bytes]:
    """The Assessment JSON :func:`cdss.evaluate` gives for each patient."""
    rs = cdss.load_ruleset(ruleset) if isinstance(ruleset, str) else ruleset
    return {ref: cdss.evaluate(resources, ruleset=rs, as_of=AS_OF, mode=mode).to_json()
            for ref, resources in groups.items()}


def assessment_lines(out: Path) -> list[bytes]:
    return (out / "assessments.ndjson").read_bytes().splitlines()


_CACHE: dict[str, Any] = {}


def shared_cohort(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCohort:
    """A generated bulk export of 150 patients, made once per test session
    (each test module wraps it in its own fixture)."""
    if "cohort" not in _CACHE:
        _CACHE["cohort"] = generate_cohort(150, seed=11, out=tmp_path_factory.mktemp("cohort"))
    return _CACHE["cohort"]


def shared_expected(cohort: GeneratedCohort) -> dict[str, bytes]:
    """The expected Assessment of every patient of :func:`shared_cohort`."""
    if "expected" not in _CACHE:
        _CACHE["expected"] = expected_assessments(group_by_patient(cohort.files))
    return dict(_CACHE["expected"])


def interrupted_screen(monkeypatch: pytest.MonkeyPatch, nth: int, inputs: Any, out: Path,
                       **kwargs: Any) -> None:
    """Run :func:`screen_cohort` and stop it (KeyboardInterrupt) when it reaches
    its ``nth`` partition, the ones before it run as usual; afterwards the
    screen's partitions run as usual again, for the resume."""
    from cdss.cohort import _screen as cohort_mod
    from cdss.cohort._worker import run_partition

    calls: list[int] = []

    def stopping(task: Any) -> Any:
        calls.append(task.partition)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return run_partition(task)

    monkeypatch.setattr(cohort_mod, "run_partition", stopping)
    with pytest.raises(KeyboardInterrupt):
        screen_cohort(inputs, out, **kwargs)
    monkeypatch.setattr(cohort_mod, "run_partition", run_partition)
