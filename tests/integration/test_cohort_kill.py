"""A screen killed with SIGKILL and resumed writes the files of one that ran
through, byte for byte.

``cdss screen --format fhir --workers 2`` runs as a process of its own, in a
session of its own; once some partitions have their done markers and others
are being evaluated, it is killed with SIGKILL: no handler runs, files being
written are left half-written under their temporary names. Either the whole
session is killed (the screen and its worker processes, as a machine or a
container going down would kill them), or the screen's process alone (``kill
-9``, an out-of-memory kill): its workers then die with it rather than finish
their partitions behind the back of the resumed screen. ``cdss screen
--resume`` then finishes it, reusing the partitions that were done, and every
file of the output folder is the same, byte for byte, as that of the same
screen run without interruption, except ``run.json``, which measures the run
itself (timings, peak memory, ``resumed``). The working folder
``.cdss-screen`` is the screen's state, not its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from cdss.cohort import generate_cohort
from tests.support.cohort import AS_OF, RULESET

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

_PARTITIONS = 12


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cdss.cli", "screen", str(data), "--ruleset", RULESET,
            "--as-of", AS_OF, "--out", str(out), "--workers", "2", "--partitions",
            str(_PARTITIONS), "--format", "fhir", "--no-progress", *extra]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def _alive(group: int) -> list[int]:
    """The processes of ``group`` still running (zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(entry.name))
    return found


def _in_flight(parts: Path) -> set[str]:
    """The partitions being evaluated: a journal and no done marker."""
    return {p.stem for p in parts.glob("p*.journal")
            if not p.with_suffix(".done").exists()}


def _killed_mid_way(command: list[str], parts: Path, *, whole_session: bool
                    ) -> tuple[set[str], set[str]]:
    """Start ``command``; once two partitions are done and another is being
    evaluated, SIGKILL its whole session or only its own process. Return the
    partitions done and those in flight at the kill, once every process of
    the session has gone."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(parts.glob("p*.done"))) < 2 or not _in_flight(parts):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "no partition was done in 120 s"
            time.sleep(0.005)
        if whole_session:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        done = {p.stem for p in parts.glob("p*.done")}
        in_flight = _in_flight(parts)
        process.wait(timeout=30)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        raise
    finally:
        if process.stderr is not None:
            process.stderr.close()
    deadline = time.monotonic() + 30
    while _alive(process.pid):  # the workers too, so that nothing writes any more
        assert time.monotonic() < deadline, f"still running: {_alive(process.pid)}"
        time.sleep(0.05)
    return done, in_flight


def _files(out: Path) -> dict[str, bytes]:
    """Every file of the output folder but the working folder, by path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and ".cdss-screen" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cohort(1200, seed=5, out=tmp_path_factory.mktemp("in")).out


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The screen run without interruption."""
    out = tmp_path_factory.mktemp("straight")
    _run(_command(data, out))
    return out


@pytest.mark.parametrize("whole_session", [True, False], ids=["session", "screen-only"])
def test_a_screen_killed_with_sigkill_resumes_to_the_same_files(
        data: Path, straight: Path, tmp_path: Path, whole_session: bool) -> None:
    killed = tmp_path / "killed"
    parts = killed / ".cdss-screen" / "parts"
    done, in_flight = _killed_mid_way(_command(data, killed), parts,
                                      whole_session=whole_session)
    assert 2 <= len(done) < _PARTITIONS and in_flight  # killed mid-way
    # no worker went on with its partition after the kill
    assert {p.stem for p in parts.glob("p*.done")} == done
    assert not (killed / "summary.json").exists()
    _run(_command(data, killed, "--resume"))

    expected, resumed = _files(straight), _files(killed)
    assert {"assessments.ndjson", "assessments.parquet", "errors.ndjson", "summary.json",
            "report.html", "worklist.csv", "worklist.parquet", "run.json",
            "fhir/manifest.json", "fhir/GuidanceResponse.ndjson",
            "fhir/DetectedIssue.ndjson"} <= set(expected)
    assert sorted(resumed) == sorted(expected)
    for name in expected.keys() - {"run.json"}:  # byte for byte
        assert resumed[name] == expected[name], name
    run = orjson.loads(resumed["run.json"])
    # the partitions done before the kill were reused, not evaluated again
    assert run["resumed"] is True
    assert len(done) <= run["timings"]["partitions_reused"] < _PARTITIONS
    assert orjson.loads(expected["run.json"])["timings"]["partitions_reused"] == 0
