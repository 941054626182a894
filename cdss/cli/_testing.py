"""Commands of property-based ruleset testing (`cdss test-ruleset`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cdss.cli._help import Command
from cdss.cli._options import ConceptMaps, load_cli_ruleset
from cdss.errors import CDSSError

if TYPE_CHECKING:
    from rich.console import Console

    from cdss.rulesets import Ruleset
    from cdss.testing import Report


def _print_report(console: Console, report: Report, ruleset: Ruleset) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{report.ruleset}[/bold] sha256 {report.sha256[:16]}  "
                  f"{report.examples} examples, seed {report.seed}, as of {report.as_of}, "
                  f"{report.elapsed_seconds:.1f} s ({report.examples_per_second:.0f}/s)")
    invariants = Table(title="Invariants", title_justify="left")
    invariants.add_column("invariant")
    invariants.add_column("result")
    invariants.add_column("examples", justify="right")
    for prop in report.properties:
        if not prop.passed:
            result = "[red]FAILED[/red]"
        elif prop.checked == 0:
            result = "[yellow]not exercised[/yellow]"
        else:
            result = "[green]passed[/green]"
        invariants.add_row(escape(prop.name), result, str(prop.checked))
    console.print(invariants)

    titles = {rule.id: rule.rule.title for rule in ruleset.rules}
    coverage = Table(title="Rule coverage", title_justify="left")
    coverage.add_column("rule")
    coverage.add_column("title")
    coverage.add_column("fired", justify="right")
    coverage.add_column("share", justify="right")
    for rule_id, fired in report.coverage.items():
        if rule_id in report.dead_rules:
            count = "[red]0 (dead)[/red]"
        elif rule_id in report.reached_by_search:
            count = "0 (fired in a search aimed at it)"
        else:
            count = str(fired)
        share = f"{100 * fired / report.examples:.0f}%" if report.examples else "-"
        coverage.add_row(rule_id, escape(titles.get(rule_id, "")), count, share)
    console.print(coverage)
    if report.errors:
        console.print(f"[yellow]generated records raised: {escape(str(report.errors))}[/yellow]")


def _print_failures(console: Console, report: Report) -> None:
    from rich.markup import escape

    for failure in report.failures:
        console.print(f"\n[red bold]FAILED {escape(failure.property)}[/red bold]"
                      + ("" if failure.shrunk else " (not shrunk)"))
        console.print(failure.message, markup=False, highlight=False)
        # plain output for what is pasted into a case file: no wrapping, no markup
        typer.echo(f"as_of: {failure.as_of}")
        typer.echo("record:")
        typer.echo(failure.record_json())
        variant = failure.variant_json()
        if variant is not None:
            typer.echo("compared with:")
            typer.echo(variant)
    if report.dead_rules:
        console.print(f"\n[red bold]Dead rules[/red bold] (no generated record fires them): "
                      f"{', '.join(report.dead_rules)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("test-ruleset", cls=Command)
    def test_ruleset(
        ruleset: Annotated[str, typer.Argument(
            help="a ruleset file (<folder>/<id>/<version>.yaml), or id / id@version")],
        max_examples: Annotated[int, typer.Option(
            "--max-examples", min=1, help="generated records to check")] = 100,
        seed: Annotated[int | None, typer.Option(
            help="seed of the generated records (default 0: the same on every run)")] = None,
        as_of: Annotated[str | None, typer.Option(
            "--as-of", help="evaluation time the records are dated against (ISO)")] = None,
        json_file: Annotated[Path | None, typer.Option(
            "--json", help="also write the report as JSON to this file")] = None,
        paths: Annotated[list[Path] | None, typer.Option(
            "--rulesets", help="a folder of a site's own rulesets")] = None,
        concept_maps: ConceptMaps = None,
    ) -> None:
        """Check a ruleset's invariants on generated patient records and show
        which rules fired; a failure prints the shrunk FHIR record (exit 1)."""
        from rich.console import Console

        console = Console()
        try:
            from cdss.testing import DEFAULT_AS_OF, check_ruleset
        except ImportError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        try:
            loaded = load_cli_ruleset(ruleset, paths, concept_maps)
            report = check_ruleset(loaded, max_examples=max_examples, seed=seed,
                                   as_of=DEFAULT_AS_OF if as_of is None else as_of)
        except CDSSError as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(code=2) from None
        _print_report(console, report, loaded)
        _print_failures(console, report)
        if json_file is not None:
            try:
                json_file.parent.mkdir(parents=True, exist_ok=True)
                json_file.write_bytes(report.to_json(indent=True))
            except OSError as exc:
                typer.secho(f"error: {json_file}: {exc.strerror}", err=True, fg=typer.colors.RED)
                raise typer.Exit(code=2) from None
        if report.ok:
            console.print("[green]ok[/green]: every invariant held and every rule fired")
        raise typer.Exit(code=0 if report.ok else 1)
