"""The spill pass puts every line in its patient's partition, in input order,
whether a file holds a patient's lines in a row or interleaved with others'."""

from __future__ import annotations

from pathlib import Path

from cdss.cohort._inputs import discover, partition_of, spill
from tests.support.builders import lab
from tests.support.cohort import write_ndjson


def test_each_line_goes_to_its_patients_partition_in_input_order(tmp_path: Path) -> None:
    ids = ["a", "a", "b", "a", "c", "c", "b", "b", "a"]  # runs and interleaving
    write_ndjson(tmp_path / "in" / "Observation.ndjson",
                 [lab(f"k{i}", "2823-3", 3.0 + i / 10, "mmol/L", pid=pid)
                  for i, pid in enumerate(ids)])
    partitions = 3
    # three patients in three partitions: a line in the previous patient's partition shows
    assert len({partition_of(f"Patient/{pid}", partitions) for pid in set(ids)}) == 3
    stats = spill(discover([tmp_path / "in"]), tmp_path / "spill", partitions,
                  tmp_path / "errors.ndjson")
    assert stats.attributed == len(ids)
    placed: dict[str, list[tuple[int, int]]] = {}
    for part in range(partitions):
        path = tmp_path / "spill" / f"p{part:05d}.tsv"
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            key, _, _, number, _, _ = line.split(b"\t", 5)
            placed.setdefault(key.decode(), []).append((part, int(number)))
    for pid in set(ids):
        reference = f"Patient/{pid}"
        expected_lines = [n + 1 for n, p in enumerate(ids) if p == pid]
        assert placed[reference] == [(partition_of(reference, partitions), n)
                                     for n in expected_lines]
