"""A monitoring report as one self-contained HTML page: the alarms first,
then per service and rule a chart of the firing rate per period with its
control limits, the baseline rate, the periods that signalled and the
version changes; for screens, each code's prevalence per screen with its
interval. No script, no font, no request: inline SVG and CSS only."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["render_page"]

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 640, 170, 58, 12, 12, 34

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 1.5em;
color:#1b1b1b}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}
td,th{padding:.2em .6em;border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}
.alarm{color:#a40000;font-weight:600}.ok{color:#1c6b1c}.muted{color:#666}
svg{display:block;max-width:100%;height:auto}
.chart text{font-size:11px;fill:#444}
"""


def _fmt(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2%}"


def _chart(points: Sequence[dict[str, Any]], *, title: str, baseline: float | None,
           changes: Sequence[str] = ()) -> str:
    """An SVG line chart of ``points`` (``period``, ``rate``, optional
    ``lower``/``upper``/``signals`` or ``interval``)."""
    tops = [p.get("upper") or p.get("rate") or 0 for p in points]
    tops += [(p.get("interval") or [0, 0])[1] for p in points]
    top = max([*tops, baseline or 0, 1e-6]) * 1.1
    n = len(points)
    inner_w, inner_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def x(i: int) -> float:
        return _PAD_L + (inner_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return _PAD_T + inner_h * (1 - v / top)

    parts = [f'<svg class="chart" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{inner_w}" height="{inner_h}" '
             'fill="#fafafa" stroke="#ddd"/>']
    for frac in (0, 0.5, 1):
        v = top / 1.1 * frac
        parts.append(f'<text x="{_PAD_L - 4}" y="{y(v) + 4:.1f}" text-anchor="end">'
                     f'{v:.1%}</text>')
    # limits as steps, one per period
    for key in ("lower", "upper"):
        segs = [f"M{x(i) - inner_w / n / 2:.1f},{y(p[key]):.1f}h{inner_w / n:.1f}"
                for i, p in enumerate(points) if p.get(key) is not None]
        if segs:
            parts.append(f'<path d="{"".join(segs)}" stroke="#c77" stroke-dasharray="4 3" '
                         'fill="none"/>')
    for i, p in enumerate(points):
        if p.get("interval"):
            lo, hi = p["interval"]
            parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(lo):.1f}" '
                         f'y2="{y(hi):.1f}" stroke="#789"/>')
    if baseline is not None:
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(baseline):.1f}" '
                     f'y2="{y(baseline):.1f}" stroke="#5a5" stroke-dasharray="2 2"/>')
    for i, p in enumerate(points):
        if p["period"] in changes:
            parts.append(f'<line x1="{x(i) - inner_w / n / 2:.1f}" '
                         f'x2="{x(i) - inner_w / n / 2:.1f}" y1="{_PAD_T}" '
                         f'y2="{_H - _PAD_B}" stroke="#36c" stroke-width="2">'
                         f'<title>version change {escape(p["period"])}</title></line>')
    line = [f"{x(i):.1f},{y(p['rate']):.1f}" for i, p in enumerate(points)
            if p.get("rate") is not None]
    if line:
        parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#333"/>')
    for i, p in enumerate(points):
        if p.get("rate") is None:
            continue
        signals = p.get("signals") or []
        colour = "#c00" if signals else "#333"
        size = 7 if signals else 5
        tip = f"{p['period']}: {_fmt(p['rate'])}"
        if "calls" in p:
            tip += f" ({p.get('firings', 0)} of {p['calls']} calls)"
        if signals:
            tip += " — " + ", ".join(signals)
        cls = ' class="signal"' if signals else ""
        parts.append(f'<rect x="{x(i) - size / 2:.1f}" y="{y(p["rate"]) - size / 2:.1f}" '
                     f'width="{size}" height="{size}" fill="{colour}"{cls}>'
                     f'<title>{escape(tip)}</title></rect>')
    step = max(1, n // 7)
    for i, p in enumerate(points):
        if i % step == 0:
            parts.append(f'<text x="{x(i):.1f}" y="{_H - _PAD_B + 16}" '
                         f'text-anchor="middle">{escape(p["period"][5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _alarms(alarms: Sequence[dict[str, Any]]) -> str:
    if not alarms:
        return '<p class="ok">No alarm.</p>'
    rows = "".join(
        f'<tr><td class="alarm">{escape(a["kind"])}</td><td>{escape(str(a.get("service") or ""))}'
        f'</td><td>{escape(str(a.get("rule") or a.get("code") or ""))}</td>'
        f'<td>{escape(a["period"])}</td><td>{escape(a["message"])}'
        + ("".join(f'<br><span class="muted">likely cause: {escape(c)}</span>'
                   for c in a.get("likely_cause", ())))
        + "</td></tr>" for a in alarms)
    return ("<table><thead><tr><th>alarm</th><th>service</th><th>rule or code</th>"
            f"<th>period</th><th>what</th></tr></thead><tbody>{rows}</tbody></table>")


def _store_body(report: dict[str, Any]) -> list[str]:
    body = []
    for service in report["services"]:
        sid = service["service"]
        body.append(f"<h2>Service {escape(sid)}</h2>")
        changes = [a["period"] for a in report["alarms"]
                   if a["kind"] == "version" and a["service"] == sid]
        versions = sorted({(v["ruleset"], v["sha256"][:12]) for v in service["versions"]})
        body.append("<p>Ruleset versions seen: " + ", ".join(
            f"{escape(r)} <span class=muted>({escape(s)})</span>" for r, s in versions) + "</p>")
        for rule in service["rules"]:
            flagged = {a["kind"] for a in report["alarms"]
                       if a["service"] == sid and a.get("rule") == rule["rule"]}
            title = f"{rule['rule']}: firings per call"
            mark = (f' <span class="alarm">{escape(", ".join(sorted(flagged)))}</span>'
                    if flagged else "")
            body.append(f"<h3>{escape(rule['rule'])}{mark}</h3>")
            body.append(f'<p class="muted">baseline {_fmt(rule["baseline"]["rate"])} '
                        f'({rule["baseline"]["firings"]} of {rule["baseline"]["calls"]} calls)'
                        "</p>")
            body.append(_chart(rule["series"], title=title, baseline=rule["baseline"]["rate"],
                               changes=changes))
            override = rule.get("override")
            if override and override["window"]["answered"]:
                reasons = ", ".join(f"{escape(r['reason'])} ({r['count']})"
                                    for r in override["reasons"][:3]) or "none given"
                body.append(f'<p>Overridden: {_fmt(override["window"]["rate"])} of '
                            f'{override["window"]["answered"]} answered in the window '
                            f'(baseline {_fmt(override["baseline"]["rate"])}); reasons: '
                            f"{reasons}</p>")
        if service["unmapped_codes"]:
            rows = "".join(
                f"<tr><td>{escape(u['code'])}</td><td>{u['baseline']['calls']}</td>"
                f"<td>{u['window']['calls']}</td><td>{escape(u['first_seen'] or '')}</td></tr>"
                for u in service["unmapped_codes"])
            body.append("<h3>Unmapped codes</h3><table><thead><tr><th>code</th>"
                        "<th>calls (baseline)</th><th>calls (window)</th><th>first seen in "
                        f"window</th></tr></thead><tbody>{rows}</tbody></table>")
    return body


def _screens_body(report: dict[str, Any]) -> list[str]:
    body = ["<h2>Screens</h2><table><thead><tr><th>screen</th><th>as of</th>"
            "<th>ruleset</th><th>assessed</th></tr></thead><tbody>"]
    body += [f"<tr><td>{escape(s['label'])}</td><td>{escape(s['as_of'])}</td>"
             f"<td>{escape(s['ruleset'])}</td><td>{s['assessed']}</td></tr>"
             for s in report["screens"]]
    body.append("</tbody></table><h2>Prevalence per screen</h2>")
    for item in report["items"]:
        flagged = {a["kind"] for a in report["alarms"] if a.get("item") == item["item"]}
        mark = (f' <span class="alarm">{escape(", ".join(sorted(flagged)))}</span>'
                if flagged else "")
        body.append(f"<h3>{escape(item['item'])}{mark}</h3>")
        points = [{"period": s["label"], "rate": s["prevalence"], "interval": s["interval"],
                   "signals": ["changed"] if s.get("changed") else []} for s in item["series"]]
        body.append(_chart(points, title=f"{item['item']}: prevalence", baseline=None))
        groups = item.get("subgroups") or []
        if groups:
            rows = "".join(
                f"<tr><td>{escape(g['group'])}</td>" + "".join(
                    f"<td>{_fmt(s['prevalence'])} "
                    f"<span class=muted>[{_fmt(s['interval'][0])}, {_fmt(s['interval'][1])}]"
                    "</span></td>" for s in g["series"]) + "</tr>"
                for g in groups)
            heads = "".join(f"<th>{escape(s['label'])}</th>" for s in report["screens"])
            body.append(f"<table><thead><tr><th>group</th>{heads}</tr></thead>"
                        f"<tbody>{rows}</tbody></table>")
    if report.get("unmapped_codes"):
        rows = "".join(f"<tr><td>{escape(u['code'])}</td>" + "".join(
            f"<td>{n}</td>" for n in u["patients"]) + "</tr>" for u in report["unmapped_codes"])
        heads = "".join(f"<th>{escape(s['label'])}</th>" for s in report["screens"])
        body.append(f"<h2>Unmapped codes</h2><table><thead><tr><th>code</th>{heads}</tr>"
                    f"</thead><tbody>{rows}</tbody></table>")
    return body


def render_page(report: dict[str, Any]) -> str:
    """The report of :func:`~cdss.monitor.monitor_store` or
    :func:`~cdss.monitor.monitor_screens` as a self-contained HTML page."""
    screens = report.get("source") == "screens"
    title = "Rule monitoring: screens" if screens else "Rule monitoring: service"
    head = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head><body><h1>{title}</h1>")
    if not screens:
        intro = (f'<p>Window {escape(report["window"]["from"])} to '
                 f'{escape(report["window"]["until"])} (exclusive), per '
                 f'{escape(report["settings"]["period"])}; baseline from '
                 f'{escape(report["baseline"]["from"])}.</p>')
    else:
        intro = f'<p>{len(report["screens"])} screens compared, in order.</p>'
    body = [head, intro, "<h2>Alarms</h2>", _alarms(report["alarms"])]
    body += _screens_body(report) if screens else _store_body(report)
    body.append("</body></html>")
    return "\n".join(body)
