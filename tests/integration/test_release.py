"""The wheel holds what the package is: every module, ``py.typed``, every SQL on
FHIR view and every ruleset file (versions, value sets, site maps, cases, the
index), and nothing else; its metadata names the distribution, the version, the
Pythons and the ``cdss`` command.

From a source checkout the wheel is built here (``pip wheel``) and compared with
the checkout. In CI (``CDSS_TEST_DIST``) the wheel and sdist CI built are read: the
wheel is compared with the sdist it was built from, the sdist's rulesets with the
checkout's, and the installed package with the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cdss
from cdss.cohort import VIEWS
from cdss.rulesets import available_rulesets
from tests.support.paths import ROOT
from tests.support.release import (
    DIST_ENV,
    DISTRIBUTION,
    differences,
    expected_wheel_files,
    installed_mode,
    not_installed,
    sdist_files,
    source_files,
    wheel_files,
    wheel_metadata,
)


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{DIST_ENV}={folder} must hold one {pattern}, holds {found}"
    return found[0]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The wheel under test and the files it must hold."""
    dist = os.environ.get(DIST_ENV)
    if dist:
        folder = Path(dist)
        return _one(folder, "*.whl"), expected_wheel_files(sdist_files(_one(folder, "*.tar.gz")))
    if installed_mode():
        pytest.fail(f"testing the installed package needs {DIST_ENV}: the folder holding the "
                    "wheel that was installed and its sdist")
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "--wheel-dir", str(out), str(ROOT)],
                           capture_output=True, text=True, check=False, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return _one(out, "*.whl"), expected_wheel_files(source_files(ROOT))


def test_the_wheel_holds_every_file_of_the_package_and_nothing_else(
        release: tuple[Path, set[str]]) -> None:
    wheel, expected = release
    assert differences(expected, wheel_files(wheel)) == []


def test_the_wheel_holds_the_package_data_by_name(release: tuple[Path, set[str]]) -> None:
    wheel, _ = release
    files = wheel_files(wheel)
    rulesets = {n for n in files if n.startswith("cdss/_rulesets/")}
    versions = {n for n in rulesets if n.count("/") == 3 and n.endswith(".yaml")
                and n.rsplit("/", 1)[1][0].isdigit()}
    for name in ("cdss/py.typed", "cdss/_rulesets/index.yaml",
                 *(f"cdss/cohort/views/{view}.json" for view in VIEWS)):
        assert name in files, name
    shipped = {f"cdss/_rulesets/{spec.replace('@', '/')}.yaml" for spec in available_rulesets()}
    assert shipped and shipped == versions
    assert any("/cases/" in n for n in rulesets)
    assert not any(n.startswith(("tests/", "examples/", "rulesets/")) for n in files)


def test_the_wheel_names_the_release(release: tuple[Path, set[str]]) -> None:
    wheel, _ = release
    meta = wheel_metadata(wheel)
    lines = meta["METADATA"].splitlines()
    assert f"Name: {DISTRIBUTION}" in lines
    assert f"Version: {cdss.__version__}" in lines
    assert "Requires-Python: >=3.11" in lines
    assert "cdss = cdss.cli:main" in meta["entry_points.txt"]
    for version in ("3.11", "3.12", "3.13", "3.14", "3.15"):
        assert f"Classifier: Programming Language :: Python :: {version}" in lines


def test_the_sdist_holds_every_ruleset_file_of_the_checkout() -> None:
    dist = os.environ.get(DIST_ENV)
    if not dist:  # from a checkout, the wheel is compared with the checkout itself
        return
    sdist = {n for n in sdist_files(_one(Path(dist), "*.tar.gz")) if n.startswith("rulesets/")}
    checkout = {n for n in source_files(ROOT) if n.startswith("rulesets/")}
    assert checkout and sdist == checkout


def test_the_installed_package_is_the_wheel(release: tuple[Path, set[str]]) -> None:
    wheel, _ = release
    package = Path(cdss.__file__).resolve().parent
    if not installed_mode():  # a checkout's package is compared with the wheel above
        return
    missing = [n for n in sorted(wheel_files(wheel)) if not (package.parent / n).is_file()]
    assert missing == []


# The comparison itself can fail: a file left out of a wheel, or one too many.
def test_a_view_left_out_of_the_wheel_is_named() -> None:
    expected = expected_wheel_files(["cdss/__init__.py", "cdss/cohort/views/flags.json",
                                     "rulesets/index.yaml", "rulesets/x/1.0.0.yaml"])
    actual = {"cdss/__init__.py", "cdss/_rulesets/index.yaml", "cdss/_rulesets/x/1.0.0.yaml",
              "tests/test_x.py"}
    assert differences(expected, actual) == [
        "missing from the wheel: cdss/cohort/views/flags.json",
        "in the wheel, not in the source: tests/test_x.py",
    ]


def test_a_source_tree_is_not_an_installed_package(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "site-packages"
    assert not_installed(site / "cdss", [site]) is None
    problem = not_installed(tmp_path / "checkout" / "cdss", [site])
    assert problem is not None and "checkout" in problem and "without its cdss/ folder" in problem
