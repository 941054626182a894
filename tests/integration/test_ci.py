"""CI runs what the README says on the Pythons the package declares: the README's
first two ``bash`` blocks are the commands ``.ci/leg`` runs, ``.ci/run`` tests
exactly the Pythons of the classifiers, and both scripts parse."""

from __future__ import annotations

import re
import subprocess

import pytest
import tomllib

from tests.support.paths import ROOT

SCRIPTS = [ROOT / ".ci" / "run", ROOT / ".ci" / "leg"]


def _bash_blocks(text: str) -> list[str]:
    """The README's ```bash blocks, as .ci/leg reads them (its awk, in Python)."""
    return [m.group(1).strip() for m in re.finditer(r"^```bash\n(.*?)^```$", text, re.S | re.M)]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_ci_scripts_parse(script: object) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_ci_runs_the_readmes_first_two_commands() -> None:
    blocks = _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    first, tests = blocks[0], blocks[1]
    assert "\n" not in first and "\n" not in tests  # one command each
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert 'pip install ".[dev,rete]"' in first
    assert "cdss evaluate examples/patients/02-older-thiazide-low-magnesium.json" in first
    assert tests == "bash tests/tools/install.sh && python -m pytest -q"
    leg = (ROOT / ".ci" / "leg").read_text(encoding="utf-8")
    assert 'readme_block 1' in leg and 'readme_block 2' in leg


def test_ci_tests_the_pythons_the_package_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = sorted(
        (c.rsplit(" ", 1)[1] for c in project["classifiers"]
         if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)),
        key=lambda v: tuple(map(int, v.split("."))))
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    found = re.search(r"^SUPPORTED=\(([^)]*)\)$", run, re.M)
    assert found is not None
    assert found.group(1).split() == declared
    assert project["requires-python"] == f">={declared[0]}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {declared[0]}\u2013{declared[-1]}" in readme
