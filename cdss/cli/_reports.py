"""Reports on the service's store: ``cdss feedback-report`` (per rule: cards
shown, accepted, overridden, override reasons) and ``cdss shadow-report``
(per rule: what a candidate version gained and lost). Both read the store
file only, never the service."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

import orjson
import typer

from cdss.cli._help import Command
from cdss.cli._options import fail
from cdss.errors import CDSSError

Store = Annotated[str, typer.Option(
    "--store", envvar="CDSS_STORE",
    help="the service's store: a SQLite file or a postgresql:// URL")]
Since = Annotated[str | None, typer.Option(help="from this time (ISO 8601; UTC if no zone)")]
Until = Annotated[str | None, typer.Option(help="until this time, excluded (ISO 8601)")]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{option} must be an ISO 8601 time, not {value!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header, *[[("-" if v is None else str(v)) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _report(read: Callable[..., dict[str, Any]], store: str, since: str | None,
            until: str | None, as_json: bool) -> dict[str, Any] | None:
    """The report ``read`` gives for the period, printed as JSON (then None) or
    headed by its period for a table; a store that cannot be read exits 2."""
    try:
        report = read(store, since=_time(since, "--since"), until=_time(until, "--until"))
    except CDSSError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return None
    typer.echo(_period(report))
    return report


def _period(report: dict[str, Any]) -> str:
    return f"period: {report['since'] or 'start'} to {report['until'] or 'now'}"


def _by_item(by_item: dict[str, dict[str, int]]) -> str:
    """``flag gained 2, card lost 1``: a rule's changes by item."""
    return ", ".join(f"{item} {change} {n}" for item, counts in by_item.items()
                     for change, n in sorted(counts.items()))


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("feedback-report", cls=Command)
    def feedback_report(store: Store, since: Since = None, until: Until = None,
                        as_json: AsJson = False,
                        comments: Annotated[bool, typer.Option(
                            "--comments", help="also print the override comments' text")
                        ] = False) -> None:
        """Feedback per rule: cards shown, accepted, overridden, override reasons."""
        from cdss.service._store import feedback_report as report_of

        report = _report(functools.partial(report_of, comments=comments), store, since, until,
                         as_json)
        if report is None:
            return
        rows = []
        for r in report["rules"]:
            rate = None if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}"
            reasons = ", ".join(f"{x['code']} ({x['display'] or '-'}) {x['count']}"
                                for x in r["reasons"])
            rows.append([r["ruleset"] or "(unknown card)", "(none)" if r["rule"] == ""
                         else r["rule"], r["shown"], r["accepted"], r["overridden"], rate,
                         r["comments"], reasons or None])
        typer.echo(_table(["ruleset", "rule", "shown", "accepted", "overridden",
                           "acceptance", "comments", "override reasons"], rows))
        if comments:
            for r in report["rules"]:
                for text in r.get("comment_texts", ()):
                    typer.echo(f"{r['rule'] or '(unknown)'}: {text}")

    @app.command("shadow-report", cls=Command)
    def shadow_report(store: Store, since: Since = None, until: Until = None,
                      as_json: AsJson = False) -> None:
        """What shadow candidates would have changed: calls, calls differing,
        distinct patients differing, and per rule the items and cards gained
        and lost."""
        from cdss.service._store import shadow_report as report_of

        report = _report(report_of, store, since, until, as_json)
        if report is None:
            return
        for s in report["services"]:
            typer.echo(f"\n{s['service']}: {s['active']} (active) vs {s['candidate']} "
                       f"(candidate)")
            typer.echo(f"calls {s['calls']}, differing {s['differing']}, patients differing "
                       f"{s['patients_differing']}, failed {s['failed']}, dropped "
                       f"{s['dropped']}")
            if s["rules"]:
                rows = [["(none)" if r["rule"] == "" else r["rule"], r["gained"], r["lost"],
                         r["changed"], _by_item(r["by_item"])] for r in s["rules"]]
                typer.echo(_table(["rule", "gained", "lost", "changed", "by item"], rows))
