"""The ``cdss`` command."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import orjson
import typer

from cdss.cli._help import Command, Group
from cdss.cli._options import (
    ConceptMaps,
    Engine,
    OnInvalid,
    RulesetFolders,
    TimeZone,
    fail,
    load_cli_ruleset,
)
from cdss.errors import CDSSError

app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True,
                  help="Clinical decision support from FHIR R4 data.")


class _Format(str, Enum):
    """``cdss evaluate --format``."""

    text = "text"
    json = "json"


def _print_version(value: bool) -> None:
    if value:
        from cdss import __version__

        typer.echo(f"cdss {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Show the version of cdss and exit.")] = False,
) -> None:
    """Clinical decision support from FHIR R4 data: assess a patient's record
    with a versioned ruleset, serve CDS Hooks, screen a cohort, test a ruleset."""


@app.command(cls=Command)
def evaluate(
    files: Annotated[list[Path], typer.Argument(help="FHIR R4 JSON files (Bundle or resources)")],
    ruleset: Annotated[str | None, typer.Option(
        help="id or id@version (default: the default ruleset, as `cdss rulesets` shows)")] = None,
    as_of: Annotated[str | None, typer.Option(help="evaluation time (ISO); default now")] = None,
    output: Annotated[_Format, typer.Option(
        "--format", help="text (for people) or json (the Assessment's JSON)")] = _Format.text,
    engine: Annotated[Engine, typer.Option(
        help="auto (rete where durable-rules is installed), rete or reference")] = Engine.auto,
    paths: RulesetFolders = None,
    concept_maps: ConceptMaps = None,
    timezone: TimeZone = "UTC",
    on_invalid: Annotated[OnInvalid, typer.Option(
        "--on-invalid", help="leave-out (an unreadable resource is left out, with a note) "
                             "or refuse (the record is refused)")] = OnInvalid.leave_out,
) -> None:
    """Evaluate one patient record per file and print each Assessment."""
    from cdss.evaluation import evaluate as run_evaluate
    from cdss.outputs.text import render_text

    status = 0
    try:
        rs = load_cli_ruleset(ruleset, paths, concept_maps)
    except CDSSError as exc:
        fail(exc)
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            typer.secho(f"error: {path}: {exc.strerror}", err=True, fg=typer.colors.RED)
            status = 2
            continue
        try:
            result = run_evaluate(data, ruleset=rs, as_of=as_of, engine=engine.value,
                                  timezone=timezone, on_invalid=on_invalid.value)
        except CDSSError as exc:
            typer.secho(f"error: {path.name}: {exc}", err=True, fg=typer.colors.RED)
            status = 2
            continue
        if output is _Format.json:
            sys.stdout.write(result.to_json().decode() + "\n")
        else:
            if len(files) > 1:
                typer.echo(f"== {path.name}")
            typer.echo(render_text(result))
    raise typer.Exit(code=status)


@app.command("rulesets", cls=Command)
def list_rulesets(
    paths: RulesetFolders = None,
) -> None:
    """List the rulesets found, with status and content hash; "default" marks
    the version run when a command names no ruleset."""
    from cdss.rulesets import available_rulesets, load_ruleset

    try:
        default = load_ruleset(paths=paths).spec
        for spec in sorted(available_rulesets(paths=paths)):
            rs = load_ruleset(spec, paths=paths)
            mark = "default" if spec == default else ""
            typer.echo(f"{spec:28} {rs.file.status:8} {mark:7} {rs.sha256[:16]}  "
                       f"{rs.file.title}")
    except CDSSError as exc:
        fail(exc)


@app.command(cls=Command)
def schema() -> None:
    """Print the JSON Schema of ruleset files."""
    from cdss.rulesets import ruleset_json_schema

    sys.stdout.write(orjson.dumps(ruleset_json_schema(), option=orjson.OPT_INDENT_2
                                  | orjson.OPT_SORT_KEYS).decode() + "\n")


@app.command(cls=Command)
def docs(
    ruleset_id: Annotated[str, typer.Argument(help="ruleset id (`cdss rulesets` lists them)")],
    out: Annotated[Path | None, typer.Option(help="write to this file")] = None,
) -> None:
    """Generate the reference document of a ruleset from its files."""
    from cdss.rulesets import render_ruleset_doc

    try:
        text = render_ruleset_doc(ruleset_id)
    except CDSSError as exc:
        fail(exc)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


def _register_commands() -> None:
    # Commands of the optional parts live beside them; each module imports its
    # extra packages only when its command runs.
    from cdss.cli import _cohort, _monitor, _reports, _service, _testing

    for module in (_service, _reports, _cohort, _testing, _monitor):
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point of the ``cdss`` script."""
    app()

