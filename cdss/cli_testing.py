"""Commands of property-based ruleset testing (`cdss test-ruleset`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
