"""The spill pass puts every line in its patient's partition, in input order,
whether a file holds a patient's lines in a row or interleaved with others',
and whether it runs as one pass or as chunks (byte ranges of a file spilled
apart and put together again); resources no rule can read are spilled
reduced to what intake reads of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdss import load_ruleset
from cdss.cohort._inputs import (
    REDUCED,
    Reducer,
    SpillLayout,
    discover,
    partition_of,
    plan_chunks,
    spill,
)
from cdss.cohort._worker import _read_groups
from tests.support.builders import lab, patient
from tests.support.cohort import write_ndjson

RULESET = "plantar-cramps@1.4.0"
POTASSIUM = "2823-3"  # LOINC potassium, mapped by every version
UNMAPPED = "2093-3"  # LOINC cholesterol: no rule reads it


def _placed(folder: Path, layout: SpillLayout, partitions: int
            ) -> dict[str, list[tuple[int, int]]]:
    placed: dict[str, list[tuple[int, int]]] = {}
    for part in range(partitions):
        for key, entries in _read_groups(layout.partition_files(folder, part)).items():
            placed.setdefault(key, []).extend((part, number) for _, _, number, _, _ in entries)
    return placed


def test_each_line_goes_to_its_patients_partition_in_input_order(tmp_path: Path) -> None:
    ids = ["a", "a", "b", "a", "c", "c", "b", "b", "a"]  # runs and interleaving
    write_ndjson(tmp_path / "in" / "Observation.ndjson",
                 [lab(f"k{i}", POTASSIUM, 3.0 + i / 10, "mmol/L", pid=pid)
                  for i, pid in enumerate(ids)])
    partitions = 3
    # three patients in three partitions: a line in the previous patient's partition shows
    assert len({partition_of(f"Patient/{pid}", partitions) for pid in set(ids)}) == 3
    stats, layout = spill(discover([tmp_path / "in"]), tmp_path / "spill", partitions,
                          tmp_path / "errors.ndjson")
    assert stats.attributed == len(ids)
    placed = _placed(tmp_path / "spill", layout, partitions)
    for pid in set(ids):
        reference = f"Patient/{pid}"
        expected_lines = [n + 1 for n, p in enumerate(ids) if p == pid]
        assert placed[reference] == [(partition_of(reference, partitions), n)
                                     for n in expected_lines]


def _messy_lines(count: int) -> list[bytes]:
    """Lines of several patients with blank, malformed and unattributable
    lines among them."""
    lines: list[bytes] = []
    for i in range(count):
        pid = f"p{i % 7}"
        if i % 11 == 5:
            lines.append(b"")
        elif i % 13 == 6:
            lines.append(b'{"resourceType": "Observation", "id": "trunc')
        elif i % 17 == 3:
            lines.append(orjson.dumps({"resourceType": "Observation", "id": f"nosub{i}"}))
        elif i % 19 == 4:
            lines.append(orjson.dumps(patient(pid)))
        elif i % 23 == 7:  # a carriage return between tokens: JSON whitespace, not a line end
            lines.append(orjson.dumps(lab(f"cr{i}", POTASSIUM, 4.0, "mmol/L", pid=pid)
                                      ).replace(b",", b",\r", 1))
        else:
            lines.append(orjson.dumps(lab(f"o{i}", POTASSIUM if i % 2 else UNMAPPED,
                                          3.5 + i / 100, "mmol/L", pid=pid)))
    return lines


Spilled = tuple[dict[str, Any], dict[int, dict[str, list[Any]]], bytes]


def _spilled(tmp_path: Path, name: str, chunk_bytes: int | None, partitions: int = 4,
             reduce: Reducer | None = None, flush_bytes: int | None = None) -> Spilled:
    folder = tmp_path / name
    stats, layout = spill(discover([tmp_path / "in"]), folder, partitions,
                          tmp_path / f"{name}-errors.ndjson", reduce=reduce,
                          chunk_bytes=chunk_bytes, **(
                              {"flush_bytes": flush_bytes} if flush_bytes else {}))
    groups = {part: _read_groups(layout.partition_files(folder, part))
              for part in range(partitions)}
    return stats.to_dict(), groups, (tmp_path / f"{name}-errors.ndjson").read_bytes()


def test_a_chunk_writes_in_segments_and_reads_back_the_same(tmp_path: Path) -> None:
    """A chunk holds at most about ``flush_bytes`` of lines in memory (a gzip
    file is one chunk, whatever its size): what it writes in many segments
    reads back as what it writes in one."""
    import gzip

    path = write_ndjson(tmp_path / "plain" / "a.ndjson", _messy_lines(300))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.ndjson.gz").write_bytes(gzip.compress(path.read_bytes()))
    one = _spilled(tmp_path, "one", None)
    segmented = _spilled(tmp_path, "segments", None, flush_bytes=2000)
    assert segmented == one
    _, layout = spill(discover([tmp_path / "in"]), tmp_path / "again", 4,
                      tmp_path / "again-errors.ndjson", flush_bytes=2000)
    assert len(layout.chunks) == 1  # the gzip file: one chunk
    assert max(len(layout.partition_files(tmp_path / "again", part))
               for part in range(4)) > 5  # in many segments
    assert SpillLayout.from_json(layout.to_json()) == layout

@pytest.mark.parametrize("chunk_bytes", [64, 500, 3000])
def test_chunks_give_what_one_pass_gives(tmp_path: Path, chunk_bytes: int) -> None:
    write_ndjson(tmp_path / "in" / "a.ndjson", _messy_lines(300))
    write_ndjson(tmp_path / "in" / "b.ndjson", _messy_lines(40)[::-1])
    one = _spilled(tmp_path, "one", None)
    assert len(plan_chunks(discover([tmp_path / "in"]), chunk_bytes)) > 4
    chunked = _spilled(tmp_path, f"c{chunk_bytes}", chunk_bytes)
    assert chunked == one
    assert one[0]["attributed"] == sum(len(entries) for groups in one[1].values()
                                       for entries in groups.values())
    errors = [orjson.loads(row) for row in one[2].splitlines()]
    # the error rows name the lines of the file, not of a chunk
    assert [r["line"] for r in errors if r["file"].endswith("a.ndjson")][:3] == [4, 7, 20]


def test_a_file_that_is_not_ndjson_is_skipped_whole_when_split(tmp_path: Path) -> None:
    lines = [b"not json at all", b"nor this", *_messy_lines(200)]
    write_ndjson(tmp_path / "in" / "a.ndjson", lines)
    one = _spilled(tmp_path, "one", None)
    chunked = _spilled(tmp_path, "chunked", 200)
    assert chunked == one
    assert one[0]["file_errors"] == 1 and one[0]["attributed"] == 0
    assert [orjson.loads(r)["error"] for r in one[2].splitlines()] == ["not-ndjson"]


def test_a_first_chunk_without_a_json_line_is_read_again_whole(tmp_path: Path) -> None:
    # the first chunk holds one bad line only: whether the file is NDJSON is
    # decided by the next line, in the next chunk
    lines = [b"x" * 300, b"also bad", *_messy_lines(50)]
    write_ndjson(tmp_path / "in" / "a.ndjson", lines)
    assert _spilled(tmp_path, "chunked", 100) == _spilled(tmp_path, "one", None)
    lines = [b"x" * 300, *_messy_lines(50)]
    write_ndjson(tmp_path / "in" / "a.ndjson", lines)
    one = _spilled(tmp_path, "one2", None)
    assert _spilled(tmp_path, "chunked2", 100) == one
    assert orjson.loads(one[2].splitlines()[0])["line"] == 1


def test_resources_no_rule_reads_are_spilled_reduced(tmp_path: Path) -> None:
    ruleset = load_ruleset(RULESET)
    unmapped = lab("chol", UNMAPPED, 5.2, "mmol/L", pid="a")
    unmapped["note"] = [{"text": "fasting"}]
    deep: dict[str, Any] = {"text": "x"}
    for _ in range(70):  # beyond intake's nesting bound: spilled whole, for intake to refuse
        deep = {"extension": [deep]}
    hostile = {**lab("deep", UNMAPPED, 1.0, "mmol/L", pid="a"), "valueCodeableConcept": deep}
    mapped = lab("k", POTASSIUM, 4.1, "mmol/L", pid="a")
    write_ndjson(tmp_path / "in" / "Observation.ndjson", [unmapped, hostile, mapped])
    reducer = Reducer([ruleset.terminology])
    long_code = lab("long", UNMAPPED, 1.0, "mmol/L", pid="a")
    long_code["code"]["coding"][0]["code"] = "9" * 300  # beyond intake's code bound
    assert reducer(long_code, orjson.dumps(long_code)) is None
    assert reducer(long_code) is None  # the walk, without the line's bytes, finds it too
    narrative = {**unmapped, "text": {"status": "generated", "div": '<div xmlns="x">'
                                      + "\u2014 a \"long\" narrative " * 40 + "</div>"}}
    assert reducer._plainly_clean(orjson.dumps(unmapped))  # the bytes do prove most lines
    assert reducer._plainly_clean(orjson.dumps(narrative))
    _, groups, _ = _spilled(tmp_path, "r", None, partitions=1, reduce=reducer)
    entries = groups[0]["Patient/a"]
    payloads = [orjson.loads(payload) for _, _, _, _, payload in entries]
    assert payloads[0] == {key: unmapped[key] for key in unmapped
                           if key in ("resourceType", "id", "subject", "code")}
    assert payloads[1] == hostile and payloads[2] == mapped
    assert [rtype for rtype, _, _, _, _ in entries] == [
        f"{REDUCED}Observation", "Observation", "Observation"]
    assert reducer.reduced == 1
    assert [number for _, _, number, _, _ in entries] == [1, 2, 3]


_KEYS = st.sampled_from(["id", "code", "system", "unit", "reference", "resourceType",
                         "display", "text", "div", "value", "co\"de", "c\\ode"])
_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from('ab"\\\u00e9\u2014\n/[]{}'), max_size=12),
    st.integers(200, 300).flatmap(lambda n: st.sampled_from(
        ["x" * n, "\"" * (n // 2), "\\" * (n // 2), "\u00e9" * n, "a\"b" * (n // 3)])),
)
_JSON = st.recursive(
    st.one_of(_TEXT, st.integers(-5, 5), st.booleans(), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(_KEYS, _JSON, max_size=5), ascii_only=st.booleans(),
       spaced=st.booleans(), depth=st.integers(0, 62))
def test_what_the_bytes_prove_clean_intake_finds_clean(body: dict[str, Any], ascii_only: bool,
                                                        spaced: bool, depth: int) -> None:
    """The reducer's look at a line's bytes never passes a resource that
    intake's bounds would refuse (it may send a clean one to the walk)."""
    import json

    from cdss.intake._guard import _clean_json

    for _ in range(depth):  # nesting near the bound
        body = {"extension": [body]}
    resource = {"resourceType": "Observation", **body}
    raw = json.dumps(resource, ensure_ascii=ascii_only,
                     separators=(", ", " : ") if spaced else (",", ":")).encode()
    parsed = orjson.loads(raw)
    reducer = Reducer([])
    if reducer._plainly_clean(raw):
        assert _clean_json(parsed, 4)


def test_warm_workers_spill_every_chunk_and_give_what_one_pass_gives(tmp_path: Path) -> None:
    """Once the worker processes are warm, they spill every chunk (the
    screening process only hands them out), and the partitions, error rows
    and counts are those of one pass in one process."""
    from cdss.cohort import _screen as screen_module

    write_ndjson(tmp_path / "in" / "a.ndjson", _messy_lines(400))
    write_ndjson(tmp_path / "in" / "b.ndjson", _messy_lines(60)[::-1])
    ruleset = load_ruleset(RULESET)
    sources = discover([tmp_path / "in"])
    one = _spilled(tmp_path, "one", None, reduce=Reducer([ruleset.terminology]))
    work = screen_module._Work(tmp_path / "out")
    work.reset()
    chunk_bytes = screen_module._chunk_bytes
    try:
        screen_module._chunk_bytes = lambda total, processes: 700
        with screen_module._Prestarted(2) as prestarted:
            for worker in prestarted.workers:  # wait until both are warm
                message = worker.conn.recv()
                assert message[0] == "ready"
                worker.ready = True
            spilled = screen_module._spill(work, sources, 4, screen_module._Progress(False),
                                           rulesets=[ruleset], reduce=True,
                                           prestarted=prestarted)
            pids = {w.process.pid for w in prestarted.workers}
    finally:
        screen_module._chunk_bytes = chunk_bytes
    assert spilled.chunks > 8 and spilled.reduced > 0
    assert spilled.pids == pids and os.getpid() not in pids
    groups = {part: _read_groups(spilled.layout.partition_files(work.spill, part))
              for part in range(4)}
    assert (spilled.stats, groups, work.spill_errors.read_bytes()) == one
