"""Fixtures shared by every test: the mini ruleset written to a temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.rulesets import MINI_RULESET, write_ruleset

if TYPE_CHECKING:
    import cdss


@pytest.fixture
def mini_path(tmp_path: Path) -> Path:
    return write_ruleset(tmp_path / "rulesets", MINI_RULESET)


@pytest.fixture
def mini(mini_path: Path) -> cdss.Ruleset:
    from cdss.rulesets import load_ruleset_file

    return load_ruleset_file(mini_path)
