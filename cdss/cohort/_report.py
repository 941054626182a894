"""A cohort screen's summary as one self-contained HTML page.

The page has no external assets (no scripts, fonts, style sheets or images
from elsewhere), so it can be mailed or archived as one file and opened
offline: the style is inline, the flag prevalence chart is inline SVG and the
other charts are CSS bars. Every value from the data is HTML-escaped.

The worklist table is sortable (click a column heading) and filterable (a
text box, and a choice of highest severity) by a short inline script; without
scripts it is a plain table, and the controls are not shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

__all__ = ["bar_chart_svg", "count_bars", "render_report", "shorten", "worklist_table"]

_SEVERITY_COLOURS = {"critical": "#b71c1c", "high": "#e65100", "moderate": "#f9a825",
                     "low": "#2e7d32", "none": "#90a4ae"}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:60rem;color:#1c2733;line-height:1.45;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .8rem;text-align:left;
border-bottom:1px solid #eef1f4}th{font-weight:600;background:#f6f8fa}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#2e7d32;font-weight:600}.bad{color:#b71c1c;font-weight:600}
.muted{color:#57606a;font-size:.9rem}code{font-size:.85rem;background:#f6f8fa;
padding:.1rem .3rem;border-radius:3px;word-break:break-all}
.bars td{border-bottom:none;padding:.15rem .6rem}.bar{width:16rem;background:#eef1f4;
height:.9rem;border-radius:2px}.bar span{display:block;height:100%;border-radius:2px;
background:#3b6ea8}.grid td.c{text-align:right;font-variant-numeric:tabular-nums;
min-width:3.5rem;white-space:nowrap}.grid th{font-size:.85rem}
.sev{display:inline-block;padding:0 .4rem;border-radius:3px;color:#fff;font-size:.85rem}
.sev-moderate{color:#1c2733}
.scroll{max-height:40rem;overflow:auto;border:1px solid #d0d7de;border-radius:4px}
#worklist{font-size:.9rem;margin:0;width:100%}#worklist td{vertical-align:top}
#worklist thead th{position:sticky;top:0}
#worklist.js th[data-sortable]{cursor:pointer;text-decoration:underline dotted}
.controls{margin:.5rem 0}.controls input{width:20rem}
"""
_WORKLIST_SCRIPT = """
(function(){
var table=document.getElementById("worklist");if(!table){return;}
var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
var controls=document.getElementById("worklist-controls");controls.hidden=false;
table.classList.add("js");
var text=document.getElementById("worklist-filter");
var sev=document.getElementById("worklist-severity");
var shown=document.getElementById("worklist-shown");
function apply(){var q=text.value.toLowerCase(),s=sev.value,n=0;
rows.forEach(function(r){var ok=(!q||r.textContent.toLowerCase().indexOf(q)>=0)&&
(!s||r.getAttribute("data-severity")===s);r.hidden=!ok;if(ok){n++;}});
shown.textContent=n+" of "+rows.length+" rows shown";}
text.addEventListener("input",apply);sev.addEventListener("change",apply);
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
if(!th.hasAttribute("data-sortable")){return;}th.tabIndex=0;
function sort(){var up=th.getAttribute("aria-sort")!=="ascending";
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute("aria-sort");});
th.setAttribute("aria-sort",up?"ascending":"descending");
rows.sort(function(a,b){var x=a.cells[i].getAttribute("data-key")||a.cells[i].textContent,
y=b.cells[i].getAttribute("data-key")||b.cells[i].textContent;
var d=th.hasAttribute("data-numeric")?Number(x)-Number(y):x.localeCompare(y);
return up?d:-d;});rows.forEach(function(r){body.appendChild(r);});}
th.addEventListener("click",sort);
th.addEventListener("keydown",function(e){if(e.key==="Enter"){sort();}});});
apply();})();
"""
_SEVERITY_ORDER = ("critical", "high", "moderate", "low")


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


#: A chart label's longest length, and the width allowed per character (13 px
#: system-ui text averages under 7 px; the margin covers wide glyphs).
_LABEL_CHARS = 48
_CHAR_PX = 7.6


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis ending a cut one."""
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "\u2026"


def bar_chart_svg(bars: Sequence[tuple[str, float, str]], *, title: str,
                  width: int = 720) -> str:
    """A horizontal bar chart as inline SVG: ``bars`` are (label, share 0..1,
    annotation). Shares are drawn against 100%."""
    if not bars:
        return '<p class="muted">No flags were raised.</p>'
    bar_h, gap, top = 22, 8, 10
    # The label column fits the longest label (at most _LABEL_CHARS characters;
    # longer ones are cut with an ellipsis and kept whole in the bar's tooltip).
    shown = [shorten(label, _LABEL_CHARS) for label, _, _ in bars]
    label_w = max(120, round(max(map(len, shown)) * _CHAR_PX) + 16)
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
    for i, ((label, share, note), short) in enumerate(zip(bars, shown, strict=True)):
        y = top + i * (bar_h + gap)
        w = max(0.0, min(1.0, share)) * plot_w
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" '
                     f'text-anchor="end">{escape(short)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                     f'fill="#3b6ea8"><title>{escape(label)}: {escape(note)}</title></rect>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}" '
                     f'fill="#1c2733">{escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def count_bars(rows: Sequence[tuple[str, int]], *, total: int, unit: str = "patients",
               colours: Mapping[str, str] | None = None, empty: str = "None.") -> str:
    """Counts as a table of CSS bars drawn against ``total`` (label, bar, count,
    share); ``colours`` gives some labels their own colour."""
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    out = ['<table class="bars">']
    for label, n in rows:
        share = n / total if total else 0.0
        colour = (colours or {}).get(label)
        style = f"width:{min(1.0, share) * 100:.1f}%" + (f";background:{colour}"
                                                          if colour else "")
        out.append(f"<tr><td>{escape(label)}</td>"
                   f'<td><div class="bar" role="img" aria-label="{escape(label)}: '
                   f'{share * 100:.1f}%"><span style="{style}"></span></div></td>'
                   f'<td class="n">{n:,} {escape(unit)}</td>'
                   f'<td class="n">{share * 100:.1f}%</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _shade(share: float) -> str:
    """A cell background from white (0) to the bars' blue (1)."""
    share = max(0.0, min(1.0, share))
    r, g, b = (int(255 + (c - 255) * share) for c in (59, 110, 168))
    return f"#{r:02x}{g:02x}{b:02x}"


def group_grid(by_flag: Mapping[str, Mapping[str, int]], groups: Mapping[str, int],
               names: Mapping[str, str], *, what: str) -> str:
    """Each flag's share of the patients of each group (age band, sex): a
    table whose cells are shaded by the share and hold ``share (count)``."""
    if not by_flag or not groups:
        return '<p class="muted">No flags were raised.</p>'
    header = "".join(f"<th>{escape(g)}<br><span class=\"muted\">{n:,}</span></th>"
                     for g, n in groups.items())
    out = ['<table class="grid">', f"<tr><th>flag</th>{header}</tr>"]
    for code in sorted(by_flag, key=lambda c: (-sum(by_flag[c].values()), c)):
        cells = []
        for group, size in groups.items():
            n = by_flag[code].get(group, 0)
            share = n / size if size else 0.0
            colour = "#fff" if share > 0.55 else "#1c2733"
            cells.append(f'<td class="c" style="background:{_shade(share)};color:{colour}" '
                         f'title="{escape(names.get(code, code))}, {escape(what)} '
                         f'{escape(group)}: {n:,} of {size:,}">{share * 100:.0f}% '
                         f'<span>({n:,})</span></td>')
        out.append(f"<tr><td>{escape(names.get(code, code))} <span class=\"muted\">"
                   f"{escape(code)}</span></td>{''.join(cells)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _rank(severity: str | None) -> int:
    return _SEVERITY_ORDER.index(severity) if severity in _SEVERITY_ORDER else 4


def worklist_table(rows: Sequence[Mapping[str, Any]], *, total: int, identifiers: bool) -> str:
    """The worklist's first rows as a table with its filter controls (hidden
    until the script shows them) and a note of the rows left out."""
    if not rows:
        return '<p class="muted">No patient has a flag, referral or data request.</p>'
    severities = sorted({str(r.get("highest_severity") or "none") for r in rows}, key=_rank)
    options = "".join(f'<option value="{escape(s)}">{escape(s)}</option>' for s in severities)
    out = ['<div class="controls" id="worklist-controls" hidden>',
           '<label>Filter <input type="search" id="worklist-filter" '
           'placeholder="flag, referral, evidence..."></label> ',
           '<label>Highest severity <select id="worklist-severity">'
           f'<option value="">any</option>{options}</select></label> ',
           '<span class="muted" id="worklist-shown"></span></div>',
           '<div class="scroll"><table id="worklist"><thead><tr>',
           '<th data-sortable data-numeric>#</th>']
    if identifiers:
        out.append("<th data-sortable>patient</th>")
    out.append("<th data-sortable data-numeric>highest severity</th><th data-sortable>flags"
               "</th><th data-sortable>referrals</th><th>evidence</th>"
               "<th data-sortable>data requests</th></tr></thead><tbody>")
    for row in rows:
        severity = str(row.get("highest_severity") or "none")
        colour = _SEVERITY_COLOURS.get(severity, "#90a4ae")
        cells = [f'<td class="n">{int(row["row"])}</td>']
        if identifiers:
            cells.append(f"<td>{escape(str(row.get('patient')))}</td>")
        cells.append(f'<td data-key="{_rank(severity)}"><span class="sev sev-{escape(severity)}"'
                     f' style="background:{colour}">{escape(severity)}</span></td>')
        cells.append("<td>" + "<br>".join(
            f"{escape(f['display'])} <span class=\"muted\">({escape(f['severity'])})</span>"
            for f in row.get("flags", ())) + "</td>")
        cells.append("<td>" + "<br>".join(
            f"{escape(r['display'])} <span class=\"muted\">({escape(r['urgency'])})</span>"
            for r in row.get("referrals", ())) + "</td>")
        cells.append("<td>" + "<br>".join(escape(str(e)) for e in row.get("evidence", ()))
                     + "</td>")
        cells.append("<td>" + "<br>".join(escape(d["display"])
                                          for d in row.get("data_requests", ())) + "</td>")
        out.append(f'<tr data-severity="{escape(severity)}">{"".join(cells)}</tr>')
    out.append("</tbody></table></div>")
    more = total - len(rows)
    if more > 0:
        out.append(f'<p class="muted">The first {len(rows):,} of {total:,} patients; '
                   f"{more:,} more are in <code>worklist.csv</code> and "
                   "<code>worklist.parquet</code>.</p>")
    else:
        out.append(f'<p class="muted">All {total:,} patients; also in '
                   "<code>worklist.csv</code> and <code>worklist.parquet</code>.</p>")
    return "\n".join(out)


def _named(tally: Mapping[str, int], names: Mapping[str, str]) -> list[tuple[str, int]]:
    """Counts with the display name of each code (and the code after it)."""
    return [(f"{names[code]} ({code})" if code in names else code, n)
            for code, n in tally.items()]


def render_report(summary: Mapping[str, Any],
                  worklist: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The HTML page of a screen summary (the content of ``summary.json``) and
    the first rows of its worklist (as :class:`~cdss.cohort._worklist.WorklistHead`
    keeps them)."""
    ruleset = summary.get("ruleset", {})
    counts = summary.get("counts", {})
    spec = f"{ruleset.get('id')}@{ruleset.get('version')}"
    displays = summary.get("displays", {})
    flag_names = displays.get("flags", {})
    flags = summary.get("flags", {})
    bars = [(flag_names.get(code, code), float(v.get("prevalence", 0)),
             f"{v.get('prevalence', 0) * 100:.1f}% ({v.get('patients', 0):,})")
            for code, v in flags.items()]
    balanced = bool(counts.get("balanced"))
    assessed = int(counts.get("assessments", 0))
    severity = summary.get("highest_severity", {})
    severity_rows = [(name, severity.get(name, 0)) for name in _SEVERITY_COLOURS
                     if name in severity]
    resources = summary.get("resources", {})
    people = summary.get("demographics", {})
    listed = summary.get("worklist", {})
    identifiers = bool(listed.get("identifiers", True))
    errors_by_kind = summary.get("errors_by_kind", {})
    unmapped = summary.get("unmapped_codes", {})
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
            ("Patients on the worklist", listed.get("patients", 0)),
        ]),
        (f'<p class="ok">Every patient seen has one row: {counts.get("patients", 0):,} = '
         f'{counts.get("assessments", 0):,} assessments + {counts.get("patient_errors", 0):,}'
         " error rows.</p>") if balanced else
        '<p class="bad">The counts do not balance.</p>',
        '<h2 id="worklist-heading">Worklist</h2>',
        '<p class="muted">The patients to act on (any flag, referral or data request), by '
        "highest severity, then flag, then patient; the evidence is the value and unit as "
        "charted, and its date."
        + ("" if identifiers else " Patient references are left out: rows are numbered.")
        + "</p>",
        worklist_table(list(worklist or ()), total=int(listed.get("patients", 0)),
                       identifiers=identifiers),
        "<h2>Highest severity per patient</h2>",
        count_bars(severity_rows, total=assessed, colours=_SEVERITY_COLOURS),
        "<h2>Flag prevalence</h2>",
        '<p class="muted">Share of assessed patients with each flag.</p>',
        bar_chart_svg(bars, title="Flag prevalence"),
        "<h2>Flags by age band</h2>",
        '<p class="muted">Share of the assessed patients of each age band (at the as-of '
        "date; patients in the band under its name) with each flag.</p>",
        group_grid(people.get("flags_by_age_band", {}), people.get("age_bands", {}),
                   flag_names, what="age band"),
        "<h2>Flags by sex</h2>",
        '<p class="muted">Share of the assessed patients of each sex (the Patient\'s '
        "administrative gender) with each flag.</p>",
        group_grid(people.get("flags_by_sex", {}), people.get("sexes", {}), flag_names,
                   what="sex"),
        "<h2>Referrals</h2>",
        count_bars(_named(summary.get("referrals", {}), displays.get("referrals", {})),
                   total=assessed),
        "<h2>Data requests</h2>",
        '<p class="muted">Lab results the ruleset needs and the records lack (or hold only '
        "stale).</p>",
        count_bars(_named(summary.get("data_requests", {}), displays.get("data_requests", {})),
                   total=assessed),
        "<h2>Plan items</h2>",
        count_bars(_named(summary.get("plan", {}), displays.get("plan", {})), total=assessed),
        "<h2>Codes that match no value set</h2>",
        '<p class="muted">The most frequent codes in the records that the ruleset does not '
        "map, by the number of patients whose records hold them: candidates for a site "
        "concept map.</p>",
        count_bars(_named(unmapped, displays.get("unmapped_codes", {})), total=assessed),
        "<h2>Errors by kind</h2>",
        count_bars(list(errors_by_kind.items()), total=sum(errors_by_kind.values()),
                   unit="rows"),
        '<p class="muted">Each error row, with its reason and where it was found, is in '
        "<code>errors.ndjson</code>.</p>",
        "<h2>Ruleset</h2>",
        _table([("id", ruleset.get("id", "")), ("version", ruleset.get("version", "")),
                ("title", ruleset.get("title", "")), ("sha256", ruleset.get("sha256", ""))]),
        "<h2>Inputs</h2>",
        _table([(name,) for name in summary.get("inputs", [])]),
        '<p class="muted">The run\'s timings and peak memory are in <code>run.json</code>: '
        "this page and <code>summary.json</code> hold only results, the same bytes for the "
        "same inputs, ruleset and as-of date, resumed or not.</p>",
        f"<script>{_WORKLIST_SCRIPT}</script>" if worklist else "",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
