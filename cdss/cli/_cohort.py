"""Commands of cohort screens (`cdss screen`, `cdss diff`, `cdss generate`).

The commands import the cohort machinery (and through it dask and pyarrow)
only when they run, so that ``cdss --help`` and the other commands stay fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cdss.cli._help import Command
from cdss.cli._options import ConceptMaps, IntakeMode, RulesetFolders, fail, load_cli_ruleset

if TYPE_CHECKING:
    from cdss.cohort import DiffReport, ScreenSummary


def _show_summary(summary: ScreenSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Screen with {summary.ruleset['id']}@{summary.ruleset['version']} "
                        f"as of {summary.as_of}", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in (("patients seen", summary.patients),
                         ("assessments", summary.assessed),
                         ("patient error rows", summary.patient_errors),
                         ("resource error rows", summary.resource_errors),
                         ("file error rows", summary.file_errors)):
        table.add_row(label, f"{value:,}")
    for label, key in (("the export's own error rows", "export_errors"),
                       ("block headers skipped", "block_headers"),
                       ("deleted files not read", "deleted_files")):
        if summary.resources.get(key):
            table.add_row(label, f"{summary.resources[key]:,}")
    table.add_row("count in = count out", "yes" if summary.balanced else "NO")
    if summary.worklist:
        table.add_row("on the worklist", f"{summary.worklist.get('patients', 0):,}")
    console.print(table)
    if summary.flags:
        flags = Table(title="Flag prevalence")
        flags.add_column("flag")
        flags.add_column("patients", justify="right")
        flags.add_column("prevalence", justify="right")
        for code, n in summary.flags.items():
            flags.add_row(code, f"{n:,}", f"{summary.prevalence(code):.1%}")
        console.print(flags)
    seconds = summary.timings.get("total_seconds", 0.0)
    console.print(f"results in {summary.out} ({seconds:.1f} s, "
                  f"{summary.timings.get('patients_per_second', 0):,.0f} patients/s)")


def _describe(change: dict[str, Any], group: str) -> str:
    parts = []
    data = change.get(group, {})
    parts += [f"+{code}" for code in data.get("added", ())]
    parts += [f"-{code}" for code in data.get("removed", ())]
    parts += [f"~{code}" for code in data.get("modified", ())]
    parts += [f"{s['code']} {s['from']}->{s['to']}" for s in data.get("severity", ())]
    parts += [f"{s['code']} {s['from']}->{s['to']}" for s in data.get("urgency", ())]
    return ", ".join(parts)


def _show_diff(report: DiffReport, limit: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    before = f"{report.from_ruleset['id']}@{report.from_ruleset['version']}"
    after = f"{report.to_ruleset['id']}@{report.to_ruleset['version']}"
    console.print(f"{before} -> {after} as of {report.as_of}: {report.patients:,} patients, "
                  f"{report.changed:,} changed, {report.unchanged:,} unchanged, "
                  f"{report.errors:,} with errors")
    if not report.changes:
        return
    table = Table(title="Patients whose results change")
    table.add_column("patient", no_wrap=True)
    for column in ("flags", "referrals", "plan", "data requests"):
        table.add_column(column, overflow="fold")
    for change in report.changes[:limit]:
        if "error" in change:
            errors = change["error"]
            table.add_row(change["patient"], f"error: {errors.get('from') or errors.get('to')}",
                          "", "", "")
            continue
        table.add_row(change["patient"], _describe(change, "flags"),
                      _describe(change, "referrals"), _describe(change, "plan"),
                      _describe(change, "data_requests"))
    console.print(table)
    if len(report.changes) > limit:
        console.print(f"... and {len(report.changes) - limit:,} more (all of them with --out)")


# Options screen and diff share.
Workers = Annotated[int | None, typer.Option(
    help="worker processes (default: one per core; 0: in this process)")]
class _Executor(str, Enum):
    """``--executor``: where partitions run."""

    local = "local"
    dask = "dask"


class _ScreenFormat(str, Enum):
    """``cdss screen --format``: the outputs besides the standard ones."""

    fhir = "fhir"


class _DiffFormat(str, Enum):
    """``cdss diff --format``."""

    table = "table"
    json = "json"


Executor = Annotated[_Executor, typer.Option(
    help="where partitions run: local (worker processes) or dask")]
Scheduler = Annotated[str | None, typer.Option(
    help="Dask scheduler address (with --executor dask)")]
Mode = Annotated[IntakeMode, typer.Option(help="intake: lean or strict")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("screen", cls=Command)
    def screen_command(
        inputs: Annotated[list[Path], typer.Argument(
            help="bulk NDJSON files (.ndjson, .ndjson.gz), a bulk-export folder or its "
                 "manifest, or a folder of Bundles (*.json)")],
        ruleset: Annotated[str, typer.Option(help="ruleset id or id@version")],
        as_of: Annotated[str, typer.Option("--as-of", help="evaluation time (ISO date or "
                                                           "date-time)")],
        out: Annotated[Path, typer.Option(help="folder for the results")],
        workers: Workers = None,
        executor: Executor = _Executor.local,
        scheduler: Scheduler = None,
        resume: Annotated[bool, typer.Option(
            "--resume", help="continue an interrupted screen in --out")] = False,
        mode: Mode = IntakeMode.lean,
        paths: RulesetFolders = None,
        partitions: Annotated[int | None, typer.Option(
            help="number of partitions (default: by input size)")] = None,
        progress: Annotated[bool | None, typer.Option(
            "--progress/--no-progress", help="progress bar (default: on a terminal)")] = None,
        concept_maps: ConceptMaps = None,
        identifiers: Annotated[bool, typer.Option(
            "--identifiers/--no-identifiers",
            help="name patients in the worklist and the report (--no-identifiers: row "
                 "numbers instead, for sharing outside the care team)")] = True,
        worklist_shown: Annotated[int, typer.Option(
            help="worklist rows shown in report.html (worklist.csv holds all)")] = 500,
        formats: Annotated[list[_ScreenFormat] | None, typer.Option(
            "--format", help="also write this output (repeatable): fhir, the results as "
                             "FHIR Bulk Data NDJSON in fhir/ under --out")] = None,
    ) -> None:
        """Screen a cohort: every patient of a bulk export through a ruleset."""
        from cdss.cohort import screen
        from cdss.errors import CDSSError

        try:
            loaded = load_cli_ruleset(ruleset, paths, concept_maps)
            summary = screen(inputs, ruleset=loaded, as_of=as_of, out=out, workers=workers,
                             mode=mode.value, executor=executor.value, scheduler=scheduler,
                             resume=resume,
                             progress=sys.stderr.isatty() if progress is None else progress,
                             paths=paths, partitions=partitions, identifiers=identifiers,
                             worklist_shown=worklist_shown,
                             formats=[f.value for f in formats or ()])
        except CDSSError as exc:
            fail(exc)
        _show_summary(summary)
        if formats and _ScreenFormat.fhir in formats:
            typer.echo(f"FHIR Bulk Data output in {summary.out / 'fhir'} (manifest.json)")

    @app.command("diff", cls=Command)
    def diff_command(
        inputs: Annotated[list[Path], typer.Argument(
            help="bulk NDJSON files, a bulk-export folder or a folder of Bundles")],
        from_spec: Annotated[str, typer.Option("--from", help="ruleset id@version before")],
        to_spec: Annotated[str, typer.Option("--to", help="ruleset id@version after")],
        as_of: Annotated[str | None, typer.Option(
            "--as-of", help="evaluation time (ISO); default: today, UTC")] = None,
        out: Annotated[Path | None, typer.Option(
            help="write the full report as JSON")] = None,
        workers: Workers = None,
        executor: Executor = _Executor.local,
        scheduler: Scheduler = None,
        mode: Mode = IntakeMode.lean,
        paths: RulesetFolders = None,
        limit: Annotated[int, typer.Option(help="patients shown in the table")] = 50,
        output: Annotated[_DiffFormat, typer.Option(
            "--format", help="table (for people) or json (the whole report)")] = _DiffFormat.table,
        concept_maps: ConceptMaps = None,
        html: Annotated[Path | None, typer.Option(
            help="write the report for clinicians as one HTML page")] = None,
        identifiers: Annotated[bool, typer.Option(
            "--identifiers/--no-identifiers",
            help="name example patients by reference in the HTML page")] = True,
        expect: Annotated[Path | None, typer.Option(
            help="expectations file (YAML): exit 1 when the changes go beyond it")] = None,
    ) -> None:
        """Which patients' flags and plans change between two ruleset versions.

        With --expect, a release gate: exit code 1 and each violation listed
        when the changes go beyond what the expectations file allows, 0 when
        they do not, 2 when the file (or the diff) cannot be read or run."""
        from datetime import datetime, timezone

        from cdss.cohort import diff
        from cdss.cohort._gate import Expectations, check, load_expectations
        from cdss.errors import CDSSError

        when = as_of or datetime.now(timezone.utc).date().isoformat()
        expectations: Expectations | None = None
        try:
            if expect is not None:
                expectations = load_expectations(expect)
            report = diff(inputs, from_ruleset=load_cli_ruleset(from_spec, paths, concept_maps),
                          to_ruleset=load_cli_ruleset(to_spec, paths, concept_maps), as_of=when,
                          workers=workers, mode=mode.value, executor=executor.value,
                          scheduler=scheduler,
                          paths=paths, out=out, progress=sys.stderr.isatty())
        except CDSSError as exc:
            fail(exc)
        if output is _DiffFormat.json:
            sys.stdout.write(report.to_json().decode() + "\n")
        else:
            _show_diff(report, limit)
        if html is not None:
            from cdss.cohort._worker import write_atomic

            try:
                html.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(html, report.to_html(identifiers=identifiers).encode("utf-8"))
            except OSError as exc:
                fail(exc)
        if expectations is not None:
            violations = check(report, expectations)
            if violations:
                typer.secho(f"release gate: {len(violations)} change(s) beyond {expect}:",
                            err=True, fg=typer.colors.RED)
                for violation in violations:
                    typer.echo(f"  - {violation}", err=True)
                raise typer.Exit(code=1)
            typer.echo(f"release gate: the changes are within {expect}", err=True)

    @app.command("generate", cls=Command)
    def generate_command(
        patients: Annotated[int, typer.Option(help="number of patients")],
        out: Annotated[Path, typer.Option(help="folder for the bulk export")],
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        as_of: Annotated[str, typer.Option(
            "--as-of", help="the date the data is relative to")] = "2026-03-01",
        observation_files: Annotated[int, typer.Option(
            help="Observation files (2 or more)")] = 2,
        gzip_files: Annotated[bool, typer.Option("--gzip", help="write .ndjson.gz")] = False,
        ruleset: Annotated[str | None, typer.Option(
            help="ruleset id, id@version or file whose content the data has "
                 "(default: the default ruleset)")] = None,
        paths: RulesetFolders = None,
        concept_maps: ConceptMaps = None,
    ) -> None:
        """Write a synthetic cohort as a FHIR bulk export (NDJSON and manifest), with
        the codes, units and thresholds a ruleset reads."""
        from cdss.cohort import generate_cohort
        from cdss.errors import CDSSError
        from cdss.rulesets import Ruleset, load_ruleset

        try:
            loaded: Ruleset | None = None
            if ruleset is not None:
                loaded = load_cli_ruleset(ruleset, paths, concept_maps)
            elif paths or concept_maps:
                loaded = load_ruleset(paths=paths, concept_maps=concept_maps or ())
            cohort = generate_cohort(patients, ruleset=loaded, seed=seed, out=out, as_of=as_of,
                                     observation_files=observation_files,
                                     gzip_files=gzip_files)
        except CDSSError as exc:
            fail(exc)
        counts = ", ".join(f"{n:,} {t}" for t, n in cohort.counts.items())
        typer.echo(f"wrote {counts} to {cohort.out} (manifest {cohort.manifest.name})")
