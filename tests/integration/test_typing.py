"""The library type-checks under mypy --strict, and the tests under the looser
settings pyproject.toml gives ``tests.*``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the fast subset: pytest -m 'not slow'

ROOT = Path(__file__).resolve().parents[2]


def _mypy(*target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file",
         str(ROOT / "pyproject.toml"), *target],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )


def test_mypy_strict_passes_on_the_library() -> None:
    # by package name: the checkout's cdss/ when run from one, the installed package
    # (which ships py.typed) when CI runs the suite against the wheel
    result = _mypy("-p", "cdss")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_on_the_tests() -> None:
    result = _mypy(str(ROOT / "tests"))
    assert result.returncode == 0, result.stdout + result.stderr
