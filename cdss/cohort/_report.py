"""A cohort screen's summary as one self-contained HTML page.

The page has no external assets (no scripts, fonts, style sheets or images
from elsewhere), so it can be mailed or archived as one file and opened
offline: the style is inline and the flag prevalence chart is inline SVG.
Every value from the data is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

__all__ = ["bar_chart_svg", "render_report"]

_SEVERITY_COLOURS = {"critical": "#b71c1c", "high": "#e65100", "moderate": "#f9a825",
                     "low": "#2e7d32", "none": "#90a4ae"}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:60rem;color:#1c2733;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .8rem;text-align:left;
border-bottom:1px solid #eef1f4}th{font-weight:600;background:#f6f8fa}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#2e7d32;font-weight:600}.bad{color:#b71c1c;font-weight:600}
.muted{color:#57606a;font-size:.9rem}code{font-size:.85rem;background:#f6f8fa;
padding:.1rem .3rem;border-radius:3px;word-break:break-all}
"""


def _num(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    return escape(str(value))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            cells.append(f'<td class="n">{_num(cell)}</td>' if numeric
                         else f"<td>{_num(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def bar_chart_svg(bars: Sequence[tuple[str, float, str]], *, title: str,
                  width: int = 720) -> str:
    """A horizontal bar chart as inline SVG: ``bars`` are (label, share 0..1,
    annotation). Shares are drawn against 100%."""
    if not bars:
        return '<p class="muted">No flags were raised.</p>'
    label_w, bar_h, gap, top = 260, 22, 8, 10
    plot_w = width - label_w - 120
    height = top + len(bars) * (bar_h + gap) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" '
             f'font-family="system-ui,sans-serif" font-size="13">',
             f"<title>{escape(title)}</title>"]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + tick * plot_w
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
                     f'y2="{height - 20}" stroke="#eef1f4"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" '
                     f'fill="#57606a">{int(tick * 100)}%</text>')
    for i, (label, share, note) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = max(0.0, min(1.0, share)) * plot_w
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" '
                     f'text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                     f'fill="#3b6ea8"><title>{escape(label)}: {escape(note)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" '
                     f'fill="#1c2733">{escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_report(summary: Mapping[str, Any]) -> str:
    """The HTML page of a screen summary (the content of ``summary.json``)."""
    ruleset = summary.get("ruleset", {})
    counts = summary.get("counts", {})
    spec = f"{ruleset.get('id')}@{ruleset.get('version')}"
    flags = summary.get("flags", {})
    bars = [(code, float(v.get("prevalence", 0)),
             f"{v.get('prevalence', 0) * 100:.1f}% ({v.get('patients', 0):,})")
            for code, v in flags.items()]
    balanced = bool(counts.get("balanced"))
    severity = summary.get("highest_severity", {})
    severity_rows = [(name, severity.get(name, 0)) for name in _SEVERITY_COLOURS
                     if name in severity]
    resources = summary.get("resources", {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Cohort screen: {escape(spec)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Cohort screen with {escape(str(ruleset.get('title', spec)))}</h1>",
        f'<p class="muted">Ruleset <code>{escape(spec)}</code>, evaluated as of '
        f"<code>{escape(str(summary.get('as_of')))}</code>, {escape(str(summary.get('mode')))}"
        f" intake, {escape(str(summary.get('executor')))} executor.</p>",
        "<h2>Counts</h2>",
        _table([
            ("Patients seen", counts.get("patients", 0)),
            ("Assessments", counts.get("assessments", 0)),
            ("Patient error rows", counts.get("patient_errors", 0)),
            ("Resource error rows (no patient)", counts.get("resource_errors", 0)),
            ("File error rows", counts.get("file_errors", 0)),
            ("Resources read", resources.get("resources", 0)),
            ("Resources of no patient (skipped)", resources.get("not_patient_specific", 0)),
        ]),
        (f'<p class="ok">Every patient seen has one row: {counts.get("patients", 0):,} = '
         f'{counts.get("assessments", 0):,} assessments + {counts.get("patient_errors", 0):,}'
         " error rows.</p>") if balanced else
        '<p class="bad">The counts do not balance.</p>',
        "<h2>Flag prevalence</h2>",
        '<p class="muted">Share of assessed patients with each flag.</p>',
        bar_chart_svg(bars, title="Flag prevalence"),
        "<h2>Highest severity per patient</h2>",
        _table(severity_rows, ("severity", "patients")),
        "<h2>Referrals</h2>",
        _table(list(summary.get("referrals", {}).items()), ("referral", "patients")),
        "<h2>Data requests</h2>",
        _table(list(summary.get("data_requests", {}).items()), ("analyte", "patients")),
        "<h2>Plan items</h2>",
        _table(list(summary.get("plan", {}).items()), ("plan item", "patients")),
        "<h2>Codes that match no value set</h2>",
        '<p class="muted">The most frequent codes in the records that the ruleset does not '
        "map, by the number of patients whose records hold them: candidates for a site "
        "concept map.</p>",
        _table(list(summary.get("unmapped_codes", {}).items()), ("system|code", "patients")),
        "<h2>Errors by kind</h2>",
        _table(list(summary.get("errors_by_kind", {}).items()), ("kind", "rows")),
        '<p class="muted">Each error row, with its reason and where it was found, is in '
        "<code>errors.ndjson</code>.</p>",
        "<h2>Ruleset</h2>",
        _table([("id", ruleset.get("id", "")), ("version", ruleset.get("version", "")),
                ("title", ruleset.get("title", "")), ("sha256", ruleset.get("sha256", ""))]),
        "<h2>Timings and memory</h2>",
        _table([*summary.get("timings", {}).items(),
                *((f"memory: {k}", v) for k, v in summary.get("memory", {}).items()
                  if v is not None)]),
        "<h2>Inputs</h2>",
        _table([(name,) for name in summary.get("inputs", [])]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
