"""Fixtures shared by every test: the mini ruleset written to a temporary folder,
and the generated cohort the cohort tests screen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.rulesets import MINI_RULESET, write_ruleset

if TYPE_CHECKING:
    import cdss
    from cdss.cohort import GeneratedCohort


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
