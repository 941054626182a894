"""``cdss monitor``: know when a rule silently stops working, from the
service's store (``--store``) or from successive screens (``--screens``).
Prints the alarms, writes the report as JSON and as an HTML page, and exits
1 when an alarm of a kind ``--fail-on`` names fired (for cron or CI)."""

from __future__ import annotations

import sys
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from cdss.cli._help import Command
from cdss.cli._options import fail
from cdss.errors import CDSSError


class _Period(str, Enum):
    """``cdss monitor --period``."""

    day = "day"
    week = "week"


class _FailOn(str, Enum):
    """``cdss monitor --fail-on``: a kind of alarm, every kind, or none."""

    all = "all"
    none = "none"
    silent = "silent"
    drop = "drop"
    surge = "surge"
    version = "version"
    override = "override"
    unmapped = "unmapped"


def _kinds(fail_on: list[_FailOn]) -> set[str]:
    from cdss.monitor import ALARM_KINDS

    chosen = {f.value for f in fail_on} or {"all"}
    if "none" in chosen and len(chosen) > 1:
        raise typer.BadParameter("--fail-on none cannot be combined with other kinds")
    if "all" in chosen:
        return set(ALARM_KINDS)
    return chosen - {"none"}


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command(cls=Command)
    def monitor(
        screens: Annotated[list[Path] | None, typer.Argument(
            help="with --screens: screen output folders in order, or a folder of them",
            show_default=False)] = None,
        store: Annotated[str | None, typer.Option(
            "--store", help="the service's store: a SQLite file or a postgresql:// URL")
        ] = None,
        compare_screens: Annotated[bool, typer.Option(
            "--screens", help="compare the screen outputs given as arguments")] = False,
        until: Annotated[str | None, typer.Option(
            help="first day after the window (ISO date); default today (UTC)")] = None,
        period: Annotated[_Period, typer.Option(help="day or week")] = _Period.day,
        window: Annotated[int, typer.Option(min=1, help="periods monitored")] = 14,
        baseline: Annotated[int, typer.Option(
            min=1, help="periods before the window that set the baseline rates")] = 28,
        json_out: Annotated[Path | None, typer.Option(
            "--json", help="write the report as JSON to this file ('-': standard output)")
        ] = None,
        html_out: Annotated[Path | None, typer.Option(
            "--html", help="write the report as a self-contained HTML page to this file")
        ] = None,
        fail_on: Annotated[list[_FailOn] | None, typer.Option(
            "--fail-on", help="alarm kinds that make the exit status 1 (repeatable): all, "
                              "none, silent, drop, surge, version, override, unmapped")
        ] = None,
    ) -> None:
        """Alarms when a rule's firing rate leaves its control limits, a rule
        goes silent, the ruleset changes, overrides rise or unmapped codes
        appear: from the service's store, or across successive screens.

        Exit status: 0 no alarm of a --fail-on kind, 1 such an alarm, 2 an error.
        """
        from cdss.monitor import MonitorSettings, monitor_screens, monitor_store, render_page

        kinds = _kinds(fail_on or [])
        if (store is None) == (not compare_screens):
            fail("give either --store STORE or --screens OUT1 OUT2 ...")
        if store is not None and screens:
            fail("screen folders are given with --screens, not with --store")
        try:
            settings = MonitorSettings(period=period.value, window=window, baseline=baseline)
            if store is not None:
                day = None
                if until is not None:
                    try:
                        day = date.fromisoformat(until)
                    except ValueError:
                        raise typer.BadParameter(
                            f"--until must be an ISO date, not {until!r}") from None
                report = monitor_store(store, until=day, settings=settings)
                from cdss.service._backends import shown

                report["store"] = shown(store)
            else:
                report = monitor_screens(screens or [], settings=settings)
        except CDSSError as exc:
            fail(str(exc))
        _write(report, json_out, html_out, render_page)
        alarms = report["alarms"]
        if json_out != Path("-"):
            _print(report)
        if any(a["kind"] in kinds for a in alarms):
            raise typer.Exit(code=1)


def _write(report: dict[str, Any], json_out: Path | None, html_out: Path | None,
           render: Any) -> None:
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    try:
        if json_out == Path("-"):
            sys.stdout.write(text)
        elif json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(text, encoding="utf-8")
        if html_out is not None:
            html_out.parent.mkdir(parents=True, exist_ok=True)
            html_out.write_text(render(report), encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write the report: {exc.strerror}: {exc.filename}")


def _print(report: dict[str, Any]) -> None:
    alarms = report["alarms"]
    if report["source"] == "store":
        typer.echo(f"window: {report['window']['from']} to {report['window']['until']} "
                   f"(per {report['settings']['period']}), baseline from "
                   f"{report['baseline']['from']}")
    else:
        typer.echo(f"screens: {', '.join(s['label'] for s in report['screens'])}")
    if not alarms:
        typer.echo("no alarm")
        return
    typer.echo(f"{len(alarms)} alarm(s):")
    for alarm in alarms:
        typer.echo(f"  {alarm['kind']:<8} {alarm['period']}  {alarm['message']}")
        for cause in alarm.get("likely_cause", ()):
            typer.echo(f"           likely cause: {cause}")
