"""How a package claims the names it re-exports from its private modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["claim"]


def claim(namespace: Mapping[str, Any]) -> None:
    """Make the package whose ``namespace`` this is the home (``__module__``) of
    every class and function in its ``__all__`` that one of its private
    modules defines, so that reprs, pickles and documentation name the public
    path (``cdss.rulesets.Ruleset``), never the private one."""
    package = namespace["__name__"]
    for name in namespace["__all__"]:
        obj = namespace[name]
        home = getattr(obj, "__module__", None)
        if isinstance(home, str) and home.startswith(f"{package}._") and (
                isinstance(obj, type) or callable(obj)):
            obj.__module__ = package
