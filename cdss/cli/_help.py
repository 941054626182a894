"""How the ``cdss`` command shows its help: the conventions of click.

Recent typer releases print each parameter's Python type as its metavar
(``--insecure-dev <bool>``, ``--rulesets <list[Path]>``), which reads as if a
flag took a value. Every ``cdss`` command is built with :class:`Command` (and
the top level with :class:`Group`), whose parameters show what click shows: no
metavar for a flag, ``[a|b]`` for a choice, ``TEXT``, ``INTEGER``, ``PATH``
for a value (or the metavar an option declares), ``FILES...`` for an argument
that takes several, in the usage line too. The help is click's plain text,
whose paragraphs are re-flowed, so a docstring's line breaks never show, and
the list of commands gives each command's first paragraph whole.
Older typer releases render through click itself and show the same.
"""

from __future__ import annotations

import inspect
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["Command", "Group", "choices", "summary"]

_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN",
                          Path: "PATH", datetime: "DATETIME"}


def choices(enum: type[Enum]) -> str:
    """The metavar of an option whose values are ``enum``'s: ``[a|b]``."""
    return "[" + "|".join(str(member.value) for member in enum) + "]"


def _type_name(param: Any) -> str | None:
    """Click's name for the type of ``param``'s values, from typer's
    description of the annotation; None where typer gives none."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return None
    annotation: Any = descriptor.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return choices(annotation)
    return _NAMES.get(annotation, "TEXT")


class _Option(TyperOption):
    """An option shown as click shows it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        return _type_name(self)


class _Argument(TyperArgument):
    """A positional argument shown as click shows it: ``NAME``, ``NAME...``,
    ``[NAME]`` when it may be left out."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the name column shows the metavar already

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        return [name if self.required else f"[{name}]"]


def _conventional(params: list[Any]) -> list[Any]:
    # typer builds its own parameter classes; the subclasses above only change
    # how a parameter is shown, so each parameter is switched to one in place.
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _Option
        elif type(param) is TyperArgument:
            param.__class__ = _Argument
            if param.metavar is None:
                suffix = "..." if param.nargs != 1 else ""
                param.metavar = (param.name or "").upper() + suffix
    return params


def summary(help_text: str | None) -> str:
    """The first paragraph of a docstring on one line: a command's summary in
    the list of commands, whole (click would cut it at a fixed width)."""
    first = inspect.cleandoc(help_text or "").partition("\f")[0].split("\n\n")[0]
    return " ".join(first.split())


class Command(TyperCommand):
    """A ``cdss`` command: click's conventions in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["rich_markup_mode"] = None
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or summary(self.help)


class Group(TyperGroup):
    """The ``cdss`` command itself: click's conventions in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["rich_markup_mode"] = None
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _conventional(super().get_params(ctx))
