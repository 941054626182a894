"""Fixtures shared by every test: the mini ruleset written to a temporary folder,
and the generated cohort the cohort tests screen. With ``CDSS_TEST_INSTALLED=1``
(as CI runs the suite against the installed wheel) the run stops at once unless
``cdss`` is imported from the installed package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.release import installed_mode, not_installed, site_dirs
from tests.support.rulesets import MINI_RULESET, write_ruleset

if TYPE_CHECKING:
    import cdss
    from cdss.cohort import GeneratedCohort


def pytest_configure(config: pytest.Config) -> None:
    if installed_mode():
        import cdss as imported

        problem = not_installed(Path(imported.__file__).parent, site_dirs())
        if problem:
            raise pytest.UsageError(problem)


@pytest.fixture
def mini_path(tmp_path: Path) -> Path:
    return write_ruleset(tmp_path / "rulesets", MINI_RULESET)


@pytest.fixture
def mini(mini_path: Path) -> cdss.Ruleset:
    from cdss.rulesets import load_ruleset_file

    return load_ruleset_file(mini_path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCohort:
    """The session's generated cohort (made once; see ``tests.support.cohort``)."""
    from tests.support.cohort import shared_cohort

    return shared_cohort(tmp_path_factory)
