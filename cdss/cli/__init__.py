"""The ``cdss`` command (typer, rich): ``evaluate``, ``rulesets``, ``schema``,
``docs``, and the commands of the extras (``serve``, ``screen``, ``diff``,
``generate``, ``test-ruleset``), each importing its extra only when it runs.
"""

from __future__ import annotations

from cdss import _exports
from cdss.cli._app import app, main

__all__ = ["app", "main"]

_exports.claim(globals())
