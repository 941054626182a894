"""Options and helpers shared by the ``cdss`` commands."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from cdss.rulesets import Ruleset

__all__ = ["ConceptMaps", "Engine", "IntakeMode", "OnInvalid", "RulesetFolders", "TimeZone",
           "fail", "load_cli_ruleset"]


def fail(reason: object) -> NoReturn:
    """Say ``error: <reason>`` on stderr and end the command with exit status 2."""
    typer.secho(f"error: {reason}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


class _Choice(str, Enum):
    """The values an option takes: click checks them and the help lists them."""

    def __str__(self) -> str:
        return str(self.value)


class Engine(_Choice):
    """``--engine``: which evaluator runs the rules."""

    auto = "auto"
    rete = "rete"
    reference = "reference"


class IntakeMode(_Choice):
    """``--mode`` / ``--intake``: how records are read."""

    lean = "lean"
    strict = "strict"


class OnInvalid(_Choice):
    """``--on-invalid``: what a resource that cannot be read costs."""

    leave_out = "leave-out"
    refuse = "refuse"


RulesetFolders = Annotated[
    list[Path] | None, typer.Option("--rulesets", help="a folder of a site's own rulesets")
]
ConceptMaps = Annotated[
    list[Path] | None, typer.Option(
        "--concept-map", help="a site's concept-map file (its codes onto the ruleset's "
                              "concepts); repeat for several")
]
TimeZone = Annotated[str, typer.Option(
    "--timezone", help="IANA time zone of times recorded without one (default UTC)")]


def load_cli_ruleset(spec: str | None, paths: list[Path] | None,
                     concept_maps: list[Path] | None) -> Ruleset:
    """The ruleset a command names: a ruleset file (``<folder>/<id>/<version>.yaml``)
    or ``id[@version]``, with a site's folders and concept maps; None is the
    default ruleset."""
    from cdss.rulesets import load_ruleset, load_ruleset_file

    if spec is None:
        return load_ruleset(paths=paths, concept_maps=concept_maps or ())
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return load_ruleset_file(path, concept_maps=concept_maps or ())
    return load_ruleset(spec, paths=paths, concept_maps=concept_maps or ())
